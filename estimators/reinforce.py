"""Score-function (REINFORCE) estimators for Bernoulli(sigm(a)) units (paper sec. 3).

g_i = (h_i - sigm(a_i)) (L - Lbar_i) is unbiased for dE[L]/da_i for any Lbar_i fixed before h is
drawn (Theorem 1, Corollary 1). Only the value of L is used: no back-propagation through the loss.
Baselines are computed from earlier calls only, then updated, so they never bias the estimate.

Categorical units (``categorical=True``, logits (*batch, units, K), one-hot h): the K-way score
d log softmax(a_i)[h_i] / da_ik = h_ik - softmax(a_i)_k takes the place of h_i - sigm(a_i), so
g_ik = (h_ik - p_ik) (L - Lbar_ik); with K = 2 the coordinates of category 1 are the binary
estimate at logit a_i1 - a_i0 and those of category 0 its negative.
"""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import Estimator, LossFn, attach_gradient, reduce_to_batch
from estimators.domains import MAX_DRAWS, Count, Interval


DECAY = Interval(0, 1, closed="left")  # a moving average's decay


def _batch_mean(x: torch.Tensor, event_dims: int = 1) -> torch.Tensor:
    """Mean over every axis but the last ``event_dims`` (the units, and for categorical units
    their categories)."""
    event = x.shape[x.ndim - event_dims:]
    return x.reshape(-1, *event).mean(0)


def _event_axes(loss: torch.Tensor, event_dims: int) -> torch.Tensor:
    """``loss`` (*batch) with ``event_dims`` trailing axes of size 1, to broadcast over h."""
    return loss.reshape(*loss.shape, *([1] * event_dims))


def _draw(estimator: Estimator, logits: torch.Tensor, categorical: bool,
          lead: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(h, detached probabilities, event_dims): Bernoulli(sigm(a)) bits, or one-hot
    Categorical(softmax(a)) draws when ``categorical``; ``lead`` adds leading sample axes."""
    if categorical:
        probs = torch.softmax(logits, -1).detach()
        return estimator.rng.categorical(probs, (*lead, *probs.shape)), probs, 2
    probs = torch.sigmoid(logits).detach()
    return estimator.rng.bernoulli(probs, (*lead, *probs.shape) if lead else None), probs, 1


class ScoreFunctionEstimator(Estimator):
    """REINFORCE with a baseline chosen by the subclass: (h - sigm(a)) (L - Lbar), or for
    categorical units (h - softmax(a)) (L - Lbar). The subclasses registered here declare
    ``variables = 'both'``; a subclass whose forward knows binary units only keeps 'binary'."""

    family = "score function"
    unbiased = True
    needs_loss_backprop = False
    loss_rounding = 1.0  # (h - p)(L - Lbar): a difference of loss values times a score

    def baseline(self, shape: torch.Size | int, like: torch.Tensor) -> torch.Tensor | float:
        """Lbar for units of event ``shape``: (units,) (or the int units) or, categorical, (units, K)."""
        return 0.0

    def observe(self, h: torch.Tensor, probs: torch.Tensor, loss: torch.Tensor) -> None:
        """Update running statistics after the estimate is formed."""

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, categorical: bool = False) -> torch.Tensor:
        h, probs, event_dims = _draw(self, logits, categorical)
        loss = loss_fn(h)
        centred = _event_axes(loss.detach(), event_dims) - self.baseline(logits.shape[logits.ndim - event_dims:], probs)
        grad = (h - probs) * centred
        if self.update_state:
            with torch.no_grad():
                self.observe(h, probs, loss.detach())
        return attach_gradient(loss, logits, grad, event_dims)


@register_estimator("reinforce", "REINFORCE / score function with no baseline (paper Theorem 1, eq. 6)")
class Reinforce(ScoreFunctionEstimator):
    """(h - sigm(a)) L: the paper's unbiased estimator for stochastic binary neurons, Lbar = 0;
    (h - softmax(a)) L for categorical units."""

    variables = "both"


@register_estimator("reinforce-ma", "REINFORCE with an exponential moving-average baseline of the loss")
class ReinforceMovingAverage(ScoreFunctionEstimator):
    """(h - sigm(a)) (L - Lbar) with Lbar an EMA of past mean losses (Corollary 1, constant Lbar).

    The average advances once per call, by ``decay``: per training step, or per batch of 64
    estimates in the harness's warm-up (a fixed size, so the frozen Lbar is the same whatever
    ``--samples``). One scalar Lbar for binary and categorical units alike."""

    stateful = True
    variables = "both"

    domains = {"decay": DECAY}

    def __init__(self, decay: float = 0.9):
        super().__init__()
        self.decay = decay
        self.register_buffer("mean_loss", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def baseline(self, shape, like):
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
    baseline is the same whatever ``--samples``).

    Categorical units: the same ratio per unit and category, Lbar_ik = E[(h_ik - p_ik)^2 L] /
    E[(h_ik - p_ik)^2], the minimum-variance constant for coordinate (i, k) of the estimate (the
    coordinates' baselines are chosen separately, as eq. 10 does per unit); with K = 2 both
    categories get the binary unit's baseline."""

    stateful = True
    variables = "both"

    domains = {"decay": DECAY}

    def __init__(self, decay: float = 0.9):
        super().__init__()
        self.decay = decay
        self.register_buffer("numerator", torch.zeros(0))
        self.register_buffer("denominator", torch.zeros(0))

    def baseline(self, shape, like):
        if self.numerator.shape != (torch.Size([shape]) if isinstance(shape, int) else shape):
            return 0.0
        ratio = self.numerator / self.denominator.clamp_min(torch.finfo(self.denominator.dtype).tiny)
        return torch.where(self.denominator > 0, ratio, torch.zeros_like(ratio)).to(like.dtype)

    def observe(self, h, probs, loss):
        event_dims = probs.ndim - loss.ndim
        weight = (h - probs) ** 2
        num = _batch_mean(weight * _event_axes(loss, event_dims), event_dims).to(torch.float64)
        den = _batch_mean(weight, event_dims).to(torch.float64)
        if self.numerator.shape != num.shape:
            self.numerator = num.clone()
            self.denominator = den.clone()
            return
        self.numerator.mul_(self.decay).add_((1 - self.decay) * num)
        self.denominator.mul_(self.decay).add_((1 - self.decay) * den)


@register_estimator("reinforce-loo", "REINFORCE with a leave-one-out baseline over K samples per estimate")
class ReinforceLeaveOneOut(Estimator):
    """1/K sum_k (h_k - sigm(a)) (L_k - mean_{j != k} L_j): unbiased, K loss evaluations. For
    categorical units (h_k - softmax(a)) in its place (``K`` stays the number of samples, not of
    categories: those are the logits' last axis)."""

    family = "score function"
    unbiased = True
    needs_loss_backprop = False
    loss_evals = "K"
    loss_rounding = 1.0  # (h_k - p)(L_k - mean of the others)
    variables = "both"

    domains = {"K": Count(2, MAX_DRAWS)}

    def __init__(self, K: int = 4):
        super().__init__()
        self.K = K

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        return self.K

    def bernoulli_draws(self, units: int) -> int:
        return self.K * units

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, categorical: bool = False) -> torch.Tensor:
        h, probs, event_dims = _draw(self, logits, categorical, (self.K,))
        loss = loss_fn(h)
        values = loss.detach()
        others = (values.sum(0, keepdim=True) - values) / (self.K - 1)
        grad = ((h - probs) * _event_axes(values - others, event_dims)).mean(0)
        return attach_gradient(reduce_to_batch(loss, logits.ndim - event_dims), logits, grad, event_dims)
