"""Score-function (REINFORCE) estimators for Bernoulli(sigm(a)) units (paper sec. 3).

g_i = (h_i - sigm(a_i)) (L - Lbar_i) is unbiased for dE[L]/da_i for any Lbar_i fixed before h is
drawn (Theorem 1, Corollary 1). Only the value of L is used: no back-propagation through the loss.
Baselines are computed from earlier calls only, then updated, so they never bias the estimate.
"""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import Estimator, LossFn, attach_gradient, reduce_to_batch


def _check_decay(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")


def _batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the last (the units)."""
    return x.reshape(-1, x.shape[-1]).mean(0)


class ScoreFunctionEstimator(Estimator):
    """REINFORCE with a baseline chosen by the subclass: (h - sigm(a)) (L - Lbar)."""

    unbiased = True
    needs_loss_backprop = False

    def baseline(self, units: int, like: torch.Tensor) -> torch.Tensor | float:
        return 0.0

    def observe(self, h: torch.Tensor, probs: torch.Tensor, loss: torch.Tensor) -> None:
        """Update running statistics after the estimate is formed."""

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        centred = loss.detach().unsqueeze(-1) - self.baseline(logits.shape[-1], probs)
        grad = (h - probs) * centred
        if self.update_state:
            with torch.no_grad():
                self.observe(h, probs, loss.detach())
        return attach_gradient(loss, logits, grad)


@register_estimator("reinforce", "REINFORCE / score function with no baseline (paper Theorem 1, eq. 6)")
class Reinforce(ScoreFunctionEstimator):
    """(h - sigm(a)) L: the paper's unbiased estimator for stochastic binary neurons, Lbar = 0."""


@register_estimator("reinforce-ma", "REINFORCE with an exponential moving-average baseline of the loss")
class ReinforceMovingAverage(ScoreFunctionEstimator):
    """(h - sigm(a)) (L - Lbar) with Lbar an EMA of past mean losses (Corollary 1, constant Lbar).

    The average advances once per call, by ``decay``: per training step, or per batch of 64
    estimates in the harness's warm-up (a fixed size, so the frozen Lbar is the same whatever
    ``--samples``)."""

    stateful = True

    def __init__(self, decay: float = 0.9):
        super().__init__()
        _check_decay(decay)
        self.decay = decay
        self.register_buffer("mean_loss", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def baseline(self, units, like):
        return self.mean_loss.to(like.dtype)

    def observe(self, h, probs, loss):
        batch_mean = loss.mean().to(self.mean_loss.dtype)
        blended = self.decay * self.mean_loss + (1 - self.decay) * batch_mean
        self.mean_loss.copy_(torch.where(self.seen, blended, batch_mean))
        self.seen.fill_(True)


@register_estimator("reinforce-optimal",
                    "REINFORCE with the paper's per-unit minimum-variance baseline (eq. 10)")
class ReinforceOptimalBaseline(ScoreFunctionEstimator):
    """Lbar_i = E[(h_i - sigm(a_i))^2 L] / E[(h_i - sigm(a_i))^2], two EMAs per unit (eq. 10).

    Both averages advance once per call, by ``decay``, with that call's batch means: per training
    step, or per batch of 64 estimates in the harness's warm-up (a fixed size, so the frozen
    baseline is the same whatever ``--samples``)."""

    stateful = True

    def __init__(self, decay: float = 0.9):
        super().__init__()
        _check_decay(decay)
        self.decay = decay
        self.register_buffer("numerator", torch.zeros(0))
        self.register_buffer("denominator", torch.zeros(0))

    def baseline(self, units, like):
        if self.numerator.numel() != units:
            return 0.0
        ratio = self.numerator / self.denominator.clamp_min(torch.finfo(self.denominator.dtype).tiny)
        return torch.where(self.denominator > 0, ratio, torch.zeros_like(ratio)).to(like.dtype)

    def observe(self, h, probs, loss):
        weight = (h - probs) ** 2
        num = _batch_mean(weight * loss.unsqueeze(-1)).to(torch.float64)
        den = _batch_mean(weight).to(torch.float64)
        if self.numerator.numel() != num.numel():
            self.numerator = num.clone()
            self.denominator = den.clone()
            return
        self.numerator.mul_(self.decay).add_((1 - self.decay) * num)
        self.denominator.mul_(self.decay).add_((1 - self.decay) * den)


@register_estimator("reinforce-loo", "REINFORCE with a leave-one-out baseline over K samples per estimate")
class ReinforceLeaveOneOut(Estimator):
    """1/K sum_k (h_k - sigm(a)) (L_k - mean_{j != k} L_j): unbiased, K loss evaluations."""

    unbiased = True
    needs_loss_backprop = False
    loss_evals = "K"

    def __init__(self, K: int = 4):
        super().__init__()
        if K < 2:
            raise ValueError(f"K must be at least 2, got {K}")
        self.K = K

    def loss_evaluations(self, units: int) -> int:
        return self.K

    def bernoulli_draws(self, units: int) -> int:
        return self.K * units

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs, (self.K, *probs.shape))
        loss = loss_fn(h)
        values = loss.detach()
        others = (values.sum(0, keepdim=True) - values) / (self.K - 1)
        grad = ((h - probs) * (values - others).unsqueeze(-1)).mean(0)
        return attach_gradient(reduce_to_batch(loss, logits.ndim - 1), logits, grad)
