"""Gapped straight-through (GST; Fan, Chi, Rudnicky & Ramadge 2022, "Training discrete deep
generative models via gapped straight-through estimator"), binary and categorical forms."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import PathwiseEstimator
from estimators.domains import STRICTLY_POSITIVE, Interval
from estimators.gumbel import (CategoricalForm, check_temperature, compute_dtype, relaxed_slope,
                               softmax_jacobian_term, straight_through, tempered_softmax)


@register_estimator("gapped-st", "Gapped ST (Fan et al. 2022): hard sample, gradient of sigm(z / tau), "
                                 "z the logit moved to lead by the gap")
class GappedStraightThrough(CategoricalForm, PathwiseEstimator):
    """GST replaces ST-Gumbel's random perturbation by a deterministic one, D_GST = D -
    sg(softmax_tau(theta + m)) + softmax_tau(theta + m), with m = sg(m(theta, D)) chosen so that the
    sampled class D has the largest perturbed logit (consistency) and leads every other class by at
    least the gap kappa (strict gap); the authors' ``gst_mover`` moves the sampled logit up to the
    maximum and pushes the others to at most max - kappa.

    Two classes with logits (a, 0) and h = D_1 ~ Bernoulli(sigm(a)): the perturbed logit is
    z = max(a, kappa) if h = 1 and z = min(a, -kappa) if h = 0, and dL/da := dL/dh sigm'(z / tau) / tau
    (dz/da = 1: the shift is held fixed). Its only randomness is the Bernoulli sample, so its exact
    bias and variance come from enumeration. Biased; ``gap`` = kappa >= 0 (0: no gap).

    Categorical form (the authors' ``gst_mover`` with a fixed gap, as in the ReinMax code base):
    D ~ Categorical(softmax(a)); with M = max_j a_j, the sampled logit becomes M and every other
    logit min(a_j, M - kappa); then D forward and J(softmax(z / tau)) dL/dD / tau backward, the
    shift z - a held fixed. With K = 2 and logits (0, a) this is the binary form above.
    """

    family = "straight-through"
    unbiased = False

    domains = {"tau": STRICTLY_POSITIVE, "gap": Interval(0, None)}

    def __init__(self, tau: float = 1.0, gap: float = 1.0):
        super().__init__()
        self.tau = check_temperature(tau)
        self.gap = float(gap)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        base = a.detach()
        hard = self.rng.bernoulli(torch.sigmoid(base))
        gapped = torch.where(hard > 0, base.clamp_min(self.gap), base.clamp_max(-self.gap))
        return straight_through(hard, a, relaxed_slope(gapped, self.tau)).to(logits.dtype)

    def sample_categorical(self, logits: torch.Tensor) -> torch.Tensor:
        base = logits.detach()
        hard = self.rng.categorical(torch.softmax(base, -1))
        top = base.amax(-1, keepdim=True)
        moved = torch.where(hard > 0, top, torch.minimum(base, top - self.gap))
        return hard + softmax_jacobian_term(tempered_softmax(moved, self.tau), logits) / self.tau
