"""Straight-through estimators (paper sec. 4, Hinton 2012): sample h = 1[u < sigm(a)] forward,
back-propagate dL/dh as if the threshold were the identity (eq. 13) or the sigmoid. Straight-through
also serves categorical units: one-hot sample forward, the softmax's Jacobian backward."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import PathwiseEstimator
from estimators.domains import STRICTLY_POSITIVE
from estimators.gumbel import CategoricalForm, check_temperature, softmax_jacobian_term, tempered_softmax


@register_estimator("straight-through", "Straight-through: binary sample forward, dL/da := dL/dh (eq. 13)")
class StraightThrough(CategoricalForm, PathwiseEstimator):
    """h = 1[u < sigm(a)] with the identity's gradient: biased, one evaluation, needs dL/dh.

    Categorical form (Bengio, Leonard & Courville 2013; the "ST" of Jang et al. 2017 and Liu et al.
    2023): D ~ Categorical(softmax(a)) one-hot forward, dL/da := J(softmax(a / tau)) dL/dD / tau,
    i.e. D - sg(softmax(a / tau)) + softmax(a / tau) (ReinMax's ``st``, whose Table 8 tunes tau;
    tau = 1 is the plain form). With K = 2, logits (0, a) and tau = 1 this is the binary
    straight-through-sigmoid (the softmax's Jacobian there is sigm'(a)), not the identity form.
    The binary form has no temperature: a binary call with tau != 1 is refused."""

    family = "straight-through"
    domains = {"tau": STRICTLY_POSITIVE}

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_temperature(tau)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.tau != 1.0:
            raise ValueError(f"straight-through's tau ({self.tau}) applies to categorical units only; "
                             "the binary form is the identity")
        bits = self.rng.bernoulli(torch.sigmoid(logits).detach())
        return bits + (logits - logits.detach())

    def sample_categorical(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.detach(), -1)
        tempered = probs if self.tau == 1.0 else tempered_softmax(logits.detach(), self.tau)
        return self.rng.categorical(probs) + softmax_jacobian_term(tempered, logits) / self.tau


@register_estimator("straight-through-sigmoid",
                    "Straight-through times the sigmoid derivative: dL/da := dL/dh sigm'(a) (sec. 4 variant)")
class StraightThroughSigmoid(PathwiseEstimator):
    """h = 1[u < sigm(a)] with the sigmoid's gradient (Hinton's lecture variant): biased."""

    family = "straight-through"

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits)
        bits = self.rng.bernoulli(probs.detach())
        return bits + (probs - probs.detach())
