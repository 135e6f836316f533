"""Gaussian dropout matched to a binary unit (Wang & Manning 2013; Srivastava et al. 2014, sec. 10):
the noise control for binary stochastic units with the same mean and variance but no quantisation.

Gaussian dropout multiplies an activation p by m ~ N(1, (1 - q) / q); with keep rate q = p this is

    h = p + sqrt(p (1 - p)) * eps,   eps ~ N(0, 1),   p = sigm(a),

so E[h] = p and Var[h] = p (1 - p), exactly the moments of h ~ Bernoulli(p). The gradient is the
exact pathwise (reparameterised) derivative of this unit's own expected loss, through the mean and
the standard deviation; the standard deviation is computed as exp((log sigm(a) + log sigm(-a)) / 2)
so its derivative, std * (1 - 2p) / 2, stays finite where p saturates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from estimators import register_estimator
from estimators.base import NoiseLaw, PathwiseEstimator


@register_estimator("gaussian-dropout",
                    "Gaussian noise with the Bernoulli unit's mean and variance, h = p + sqrt(p(1-p)) eps: "
                    "noise without quantisation")
class GaussianDropout(PathwiseEstimator):
    """h = sigm(a) + sqrt(sigm(a) sigm(-a)) eps, eps ~ N(0, 1), exact pathwise gradient of its own
    objective (biased for the Bernoulli expected loss); h = sigm(a) in eval mode."""

    family = "non-binary"
    binary_forward = False
    randomness = "continuous"

    def noise_laws(self, logits, categorical=False):
        """eps ~ N(0, 1) per unit in training; h is linear in eps."""
        return (NoiseLaw("normal"),) if self.training else ()

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits)
        if not self.training:
            return probs
        std = torch.exp(0.5 * (F.logsigmoid(logits) + F.logsigmoid(-logits)))
        return probs + std * self.rng.normal(logits.shape, logits)
