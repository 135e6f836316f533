"""The paper's non-binary baseline gaters (sec. 5): deterministic sigmoid, sigmoid with Gaussian
noise at its input, and the plain rectifier. Their forward output is not binary; as estimators of
the Bernoulli expected-loss gradient they are biased (the sigmoid gives the mean-field gradient)."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import NoiseLaw, PathwiseEstimator
from estimators.domains import Interval
from estimators.noisy_rectifier import MAX_STD


@register_estimator("sigmoid", "Deterministic sigmoid h = sigm(a): the mean-field baseline (Baseline Sigmoid)")
class Sigmoid(PathwiseEstimator):
    """h = sigm(a), plain back-propagation."""

    family = "non-binary"
    binary_forward = False
    randomness = "none"

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


@register_estimator("sigmoid-noise", "Sigmoid with Gaussian noise at its input (Baseline Sigmoid+Noise)")
class SigmoidNoise(PathwiseEstimator):
    """h = sigm(a + std z), z ~ N(0, 1) in training; h = sigm(a) in eval."""

    family = "non-binary"
    binary_forward = False
    randomness = "continuous"

    domains = {"std": Interval(0, MAX_STD)}

    def __init__(self, std: float = 1.0):
        super().__init__()
        self.std = std

    def noise_laws(self, logits, categorical=False):
        """z ~ N(0, 1) per unit in training; h = sigm(a + std z) is smooth in z."""
        return (NoiseLaw("normal"),) if self.training and self.std > 0 else ()

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            logits = logits + self.std * self.rng.normal(logits.shape, logits)
        return torch.sigmoid(logits)


@register_estimator("rectifier", "Deterministic rectifier h = max(0, a) (Baseline Rectifier, zero noise)")
class Rectifier(PathwiseEstimator):
    """h = max(0, a), plain back-propagation."""

    family = "non-binary"
    binary_forward = False
    randomness = "none"
    activation = "rectifier"

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.relu(logits)
