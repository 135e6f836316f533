"""Toy categorical problems with closed-form exact gradients: E_{h_i ~ Cat(softmax(phi_i))}[L(h)].

Category k of a K-way unit stands for the value v_k = k / (K - 1) in [0, 1] (K = 2: the bit), and
the losses are separable in the units' values z_i = <h_i, v>: L = w sum_i |z_i - t|^p. For one-hot h
that is linear in h with costs c_k = |v_k - t|^p, so E[L] = w sum_i <p_i, c> and
dE[L]/dphi_ik = w p_ik (c_k - <p_i, c>). A relaxed h (a point of the simplex) gets the same formula
of its value, as ReinMax's code does for the polynomial programming problem.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from estimators.domains import MAX_DRAWS, Count, Interval
from problems import register_problem
from problems.base import CategoricalProblem, OwnParameterOptimizer, Record, TrainingProblem

INIT_STREAM = 0  # seeded_generator(seed, INIT_STREAM): the training problem's initial logits; never change


# The domains the categorical toys share (K: categories, the logits hold units x K numbers).
SHARED = {"units": Count(1), "K": Count(2, MAX_DRAWS), "t": Interval(0, 1), "logit": Interval(),
          "p": Interval(1, None, description="a number >= 1 (|z - t|^p is then differentiable)")}


def category_values(K: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """v_k = k / (K - 1): the value category k stands for."""
    return torch.arange(K, dtype=dtype, device=device) / (K - 1)


class _ValueLoss:
    """L(h) = weight * sum_i |<h_i, v> - t|^p on logits phi_ik = logit * v_k; set ``K``, ``t``,
    ``p`` and ``weight`` (1, or 1/units for a mean)."""

    K: int
    t: float
    p: float
    weight: float

    def value_loss(self, h: torch.Tensor) -> torch.Tensor:
        z = h @ category_values(self.K, h.dtype, h.device)
        return self.weight * ((z - self.t).abs() ** self.p).sum(-1)

    def costs(self, dtype=torch.float64) -> torch.Tensor:
        """c_k = |v_k - t|^p: the loss of one unit in category k (before the weight)."""
        return (category_values(self.K, dtype) - self.t).abs() ** self.p

    def closed_form(self, logits: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(dE[L]/dphi flattened, E[L]) in float64 at ``logits`` (units, K)."""
        probs = torch.softmax(logits.detach().to("cpu", torch.float64), -1)
        c = self.costs()
        mean_cost = probs @ c
        gradient = self.weight * probs * (c - mean_cost.unsqueeze(-1))
        return gradient.reshape(-1), float(self.weight * mean_cost.sum())


class _ClosedFormValueProblem(_ValueLoss, CategoricalProblem):
    """A gradient problem of :class:`_ValueLoss` at its ``logits`` buffer, exact in closed form."""

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        return self.value_loss(h)

    def exact_gradient(self) -> torch.Tensor:
        return self.closed_form(self.logits)[0]

    def expected_loss(self) -> float:
        return self.closed_form(self.logits)[1]


@register_problem("categorical-target",
                  "L(h) = sum_i (<h_i, v> - t)^2, category k worth v_k = k/(K-1); closed-form gradient")
class CategoricalTarget(_ClosedFormValueProblem):
    """``units`` K-way units at logits phi_ik = logit * v_k: with K = 2 exactly ``bernoulli-target(d=units,
    t, logit)`` (category 1 is the bit, logit difference ``logit``), the binary gradient in the
    category-1 coordinates and its negative in the category-0 ones."""

    domains = SHARED

    def __init__(self, units: int = 4, K: int = 3, t: float = 0.45, logit: float = 0.0):
        super().__init__()
        self.K, self.t, self.logit, self.p, self.weight = K, t, logit, 2.0, 1.0
        self.register_buffer("logits", float(logit) * category_values(K).expand(units, K).clone())


@register_problem("polynomial-programming",
                  "ReinMax's polynomial programming: mean_i |z_i - t|^p over 128 binary (K = 2) units")
class PolynomialProgramming(_ClosedFormValueProblem):
    """Liu et al. 2023 (ReinMax), sec. 6.1: L = mean_i |z_i - t|^p, z_i the value of unit i (K = 2:
    z in {0, 1}), at logits phi_ik = logit * v_k (0: the uniform initialisation). At logits 0,
    E[L] = (t^p + (1 - t)^p) / 2 (0.2525, 0.35488, 0.12875 for p = 2, 1.5, 3 at t = 0.45); the
    infimum over logits is min_k |v_k - t|^p (0.2025, 0.30187, 0.091125): :meth:`infimum`."""

    domains = SHARED

    def __init__(self, p: float = 2.0, units: int = 128, t: float = 0.45, K: int = 2, logit: float = 0.0):
        super().__init__()
        self.p, self.t, self.K, self.logit, self.weight = p, t, K, logit, 1.0 / units
        self.register_buffer("logits", float(logit) * category_values(K).expand(units, K).clone())

    def infimum(self) -> float:
        """inf over logits of E[L]: every unit in its cheapest category (approached, never reached)."""
        return float(self.costs().min())


@register_problem("polynomial-programming-training",
                  "Train the logits of ReinMax's polynomial programming with Adam: exact E[L] per step")
class PolynomialProgrammingTraining(_ValueLoss, TrainingProblem):
    """Minimise E[L] of ``polynomial-programming(p, units, t, K)`` over its logits with Adam at ``lr``
    on the mean of ``batch`` estimates per step, for ``steps`` steps, from logits drawn
    U(-init_scale, init_scale) from the run's seed (ReinMax's set-up: 128 units, batch 64, lr 1e-3,
    init_scale 0.01). Records ``train_loss`` -- the exact E[L] at the current logits (closed form,
    no stderr) -- at step 0, every ``log_every`` steps and at the last step. Estimators with own
    parameters are trained alongside (see ``OwnParameterOptimizer``)."""

    variables = "categorical"
    domains = {**SHARED, "steps": Count(1), "batch": Count(1), "log_every": Count(1),
               "lr": Interval(0, None, closed="neither"), "init_scale": Interval(0, None)}

    def __init__(self, p: float = 2.0, units: int = 128, t: float = 0.45, K: int = 2, steps: int = 1000,
                 lr: float = 1e-3, batch: int = 64, log_every: int = 100, init_scale: float = 0.01):
        super().__init__()
        self.p, self._units, self.t, self.K, self.weight = p, units, t, K, 1.0 / units
        self.steps, self.lr, self.batch, self.log_every, self.init_scale = steps, lr, batch, log_every, init_scale

    @property
    def categories(self) -> int:
        return self.K

    @property
    def units(self) -> int:
        return self._units

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        return self.value_loss(h)

    def progress_total(self) -> int:
        return self.steps

    def initial_logits(self, seed: int) -> torch.Tensor:
        """The logits training starts from: U(-init_scale, init_scale), seeded by the run's seed."""
        from problems.training import seeded_generator

        u = torch.rand(self.units, self.K, generator=seeded_generator(seed, INIT_STREAM), dtype=torch.float64)
        return (2 * u - 1) * self.init_scale

    def fit(self, estimator, seed: int,
            progress: Callable[[int], None] | None = None) -> Iterator[Record]:
        logits = self.initial_logits(seed).to(self.device, self.dtype).requires_grad_(True)
        optimiser = torch.optim.Adam([logits], lr=self.lr)
        own_parameters = OwnParameterOptimizer(estimator)
        yield Record("train_loss", self.closed_form(logits)[1], step=0)
        for step in range(1, self.steps + 1):
            own_parameters.zero_grad()
            batch = logits.expand(self.batch, *logits.shape)
            surrogate = estimator(batch, self.loss, categorical=True)
            (logits.grad,) = torch.autograd.grad(surrogate.mean(), logits)
            optimiser.step()
            own_parameters.step()
            if progress is not None:
                progress(1)
            if step % self.log_every == 0 or step == self.steps:
                yield Record("train_loss", self.closed_form(logits)[1], step=step)
