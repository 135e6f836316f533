"""IndeCateR (De Smet, Sansone & Zuidberg Dos Martires 2023, "Differentiable sampling of
categorical distributions using the CatLog-derivative trick"): an unbiased, loss-value-only
estimator that sums exactly over each unit's K categories with the other units sampled."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import Estimator, LossFn, attach_gradient
from estimators.domains import Count


@register_estimator("indecater", "IndeCateR (De Smet et al. 2023): per unit, the exact sum over its K "
                                 "categories with the other units sampled; N x K x units evaluations")
class IndeCateR(Estimator):
    """For independent units x_v ~ Categorical(p_v), p_v = softmax(a_v), the CatLog-derivative trick
    gives dE[L]/da_vk = E_{x_-v}[sum_j dp_vj/da_vk L(j, x_-v)] (De Smet et al. 2023, Theorem 3.2 and
    the IndeCateR estimator, eq. 9). With N samples x^(n):
    g_vk = (1/N) sum_n p_vk (L(k, x^(n)_-v) - sum_j p_vj L(j, x^(n)_-v)),
    where (k, x_-v) is x^(n) with unit v set to category k. Unbiased (exactly: the sum over unit v's
    categories is the conditional expectation given the others), loss values only, N K units
    evaluations per estimate (the sample itself is among them, re-evaluated once per unit).

    The surrogate's value is (1/(N units)) sum_n sum_v sum_j p_vj L(j, x^(n)_-v), a weighted mean
    of the evaluated losses that is unbiased for E[L] (each unit's sum is a conditional
    expectation). Binary units run the K = 2 case with logits (0, a): then
    g_v = sigm'(a_v) (L(x with x_v = 1) - L(x with x_v = 0)), x drawn as Bernoulli bits. Its only
    randomness is the N discrete draws per unit, so exact moments come from enumeration.
    """

    family = "score function"
    unbiased = True
    needs_loss_backprop = False
    variables = "both"
    loss_rounding = 1.0  # p_vk (L(k, x_-v) - sum_j p_vj L(j, x_-v)): differences of loss values
    loss_evals = "N * categories * units"

    domains = {"N": Count(1)}

    def __init__(self, N: int = 1):
        super().__init__()
        self.N = N

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        """Per estimate, for K = ``categories`` (2 for binary units)."""
        return self.N * categories * units

    def bernoulli_draws(self, units: int) -> int:
        return self.N * units

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, categorical: bool = False) -> torch.Tensor:
        if categorical:
            return self.categorical_surrogate(logits, loss_fn, self.rng.categorical)
        two_class = torch.stack([torch.zeros_like(logits), logits], -1)
        return self.categorical_surrogate(two_class, lambda h: loss_fn(h[..., 1]), self.draw_bits)

    def draw_bits(self, probs: torch.Tensor, shape) -> torch.Tensor:
        """Two-class draws as Bernoulli bits 1[u < p_1] (what binary enumeration replays), one-hot."""
        bits = self.rng.bernoulli(probs[..., 1], shape[:-1])
        return torch.stack([1 - bits, bits], -1)

    def categorical_surrogate(self, logits: torch.Tensor, loss_fn: LossFn, draw) -> torch.Tensor:
        """The estimator on logits (*batch, units, K), with ``draw(probs, shape)`` giving one-hot draws."""
        probs = torch.softmax(logits.detach(), -1)
        units, K = probs.shape[-2:]
        x = draw(probs, (self.N, *probs.shape))  # (N, *batch, units, K)
        lead = (1,) * (x.ndim - 2)
        replaced = torch.eye(units, dtype=torch.bool, device=x.device).reshape(units, 1, *lead, units, 1)
        category = torch.eye(K, dtype=x.dtype, device=x.device).reshape(1, K, *lead, 1, K)
        variants = torch.where(replaced, category, x)  # (units v, K j, N, *batch, units, K)
        loss = loss_fn(variants).movedim(0, -1).movedim(0, -1)  # (N, *batch, units v, K j)
        expected = (probs * loss).sum(-1)  # (N, *batch, units): E over unit v's category
        grad = (probs * (loss.detach() - expected.detach().unsqueeze(-1))).mean(0)
        return attach_gradient(expected.mean((0, -1)), logits, grad, event_dims=2)
