"""Exact moments by enumeration: every outcome of an estimator's discrete randomness replayed
(:class:`~estimators.base.ReplayNoise`) when few enough, after counting the draws one estimate makes
and checking that examples are independent (a coupled estimator has no exact moments per example).

Draws are counted with their arity: a Bernoulli bit has 2 outcomes, a categorical draw over K
categories K. An outcome is a mixed-radix number whose digit j (least significant first) is draw j,
so the product of the arities is the number of outcomes (at most 2^MAX_ENUMERATION_BITS); with
Bernoulli bits only, outcome k replays the bits of k, as it always did."""
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
    """Draws like :class:`Noise` and counts the discrete draws per estimate (one estimate at a
    time) with their arities, in draw order; notes whether any continuous randomness was asked for."""

    def __init__(self, generator: torch.Generator):
        super().__init__(generator)
        self.arities: list[int] = []
        self.continuous = False

    @property
    def bits(self) -> int:
        """Discrete draws counted (Bernoulli bits, when every arity is 2)."""
        return len(self.arities)

    def bernoulli(self, probs, shape=None):
        shape = probs.shape if shape is None else torch.Size(shape)
        self.arities.extend([2] * math.prod(shape))
        return (super().uniform(shape, probs) < probs).to(probs.dtype)

    def categorical(self, probs, shape=None):
        shape = torch.Size(probs.shape if shape is None else shape)
        self.arities.extend([shape[-1]] * math.prod(shape[:-1]))
        continuous = self.continuous
        draws = super().categorical(probs, shape)
        self.continuous = continuous  # its one uniform per draw is the discrete draw itself
        return draws

    def uniform(self, shape, like):
        self.continuous = True
        return super().uniform(shape, like)

    def normal(self, shape, like):
        self.continuous = True
        return super().normal(shape, like)

    def beta(self, alpha, beta, shape, like):
        self.continuous = True
        return super().beta(alpha, beta, shape, like)



def count_arities(estimator: Estimator, problem) -> list[int] | None:
    """The arity of every discrete draw one estimate makes, in draw order, found by running one;
    None if it uses continuous noise."""
    counter = CountingNoise(torch.Generator(next(iter(problem.buffers()), torch.empty(0)).device).manual_seed(0))
    with estimator.drawing_from(counter), estimator.frozen():
        problem.sample_gradients(estimator, 1)
    return None if counter.continuous else counter.arities


def count_bits(estimator: Estimator, problem) -> int | None:
    """Discrete draws one estimate consumes (Bernoulli bits for binary units); None if it uses
    continuous noise."""
    arities = count_arities(estimator, problem)
    return None if arities is None else len(arities)


def outcome_count(arities: list[int]) -> str:
    """The number of outcomes as powers per arity: '2^10', '3^4', '2^3 x 3^4' ('2^0' for none)."""
    counts = {arity: arities.count(arity) for arity in sorted(set(arities))} or {2: 0}
    return " x ".join(f"{arity}^{n}" for arity, n in counts.items())


def mixed_radix(codes: torch.Tensor, arities: torch.Tensor) -> torch.Tensor:
    """Digits of outcome numbers ``codes`` (S,) in the mixed radix ``arities`` (n,), least
    significant first: shape (S, n), digit j in [0, arities[j])."""
    places = torch.cumprod(torch.cat([arities.new_ones(1), arities[:-1]]), 0)
    return (codes.unsqueeze(1) // places) % arities


def exact_estimator_moments(estimator: Estimator, problem, reference,
                            scopes: dict[str, slice] | None = None) -> tuple[list[Metric], str]:
    """Exact bias norm and variance per scope (see :func:`enumerate_exact`), and why not if absent."""
    exact, reason = enumerate_exact(estimator, problem, reference)
    return ([] if exact is None else exact.metrics(reference.gradient, scopes)), reason


COUPLED = "examples coupled (estimate of one example changes with the others' draws)"


def enumerate_exact(estimator: Estimator, problem, reference) -> tuple[ExactMoments | None, str]:
    """Exact mean and variance by replaying every outcome of a discrete randomness, when small (or,
    for a problem with an ``enumerate_moments(estimator) -> (mean, variance, note)`` method, by it).

    Runs on float64 copies of the problem and the (frozen) estimator, so exact zeros are zeros.
    Outcomes are replayed in blocks, one outcome per example; that is only the estimator that was
    sampled when examples are independent, so coupling is checked first. With more than one block,
    a first pass gives the mean and a second the variance about it (the frozen estimator is
    deterministic given its bits)."""
    if not reference.exact:
        return None, "not computed: the reference gradient is itself estimated"
    if not estimator.enumerable:
        return None, "not computed: continuous randomness (no finite set of outcomes)"
    own = getattr(problem, "enumerate_moments", None)
    if callable(own):  # a problem that enumerates its outcomes itself (sequence problems: by reward class)
        try:
            mean, variance, how = own(estimator)
        except NotEnumerable as exc:
            return None, f"not computed: {exc}"
        return ExactMoments(mean, variance), how
    problem = copy.deepcopy(problem).to(torch.float64)
    estimator = copy.deepcopy(estimator).to(torch.float64)
    try:
        arities = count_arities(estimator, problem)
    except NotEnumerable as exc:
        return None, f"not computed: {exc}"
    if arities is None:
        return None, "not computed: continuous randomness (no finite set of outcomes)"
    outcomes = math.prod(arities)
    if outcomes > 2**MAX_ENUMERATION_BITS:
        return None, f"not computed: {outcome_count(arities)} outcomes exceed 2^{MAX_ENUMERATION_BITS}"
    draws = len(arities)
    device = next(iter(problem.buffers()), torch.empty(0)).device
    radix = torch.tensor(arities, dtype=torch.long, device=device)

    def replay(configs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = ReplayNoise(configs)
        with estimator.drawing_from(noise), estimator.frozen():
            estimates = problem.sample_gradients(estimator, configs.shape[0]).detach().to(torch.float64)
        if noise.offset != draws:
            raise NotEnumerable(f"the estimator made {noise.offset} draws, not the {draws} counted")
        return estimates, torch.exp(noise.log_prob)

    try:
        if coupled(replay, arities, device):
            return None, f"not computed: {COUPLED}"
    except NotEnumerable as exc:
        return None, f"not computed: {exc}"
    block = max(1, min(outcomes, ENUMERATION_ELEMENTS // max(1, problem.dim, draws)))

    def blocks():
        for start in range(0, outcomes, block):
            codes = torch.arange(start, min(start + block, outcomes), device=device)
            yield replay(mixed_radix(codes, radix).to(torch.float64))

    try:
        if block >= outcomes:  # one block: replay once, read twice
            cached = list(blocks())
            exact = ExactMoments.enumerate(lambda: cached)
        else:
            exact = ExactMoments.enumerate(blocks)
    except NotEnumerable as exc:
        return None, f"not computed: {exc}"
    return exact, f"computed in float64 over {outcome_count(arities)} outcomes"


def coupled(replay: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], arities: list[int],
            device: torch.device) -> bool:
    """Does one example's estimate depend on the other examples' draws (or on how many there
    are)? Replays one fixed row alone, then in a batch of COUPLING_ROWS with other rows, then with
    every draw of those other rows changed (a bit flipped, a category moved to the next one); an
    independent estimator gives that row the same estimate all three times (up to float64
    rounding). ``arities``: one per draw, in draw order."""
    generator = torch.Generator().manual_seed(0)
    radix = torch.tensor(arities, dtype=torch.long)
    draws = torch.randint(0, 2**62, (COUPLING_ROWS, len(arities)), generator=generator) % radix
    first, others = draws[:1], draws[1:]
    changed = (others + 1) % radix
    alone = replay(first.to(device, torch.float64))[0][0]
    with_others = replay(torch.cat([first, others]).to(device, torch.float64))[0][0]
    with_flipped = replay(torch.cat([first, changed]).to(device, torch.float64))[0][0]
    tolerance = 1e-9 * float(alone.abs().max()) if alone.numel() and alone.isfinite().all() else 0.0

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(torch.allclose(a, b, rtol=1e-9, atol=tolerance, equal_nan=True))

    return not (same(alone, with_others) and same(alone, with_flipped))
