"""ReinMax (Liu et al. 2023, "Bridging discrete and backpropagation: straight-through
and beyond"): a second-order (Heun's method) gradient approximation; the categorical form is the
paper's own, the binary form its two-class case."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import PathwiseEstimator
from estimators.domains import STRICTLY_POSITIVE
from estimators.gumbel import (CategoricalForm, check_temperature, compute_dtype, softmax_jacobian_term,
                               straight_through, tempered_softmax)


@register_estimator("reinmax", "ReinMax (Liu et al. 2023): second-order straight-through, "
                               "dL/da := dL/dh [2 q(1 - q) - sigm'(a) / 2], q = (h + sigm(a / tau)) / 2")
class ReinMax(CategoricalForm, PathwiseEstimator):
    """ReinMax's algorithm: pi_0 = softmax(theta), D ~ pi_0, pi_1 = (D + softmax(theta / tau)) / 2,
    and the gradient 2 J(pi_1) dL/dD - J(pi_0) dL/dD / 2, J(pi) = diag(pi) - pi pi' the softmax
    Jacobian (the official ``ReinMaxCore.backward``).

    Two classes with logits (a, 0) and h = D_1 ~ Bernoulli(sigm(a)): with q = (h + sigm(a / tau)) / 2,
    dL/da := dL/dh [2 q (1 - q) - sigm(a)(1 - sigm(a)) / 2]. At tau = 1 the coefficient is
    (1 - sigm(a)) / 2 when h = 1 and sigm(a) / 2 when h = 0, so the mean is
    sigm'(a) (L'(0) + L'(1)) / 2 per unit: exact for losses quadratic in each unit (the trapezoid
    rule), biased otherwise. The paper recommends tau >= 1; any tau > 0 is accepted. Its only
    randomness is the Bernoulli sample (exact moments by enumeration).

    Categorical form (Liu et al. 2023, Algorithm 2; the official ``ReinMaxCore.backward``): D ~
    Categorical(pi_0), pi_0 = softmax(a), pi_1 = (D + softmax(a / tau)) / 2, and
    dL/da := 2 J(pi_1) dL/dD - J(pi_0) dL/dD / 2, J(pi) = diag(pi) - pi pi'. (The official code also
    subtracts the mean over categories; J(pi) g already sums to zero, so that is a no-op.)
    """

    family = "straight-through"
    unbiased = False

    domains = {"tau": STRICTLY_POSITIVE}

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_temperature(tau)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        base = a.detach()
        hard = self.rng.bernoulli(torch.sigmoid(base))
        scaled = base / self.tau
        q = (hard + torch.sigmoid(scaled)) / 2
        one_minus_q = (1 - hard + torch.sigmoid(-scaled)) / 2  # 1 - q without cancellation
        coefficient = 2 * q * one_minus_q - torch.sigmoid(base) * torch.sigmoid(-base) / 2
        return straight_through(hard, a, coefficient).to(logits.dtype)

    def sample_categorical(self, logits: torch.Tensor) -> torch.Tensor:
        base = logits.detach()
        pi_0 = torch.softmax(base, -1)
        hard = self.rng.categorical(pi_0)
        pi_1 = (hard + tempered_softmax(base, self.tau)) / 2
        return hard + 2 * softmax_jacobian_term(pi_1, logits) - softmax_jacobian_term(pi_0, logits) / 2
