"""Straight-through estimators (paper sec. 4, Hinton 2012): sample h = 1[u < sigm(a)] forward,
back-propagate dL/dh as if the threshold were the identity (eq. 13) or the sigmoid."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import PathwiseEstimator


@register_estimator("straight-through", "Straight-through: binary sample forward, dL/da := dL/dh (eq. 13)")
class StraightThrough(PathwiseEstimator):
    """h = 1[u < sigm(a)] with the identity's gradient: biased, one evaluation, needs dL/dh."""

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        bits = self.rng.bernoulli(torch.sigmoid(logits).detach())
        return bits + (logits - logits.detach())


@register_estimator("straight-through-sigmoid",
                    "Straight-through times the sigmoid derivative: dL/da := dL/dh sigm'(a) (sec. 4 variant)")
class StraightThroughSigmoid(PathwiseEstimator):
    """h = 1[u < sigm(a)] with the sigmoid's gradient (Hinton's lecture variant): biased."""

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits)
        bits = self.rng.bernoulli(probs.detach())
        return bits + (probs - probs.detach())
