"""REINFORCE with a constant baseline chosen by the user."""
from __future__ import annotations

import math

import torch

from estimators.base import Estimator, LossFn, attach_gradient


class ReinforceConstant(Estimator):
    """REINFORCE with a user-given constant baseline: (h - sigm(a)) (L - baseline).

    Unbiased for any constant, because E[h - sigm(a)] = 0 (paper Corollary 1); the constant only
    moves the variance, which is smallest near the loss's typical value. It is the simplest
    baseline there is, a fixed reference point for the adaptive ones (reinforce-ma,
    reinforce-optimal).

    It subclasses ``Estimator`` rather than ``ScoreFunctionEstimator`` because the harness reads
    every constructor parameter back from the attribute of the same name (to store the full run
    configuration), and ``ScoreFunctionEstimator.baseline`` is a method.
    """

    unbiased = True
    needs_loss_backprop = False
    randomness = "bernoulli"

    def __init__(self, baseline: float = 0.5):
        super().__init__()
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline}")
        self.baseline = float(baseline)

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        grad = (h - probs) * (loss.detach().unsqueeze(-1) - self.baseline)
        return attach_gradient(loss, logits, grad)
