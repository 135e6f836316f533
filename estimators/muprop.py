"""MuProp (Gu, Levine, Sutskever & Mnih 2016): REINFORCE with a first-order Taylor control variate
around the mean-field pass, whose expectation is added back analytically."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import Estimator, LossFn, attach_gradient


@register_estimator("muprop", "MuProp: score function with a first-order Taylor control variate at the "
                              "mean-field sigm(a) (Gu et al. 2016); 2 evaluations")
class MuProp(Estimator):
    """g = (L(b) - L(mu) - L'(mu).(b - mu)) (b - mu) + L'(mu) * mu (1 - mu), mu = sigm(a),
    b ~ Bernoulli(mu): Gu et al.'s (2016) MuProp estimator for one layer of Bernoulli units, with
    the baseline f(mu) + f'(mu).(b - mu) (their first-order Taylor expansion); the Taylor term's score-function
    part has the known mean L'(mu) * mu (1 - mu), which is added back, so g is unbiased.

    Two evaluations: the sample b (the surrogate's value and the gradient of parameters inside the
    loss) and the mean-field point mu, where dL/dh is taken by back-propagating through the loss.
    In a stacked model the mean-field pass goes through the downstream layers' own estimators, so
    L(mu) may be random; it is drawn independently of b, which is all unbiasedness needs."""

    family = "control variate"
    unbiased = True
    loss_evals = 2
    needs_loss_backprop = True
    randomness = "bernoulli"
    loss_rounding = 1.0  # (L(b) - L(mu) - ...) (b - mu)

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        mu = torch.sigmoid(logits.detach())
        b = self.rng.bernoulli(mu)
        loss = loss_fn(b)
        with torch.enable_grad():
            point = mu.clone().requires_grad_(True)
            at_mean = loss_fn(point)
            if not at_mean.requires_grad:
                raise RuntimeError(f"{self.name}: the loss must be differentiable in h (MuProp needs dL/dh)")
            (slope,) = torch.autograd.grad(at_mean.sum(), point)
        centred = b - mu
        taylor = at_mean.detach() + (slope * centred).sum(-1)
        grad = (loss.detach() - taylor).unsqueeze(-1) * centred + slope * mu * (1 - mu)
        return attach_gradient(loss, logits, grad)
