"""Antithetic two-evaluation estimators for Bernoulli(sigm(a)) units: ARM and DisARM.

Both evaluate the loss on a pair of configurations b, b~ whose units are each Bernoulli(sigm(a))
but negatively coupled (common uniforms u and 1 - u), stacked on a leading axis in one loss call.
Only loss values are used. The surrogate's value is the mean of the two losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from estimators import register_estimator
from estimators.base import Estimator, LossFn, NoiseLaw, attach_gradient, reduce_to_batch


@register_estimator("arm", "ARM: (L(1[u > sigm(-a)]) - L(1[u < sigm(a)])) (u - 1/2), antithetic pair "
                           "(Yin & Zhou 2019); 2 evaluations")
class ARM(Estimator):
    """Augment-REINFORCE-merge (Yin & Zhou 2019, the ARM gradient of a vector of binary units):
    with u ~ U[0,1]^units, g = (L(1[u > sigm(-a)]) - L(1[u < sigm(a)])) (u - 1/2), unbiased for
    dE[L]/da.

    The estimate depends on u itself, not only on the two configurations, so the randomness is
    continuous (its exact variance is a piecewise-polynomial integral over u)."""

    family = "score function"
    unbiased = True
    loss_evals = 2
    needs_loss_backprop = False
    randomness = "continuous"
    loss_rounding = 1.0  # (L(b) - L(b~)) (u - 1/2)

    def noise_laws(self, logits, categorical=False):
        """u ~ U[0, 1] per unit; the pair changes where u crosses sigm(-a) or sigm(a)."""
        return (NoiseLaw("uniform", breaks=torch.stack([torch.sigmoid(-logits), torch.sigmoid(logits)], -1)),)

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        a = logits.detach()
        u = self.rng.uniform(a.shape, a)
        pair = torch.stack([(u > torch.sigmoid(-a)), (u < torch.sigmoid(a))]).to(a.dtype)
        loss = loss_fn(pair)
        grad = (loss[0] - loss[1]).detach().unsqueeze(-1) * (u - 0.5)
        return attach_gradient(reduce_to_batch(loss, logits.ndim - 1), logits, grad)


@register_estimator("disarm", "DisARM: ARM integrated over u given the antithetic pair (Dong, Mnih & "
                              "Tucker 2020); 2 evaluations, exact by enumeration")
class DisARM(Estimator):
    """DisARM (Dong, Mnih & Tucker 2020, the multivariate estimator): ARM with u integrated out
    given the pair, g_i = 1/2 (L(b) - L(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigm(|a_i|).

    The pair (b_i, b~_i) = (1[u_i < p_i], 1[1 - u_i < p_i]), p = sigm(a), is drawn as two Bernoulli
    bits with the same joint law: b ~ Bernoulli(p), then b~ ~ Bernoulli(q(b)) with
    q(0) = min(1, p / (1 - p)) = exp(min(a, 0)) and q(1) = max(0, (2p - 1) / p) = 1 - exp(-max(a, 0))
    (so P(b != b~) = 2 min(p, 1 - p)). Where q(b) is 0 or 1 the coupling fixes b~ and the second
    bit is a fair one that is ignored, so every replayed outcome has a positive probability. The
    harness can therefore replay every outcome (2 bits per unit) and compute exact moments."""

    family = "score function"
    unbiased = True
    loss_evals = 2
    needs_loss_backprop = False
    randomness = "bernoulli"
    loss_rounding = 1.0  # (L(b) - L(b~)) sigm(|a|) / 2

    def bernoulli_draws(self, units: int) -> int:
        return 2 * units

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        a = logits.detach()
        b = self.rng.bernoulli(torch.sigmoid(a))
        q = torch.where(b > 0, -torch.expm1(-F.relu(a)), torch.exp(-F.relu(-a)))
        fixed = (q == 0) | (q == 1)
        bit = self.rng.bernoulli(torch.where(fixed, torch.full_like(q, 0.5), q))
        b_anti = torch.where(fixed, q, bit)
        loss = loss_fn(torch.stack([b, b_anti]))
        half_difference = 0.5 * (loss[0] - loss[1]).detach().unsqueeze(-1)
        sign = 1 - 2 * b_anti  # (-1)^{b~}
        grad = half_difference * sign * (b != b_anti).to(a.dtype) * torch.sigmoid(a.abs())
        return attach_gradient(reduce_to_batch(loss, logits.ndim - 1), logits, grad)
