"""A linear loss of Bernoulli units: the smallest problem with a closed-form gradient."""
from __future__ import annotations

import torch

from problems.base import BernoulliProblem


class BernoulliLinear(BernoulliProblem):
    """L(h) = w'h with seeded w and logits phi; dE[L]/dphi = w * s * (1 - s), s = sigm(phi).

    The units do not interact, so every coordinate of an estimator's error is its own; a useful
    sanity problem for a new estimator before the coupled ones.
    """

    def __init__(self, d: int = 3, data_seed: int = 0):
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be at least 1, got {d}")
        self.d, self.data_seed = d, data_seed
        generator = torch.Generator().manual_seed(data_seed)
        self.register_buffer("w", torch.randn(d, generator=generator))
        self.register_buffer("logits", torch.randn(d, generator=generator))

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.w

    def exact_gradient(self) -> torch.Tensor:
        w = self.w.detach().to("cpu", torch.float64)
        s = torch.sigmoid(self.logits.detach().to("cpu", torch.float64))
        return w * s * (1 - s)
