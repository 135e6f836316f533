"""Toy Bernoulli problems with exact gradients: E_{h ~ Bernoulli(sigm(phi))}[L(h)]."""
from __future__ import annotations

import math

import torch

from estimators.domains import SEED, Count, Interval
from problems import register_problem
from problems.base import MAX_ENUMERATION_UNITS, BernoulliProblem


def _seeded(data_seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(data_seed)


@register_problem("bernoulli-target", "L(h) = sum_i (h_i - t)^2 at logits phi; closed-form gradient")
class BernoulliTarget(BernoulliProblem):
    """dE[L]/dphi_i = (1 - 2t) sigm(phi)(1 - sigm(phi)): units do not interact; t near 0.5 makes
    the gradient small against the estimators' noise (the classic hard case). The logits are
    evenly spaced over [logit - spread, logit + spread] (all equal to ``logit`` at spread 0). At
    logit 0 with spread 0 (p = 1/2) several estimators coincide: the mean-field gradient is exact,
    ReinMax is straight-through-sigmoid, the optimal baseline is the moving average."""

    domains = {"d": Count(1), "t": Interval(0, 1), "logit": Interval(), "spread": Interval(0, None)}

    def __init__(self, d: int = 4, t: float = 0.45, logit: float = 0.0, spread: float = 0.0):
        super().__init__()
        self.d, self.t, self.logit, self.spread = d, t, logit, spread
        offsets = torch.linspace(-1.0, 1.0, d, dtype=torch.float64) if d > 1 else torch.zeros(1, dtype=torch.float64)
        self.register_buffer("logits", (logit + spread * offsets).to(torch.float32))

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        return ((h - self.t) ** 2).sum(-1)

    def exact_gradient(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits.detach().to("cpu", torch.float64))
        return (1 - 2 * self.t) * p * (1 - p)


@register_problem("bernoulli-quadratic", "L(h) = h'Ah + b'h with seeded random A, b, phi: coupled units")
class BernoulliQuadratic(BernoulliProblem):
    """E[h'Ah] = sum_{i != j} A_ij p_i p_j + sum_i A_ii p_i, so dE[L]/dphi_k =
    p_k (1 - p_k) (A_kk + b_k + sum_{j != k} (A_kj + A_jk) p_j)."""

    domains = {"d": Count(1), "data_seed": SEED}

    def __init__(self, d: int = 6, data_seed: int = 0):
        super().__init__()
        self.d, self.data_seed = d, data_seed
        g = _seeded(data_seed)
        self.register_buffer("A", torch.randn(d, d, generator=g) / math.sqrt(d))
        self.register_buffer("b", torch.randn(d, generator=g))
        self.register_buffer("logits", torch.randn(d, generator=g))

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        return ((h @ self.A) * h).sum(-1) + h @ self.b

    def exact_gradient(self) -> torch.Tensor:
        A = self.A.detach().to("cpu", torch.float64)
        b = self.b.detach().to("cpu", torch.float64)
        p = torch.sigmoid(self.logits.detach().to("cpu", torch.float64))
        off = A - torch.diag(torch.diagonal(A))
        return p * (1 - p) * (torch.diagonal(A) + b + (off + off.T) @ p)


@register_problem("bernoulli-blackbox", "Seeded tiny random tanh MLP of up to 20 bits; exact by enumeration")
class BernoulliBlackbox(BernoulliProblem):
    """L(h) = v' tanh(W h + c) + w' h: non-polynomial, every unit interacts; gradient by
    enumeration over all 2^d configurations."""

    domains = {"d": Count(1, MAX_ENUMERATION_UNITS, why="exact by enumeration"), "hidden": Count(1), "data_seed": SEED}

    def __init__(self, d: int = 8, hidden: int = 16, data_seed: int = 0):
        super().__init__()
        self.d, self.hidden, self.data_seed = d, hidden, data_seed
        g = _seeded(data_seed)
        self.register_buffer("W", torch.randn(hidden, d, generator=g) * (2 / math.sqrt(d)))
        self.register_buffer("c", torch.randn(hidden, generator=g))
        self.register_buffer("v", torch.randn(hidden, generator=g) / math.sqrt(hidden))
        self.register_buffer("w", torch.randn(d, generator=g) * 0.1)
        self.register_buffer("logits", torch.randn(d, generator=g))

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ self.W.T + self.c) @ self.v + h @ self.w
