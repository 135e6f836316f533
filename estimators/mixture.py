"""Mixture-of-experts routers: the contract of router estimators (their estimators: ``estimators.routers``).

The router contract. A router problem calls ``estimator(logits, loss_fn, router=layer)``: ``logits``
is ``(*batch, E)``, the router's logits of each routed example (a token), differentiable w.r.t. the
router's parameters; ``layer`` is a :class:`MoELayer` saying how many experts each example keeps
(``top_k``), how the kept ones are weighted (``weights``) and how they are chosen (``routing``), and
giving the experts' outputs ``layer.experts(mask)`` for a boolean mask ``(*extra, *batch, E)`` of the
experts to evaluate (the layer counts those evaluations: the cost of an estimator is the experts it
asks for); ``loss_fn`` takes the layer's output ``y`` of shape ``(*extra, *batch, width)`` and returns
the loss ``(*extra, *batch)``. The surrogate has shape ``(*batch,)``: its value is the loss of the
layer's forward output, its gradient the estimate.

Routing is the problem's (the layer's), the gradient rule the estimator's:
- 'sampled': the k experts are drawn without replacement from softmax(logits) (one categorical draw
  per kept expert through ``self.rng``, each over the experts not yet drawn: the Gumbel-top-k law),
  as SparseMixer samples its top-1 expert; the objective is the expected loss over routings;
- 'topk': the k largest logits, as the conventional router does; the objective is the loss itself,
  piecewise smooth in the logits, whose gradient is the conventional router's wherever no two logits
  tie.
Weights of the kept experts: 'softmax' (their probabilities p_e, Switch Transformer) or
'renormalised' (p_e / sum of the kept p, Mixtral; at top-1 the weight is 1).

Traits beside the contract's: ``expert_evals`` ('k': the kept experts only; 'E': every expert, as a
dense backward pass needs), ``forward_differs`` (the training forward output differs from the
inference output, the layer's own), ``routings`` (which routings it serves: 'both' or 'sampled' for
estimators that draw their own routing), ``max_top_k`` (None: any k; 1: top-1 as its reference code).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import torch

from estimators.base import Estimator, LossFn, ReplayNoise, Traits

ROUTINGS = ("sampled", "topk")
WEIGHTS = ("softmax", "renormalised")


@dataclasses.dataclass(frozen=True)
class MoELayer:
    """A mixture-of-experts layer as a router estimator sees it (see the module docstring)."""

    top_k: int
    weights: str
    routing: str
    experts: Callable[[torch.Tensor], torch.Tensor]  # mask (*extra, *batch, E) -> outputs (*extra, *batch, E, width)


def route(rng, logits: torch.Tensor, layer: MoELayer) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept experts ``index`` (*batch, k) and the score sum_j (onehot(z_j) - q_j) (*batch, E) of
    the routing's log-probability w.r.t. the logits (zero for 'topk'). 'sampled': draw j is from
    q_j = softmax of the logits with the experts drawn before it removed; the score is written out
    (not autograd of a log-probability) so a replayed impossible draw (weight 0) stays finite."""
    base = logits.detach()
    if layer.routing == "topk":
        return base.topk(layer.top_k, -1).indices, torch.zeros_like(base)
    taken = torch.zeros(base.shape, dtype=torch.bool, device=base.device)
    picks, score = [], torch.zeros_like(base)
    for _ in range(layer.top_k):
        q = torch.softmax(base.masked_fill(taken, -math.inf), -1)
        h = rng.categorical(q)
        pick = h.argmax(-1)
        # the inverse CDF's float rounding can land on an expert already drawn (probability ~ eps):
        # take the likeliest one left instead, so no expert is kept twice (a replayed draw stays as
        # given: its probability, 0, already weighs it out of exact moments)
        again = taken.gather(-1, pick.unsqueeze(-1)).squeeze(-1) & (h.sum(-1) > 0)
        if bool(again.any()) and not isinstance(rng, ReplayNoise):
            pick = torch.where(again, q.argmax(-1), pick)
            h = torch.nn.functional.one_hot(pick, base.shape[-1]).to(base.dtype)
        score = score + h - q
        picks.append(pick)
        taken = taken | h.bool()
    return torch.stack(picks, -1), score


def kept_weights(probs: torch.Tensor, index: torch.Tensor, weights: str) -> torch.Tensor:
    """The weights (*batch, k) of the kept experts from the probabilities (*batch, E), differentiable."""
    kept = probs.gather(-1, index)
    return kept if weights == "softmax" else kept / kept.sum(-1, keepdim=True)


def all_weights(probs: torch.Tensor, mask: torch.Tensor, weights: str, detach_norm: bool = False) -> torch.Tensor:
    """The layer's weight formula applied to every expert (*batch, E): p_e ('softmax') or p_e divided by
    the kept experts' sum ('renormalised'; ``detach_norm``: the sum held fixed for the experts not kept,
    as DenseMixer's 'partscale' does)."""
    if weights == "softmax":
        return probs
    norm = (probs * mask).sum(-1, keepdim=True)
    if detach_norm:
        return torch.where(mask.bool(), probs / norm, probs / norm.detach())
    return probs / norm


def mask_of(index: torch.Tensor, experts: int) -> torch.Tensor:
    """The kept experts as a 0/1 mask (*batch, E) of the index's dtype-free shape."""
    return torch.nn.functional.one_hot(index, experts).sum(-2).clamp(max=1)


def combine(outputs: torch.Tensor, index: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_j w_j outputs[index_j]: outputs (*batch, E, width), index and w (*batch, k) -> (*batch, width)."""
    picked = outputs.gather(-2, index.unsqueeze(-1).expand(*index.shape, outputs.shape[-1]))
    return (w.unsqueeze(-1) * picked).sum(-2)


@dataclasses.dataclass(frozen=True)
class RouterTraits(Traits):
    """The traits of a router estimator: an estimator's, plus the experts it evaluates
    (``expert_evals``), whether its training forward output differs from inference
    (``forward_differs``) and the routings it serves (``routings``)."""

    expert_evals: str
    forward_differs: bool
    routings: str


class RouterEstimator(Estimator):
    """Base of the router estimators: serves router problems only (``variables = 'router'``)."""

    family = "router"
    traits_type = RouterTraits
    variables = "router"
    expert_evals: ClassVar[str] = "k"
    forward_differs: ClassVar[bool] = False
    routings: ClassVar[str] = "both"
    max_top_k: ClassVar[int | None] = None
    weights_served: ClassVar[tuple[str, ...]] = WEIGHTS

    def expert_evaluations(self, top_k: int, experts: int) -> int:
        """Experts evaluated per routed example."""
        return experts if self.expert_evals == "E" else top_k

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        return self.loss_evals

    def check_units(self, units: int) -> None:
        raise ValueError(f"{self.name or type(self).__name__} serves mixture-of-experts routers (a moe-router "
                         f"problem), not a layer of {units} units")

    def check_router(self, top_k: int, weights: str, routing: str) -> None:
        """Raise ValueError (the reason a pair is skipped) when this estimator cannot serve the layer."""
        who = self.name or type(self).__name__
        if self.routings == "sampled" and routing != "sampled":
            raise ValueError(f"{who} samples its routing; this layer routes deterministically (routing='topk')")
        if self.max_top_k is not None and top_k > self.max_top_k:
            raise ValueError(f"{who} routes top-{self.max_top_k} only (as its reference code), got top_k={top_k}")
        if weights not in self.weights_served:
            raise ValueError(f"{who} weights the kept expert by its gate probability (weights='softmax' only), "
                             f"got weights={weights!r}")

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, router: MoELayer | None = None,
                categorical: bool = False) -> torch.Tensor:
        if router is None:
            raise ValueError(f"{self.name or type(self).__name__} serves mixture-of-experts routers: call it "
                             "with router=MoELayer")
        return self.surrogate(logits, loss_fn, router)

    def surrogate(self, logits: torch.Tensor, loss_fn: LossFn, layer: MoELayer) -> torch.Tensor:
        raise NotImplementedError
