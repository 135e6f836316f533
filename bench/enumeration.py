"""Exact moments by enumeration: every outcome of an estimator's Bernoulli randomness replayed
(:class:`~estimators.base.ReplayNoise`) when few enough, after counting the bits one estimate draws
and checking that examples are independent (a coupled estimator has no exact moments per example)."""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch

from bench.metrics import ExactMoments, Metric
from estimators.base import Estimator, Noise, NotEnumerable, ReplayNoise

MAX_ENUMERATION_BITS = 20
ENUMERATION_ELEMENTS = 2**24
COUPLING_ROWS = 4  # rows of the replayed batches that check examples are independent


class CountingNoise(Noise):
    """Draws like :class:`Noise` and counts the Bernoulli bits per estimate (one estimate at a
    time); notes whether any continuous randomness was asked for."""

    def __init__(self, generator: torch.Generator):
        super().__init__(generator)
        self.bits = 0
        self.continuous = False

    def bernoulli(self, probs, shape=None):
        shape = probs.shape if shape is None else torch.Size(shape)
        self.bits += math.prod(shape)
        return (super().uniform(shape, probs) < probs).to(probs.dtype)

    def uniform(self, shape, like):
        self.continuous = True
        return super().uniform(shape, like)

    def normal(self, shape, like):
        self.continuous = True
        return super().normal(shape, like)

    def beta(self, alpha, beta, shape, like):
        self.continuous = True
        return super().beta(alpha, beta, shape, like)



def count_bits(estimator: Estimator, problem) -> int | None:
    """Bernoulli bits one estimate consumes, found by running one; None if it uses continuous noise."""
    counter = CountingNoise(torch.Generator(next(iter(problem.buffers()), torch.empty(0)).device).manual_seed(0))
    with estimator.drawing_from(counter), estimator.frozen():
        problem.sample_gradients(estimator, 1)
    return None if counter.continuous else counter.bits


def exact_estimator_moments(estimator: Estimator, problem, reference,
                            scopes: dict[str, slice] | None = None) -> tuple[list[Metric], str]:
    """Exact bias norm and variance per scope (see :func:`enumerate_exact`), and why not if absent."""
    exact, reason = enumerate_exact(estimator, problem, reference)
    return ([] if exact is None else exact.metrics(reference.gradient, scopes)), reason


COUPLED = "examples coupled (estimate of one example changes with the others' draws)"


def enumerate_exact(estimator: Estimator, problem, reference) -> tuple[ExactMoments | None, str]:
    """Exact mean and variance by replaying every outcome of a discrete randomness, when small.

    Runs on float64 copies of the problem and the (frozen) estimator, so exact zeros are zeros.
    Outcomes are replayed in blocks, one outcome per example; that is only the estimator that was
    sampled when examples are independent, so coupling is checked first. With more than one block,
    a first pass gives the mean and a second the variance about it (the frozen estimator is
    deterministic given its bits)."""
    if not reference.exact:
        return None, "not computed: the reference gradient is itself estimated"
    if not estimator.enumerable:
        return None, "not computed: continuous randomness (no finite set of outcomes)"
    problem = copy.deepcopy(problem).to(torch.float64)
    estimator = copy.deepcopy(estimator).to(torch.float64)
    try:
        bits = count_bits(estimator, problem)
    except NotEnumerable as exc:
        return None, f"not computed: {exc}"
    if bits is None:
        return None, "not computed: continuous randomness (no finite set of outcomes)"
    if bits > MAX_ENUMERATION_BITS:
        return None, f"not computed: 2^{bits} outcomes exceed 2^{MAX_ENUMERATION_BITS}"
    device = next(iter(problem.buffers()), torch.empty(0)).device

    def replay(configs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = ReplayNoise(configs)
        with estimator.drawing_from(noise), estimator.frozen():
            estimates = problem.sample_gradients(estimator, configs.shape[0]).detach().to(torch.float64)
        if noise.offset != bits:
            raise NotEnumerable(f"the estimator drew {noise.offset} bits, not the {bits} counted")
        return estimates, torch.exp(noise.log_prob)

    try:
        if coupled(replay, bits, device):
            return None, f"not computed: {COUPLED}"
    except NotEnumerable as exc:
        return None, f"not computed: {exc}"
    block = max(1, min(2**bits, ENUMERATION_ELEMENTS // max(1, problem.dim, bits)))

    def blocks():
        for start in range(0, 2**bits, block):
            codes = torch.arange(start, min(start + block, 2**bits), device=device).unsqueeze(1)
            yield replay(((codes >> torch.arange(bits, device=device)) & 1).to(torch.float64))

    try:
        if block >= 2**bits:  # one block: replay once, read twice
            cached = list(blocks())
            exact = ExactMoments.enumerate(lambda: cached)
        else:
            exact = ExactMoments.enumerate(blocks)
    except NotEnumerable as exc:
        return None, f"not computed: {exc}"
    return exact, f"computed in float64 over 2^{bits} outcomes"


def coupled(replay: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], bits: int,
            device: torch.device) -> bool:
    """Does one example's estimate depend on the other examples' draws (or on how many there
    are)? Replays one fixed row alone, then in a batch of COUPLING_ROWS with other rows, then with
    every bit of those other rows flipped; an independent estimator gives that row the same estimate
    all three times (up to float64 rounding)."""
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(0, 2, (COUPLING_ROWS, bits), generator=generator).to(device, torch.float64)
    first, others = draws[:1], draws[1:]
    alone = replay(first)[0][0]
    with_others = replay(torch.cat([first, others]))[0][0]
    with_flipped = replay(torch.cat([first, 1 - others]))[0][0]
    tolerance = 1e-9 * float(alone.abs().max()) if alone.numel() and alone.isfinite().all() else 0.0

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(torch.allclose(a, b, rtol=1e-9, atol=tolerance, equal_nan=True))

    return not (same(alone, with_others) and same(alone, with_flipped))
