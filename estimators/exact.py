"""Exact expectation by enumerating all 2^n unit configurations (K^n for categorical units): the
ground truth."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import Estimator, LossFn, all_categories, all_configurations
from estimators.domains import Count

# Elements of the largest tensor one call holds: configurations x batch x units (2^28 float32
# numbers are 1 GiB; the loss and the weights hold a few of them). Checked before allocating.
MAX_ELEMENTS = 2**28


@register_estimator("exact", "Exact gradient of E[L] by enumerating all 2^units configurations (small layers)")
class Exact(Estimator):
    """Surrogate sum_h P(h | a) L(h): its value is E[L] and its gradient the exact gradient,
    with respect to the logits and any parameter inside the loss. Zero bias, zero variance.
    Categorical units: the sum runs over all K^units one-hot configurations, P(h | a) the product
    of softmax(a_i)[h_i]; ``max_units`` then bounds K^units by 2^max_units."""

    family = "exact"
    unbiased = True
    needs_loss_backprop = False
    randomness = "none"
    loss_evals = "2 ** units"
    loss_rounding = 1.0  # sum_h P(h) (h - p) L(h): loss values weighted by scores that cancel
    variables = "both"

    domains = {"max_units": Count(1, 30)}

    def __init__(self, max_units: int = 20):
        super().__init__()
        self.max_units = max_units

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        return categories**units

    def check_units(self, units: int, examples: int = 1, categories: int = 2) -> None:
        """Refuse, before anything is allocated, more than 2^``max_units`` configurations (K^units
        with K ``categories``, one-hot of width K; 2^units binary) or an enumeration whose tensors
        would exceed MAX_ELEMENTS numbers."""
        space = f"{categories}^{units}"
        if categories**units > 2**self.max_units:
            raise ValueError(f"exact enumeration over {space} configurations exceeds max_units={self.max_units}")
        elements = categories**units * units * (categories if categories > 2 else 1) * examples
        if elements > MAX_ELEMENTS:
            raise ValueError(f"exact enumeration over {space} configurations of {units} units"
                             f"{f' for {examples} examples' if examples > 1 else ''} needs tensors of {elements:,} "
                             f"numbers, more than the limit of 2^{MAX_ELEMENTS.bit_length() - 1}; use fewer units")

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, categorical: bool = False) -> torch.Tensor:
        if categorical:
            return self._categorical(logits, loss_fn)
        units = logits.shape[-1]
        self.check_units(units, logits[..., 0].numel())
        configs = all_configurations(units, logits.dtype, logits.device)
        h = configs.reshape(2**units, *([1] * (logits.ndim - 1)), units).expand(2**units, *logits.shape)
        log_p = torch.nn.functional.logsigmoid(logits)
        log_q = torch.nn.functional.logsigmoid(-logits)
        weight = torch.exp((h * log_p + (1 - h) * log_q).sum(-1))
        return (weight * loss_fn(h)).sum(0)

    def _categorical(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        units, K = logits.shape[-2:]
        self.check_units(units, logits[..., 0, 0].numel(), K)
        configs = all_categories(units, K, logits.dtype, logits.device)
        h = configs.reshape(K**units, *([1] * (logits.ndim - 2)), units, K).expand(K**units, *logits.shape)
        log_p = torch.log_softmax(logits, -1).expand_as(h)
        weight = torch.exp(torch.where(h > 0, log_p, torch.zeros_like(log_p)).sum((-2, -1)))  # no 0 * -inf
        return (weight * loss_fn(h)).sum(0)
