"""Router estimators of mixture-of-experts layers, each following its reference code (cited per class);
the contract they serve (``MoELayer``, routings, weights, traits) is ``estimators.mixture``."""
from __future__ import annotations

import math
from typing import ClassVar

import torch

from estimators import register_estimator
from estimators.base import attach_gradient
from estimators.domains import STRICTLY_POSITIVE, Interval
from estimators.mixture import (MoELayer, RouterEstimator, all_weights, combine, kept_weights, mask_of,  # noqa: F401
                                route)
from estimators.reinmax import ReinMax


@register_estimator("topk-router", "Conventional top-k router: the kept experts' softmax weights carry the gradient")
class TopKRouter(RouterEstimator):
    """The conventional router (Switch Transformer, Mixtral): y = sum over the kept experts of w_e f_e,
    differentiated as it stands, so the router learns only through the kept experts' weights. With
    routing='topk' it is the exact gradient of the layer's loss (away from ties); with sampled routing
    it drops the score term E[L d log P(routing)] and is biased."""

    def surrogate(self, logits, loss_fn, layer):
        index, _ = route(self.rng, logits, layer)
        probs = torch.softmax(logits, -1)
        mask = mask_of(index, logits.shape[-1]).bool()
        return loss_fn(combine(layer.experts(mask), index, kept_weights(probs, index, layer.weights)))


@register_estimator("st-router", "Straight-through top-k: the selection mask's gradient passed to the softmax (eq. 13)")
class StraightThroughRouter(RouterEstimator):
    """The seed paper's straight-through (eq. 13) on the expert selection: the 0/1 mask m of the kept
    experts is used forward, and backward as if it were softmax(logits), m + p - sg(p); each expert
    enters with its weight (the kept ones differentiated as the conventional router does, the others'
    held fixed: p_e, or 1 at top-1 with renormalised weights, where this is exactly the categorical
    ``straight-through`` on the one-hot choice). Its backward pass needs every expert's output: E
    evaluations."""

    expert_evals = "E"

    def surrogate(self, logits, loss_fn, layer):
        index, _ = route(self.rng, logits, layer)
        E = logits.shape[-1]
        probs = torch.softmax(logits, -1)
        mask = mask_of(index, E).to(logits.dtype)
        outputs = layer.experts(torch.ones_like(mask, dtype=torch.bool))
        if layer.top_k == 1 and layer.weights == "renormalised":  # an expert chosen alone has weight 1
            every = torch.ones_like(probs)
        else:
            every = all_weights(probs, mask, layer.weights)
        v = torch.where(mask.bool(), every, every.detach())
        h = mask + probs - probs.detach()
        return loss_fn(((h * v).unsqueeze(-1) * outputs).sum(-2))


@register_estimator("densemixer", "DenseMixer: top-k forward, the dense mixture's gradient backward (every expert)")
class DenseMixer(RouterEstimator):
    """DenseMixer (Yao et al. 2025; ``yaof20/DenseMixer``, ``densemixer/models/qwen3_moe_custom.py``):
    the output is sg(y_sparse) + y_dense - sg(y_dense), y_sparse the top-k layer's and y_dense =
    sum over every expert of w_e f_e, so the router's gradient is the dense mixture's. Renormalised
    weights as its 'partscale_fix_expert' code: p_e / norm for the kept experts, p_e / sg(norm) for
    the others. Every expert is evaluated forward (E evaluations: the cost its paper reports as
    1.46x FLOPs)."""

    expert_evals = "E"

    def surrogate(self, logits, loss_fn, layer):
        index, _ = route(self.rng, logits, layer)
        E = logits.shape[-1]
        probs = torch.softmax(logits, -1)
        mask = mask_of(index, E)
        outputs = layer.experts(torch.ones(mask.shape, dtype=torch.bool, device=mask.device))
        sparse = combine(outputs, index, kept_weights(probs, index, layer.weights))
        dense = (all_weights(probs, mask.to(probs.dtype), layer.weights, detach_norm=True).unsqueeze(-1)
                 * outputs).sum(-2)
        return loss_fn(sparse.detach() + dense - dense.detach())


@register_estimator("default-moe", "Default MoE: missing experts' outputs replaced by an EMA of their outputs")
class DefaultMoE(RouterEstimator):
    """Default MoE (Panda et al. 2025, arXiv 2504.12463): each expert keeps a default output, an
    exponential moving average (``decay``) of its outputs over the examples routed to it, and the
    experts not kept enter the layer's output with their weight times their default, so the router
    gets a dense gradient while only the kept experts are evaluated (k evaluations). The output so
    differs from the inference output. Defaults start at 0 and are updated after each call while
    ``update_state`` (frozen while measured). The weights of the experts not kept follow the layer's
    formula (renormalised: divided by the kept experts' sum)."""

    expert_evals = "k"
    forward_differs = True
    stateful = True
    domains = {"decay": Interval(0, 1, closed="left")}

    def __init__(self, decay: float = 0.95):
        super().__init__()
        self.decay = decay
        self.register_buffer("defaults", torch.zeros(0))

    def surrogate(self, logits, loss_fn, layer):
        index, _ = route(self.rng, logits, layer)
        E = logits.shape[-1]
        probs = torch.softmax(logits, -1)
        mask = mask_of(index, E).bool()
        outputs = layer.experts(mask)
        width = outputs.shape[-1]
        if self.defaults.shape != (E, width):
            self.defaults = outputs.new_zeros(E, width)
        sparse = combine(outputs, index, kept_weights(probs, index, layer.weights))
        every = all_weights(probs, mask.to(probs.dtype), layer.weights)
        filled = ((every * ~mask).unsqueeze(-1) * self.defaults.to(outputs.dtype)).sum(-2)
        if self.update_state:
            with torch.no_grad():
                routed = mask.reshape(-1, E).to(outputs.dtype)
                counts = routed.sum(0)
                sums = (routed.unsqueeze(-1) * outputs.detach().reshape(-1, E, width)).sum(0)
                seen = counts > 0
                mean = sums / counts.clamp_min(1).unsqueeze(-1)
                updated = self.decay * self.defaults + (1 - self.decay) * mean.to(self.defaults.dtype)
                self.defaults = torch.where(seen.unsqueeze(-1), updated, self.defaults)
        return loss_fn(sparse + filled)


class _SparseMixer(RouterEstimator):
    """SparseMixer's routing (top-1, sampled): experts whose logit falls more than 2 jitter_eps (relative)
    below the largest are masked out, z ~ softmax of the rest (p~), and the output is m p~_z f_z with a
    midpoint factor m; the gradient flows through p~_z scaled by ``gradient_scale``."""

    routings = "sampled"
    max_top_k = 1
    weights_served = ("softmax",)
    forward_differs = True
    unbiased = False
    coin: ClassVar[float]  # P(the full factor) for an expert other than the argmax
    low_factor: ClassVar[float]
    gradient_scale: ClassVar[float]
    domains = {"jitter_eps": Interval(0, None)}

    def __init__(self, jitter_eps: float = 0.1):
        super().__init__()
        self.jitter_eps = jitter_eps

    def surrogate(self, logits, loss_fn, layer):
        with torch.no_grad():
            top, argmax = logits.max(-1, keepdim=True)
            factor = logits.abs().clamp(min=top)
            masked = ((top - logits) / factor) > (2 * self.jitter_eps)
        probs = torch.softmax(logits.masked_fill(masked, -math.inf), -1)
        h = self.rng.categorical(probs.detach())
        index = h.argmax(-1, keepdim=True)
        coin = self.rng.bernoulli(torch.full(logits.shape[:-1], self.coin, dtype=logits.dtype, device=logits.device))
        full = (index == argmax) | (coin.unsqueeze(-1) > 0)
        kept = probs.gather(-1, index)
        m = torch.where(full, torch.ones_like(kept), torch.full_like(kept, self.low_factor))
        multiplier = (kept * m).detach() + self.gradient_scale * (kept - kept.detach())
        outputs = layer.experts(h.bool())
        return loss_fn(combine(outputs, index, multiplier))


@register_estimator("sparsemixer", "SparseMixer v1 (Liu et al. 2023): sampled top-1, midpoint-method router gradient")
class SparseMixerV1(_SparseMixer):
    """SparseMixer (Liu et al. 2023; ``microsoft/SparseMixer``, ``sparsemixer/sparsemixer.py``):
    z drawn from the jitter-masked softmax p~ (the reference's Gumbel-max draw, here one categorical
    draw of the same law); forward multiplier p~_z, halved unless z is the argmax or a fair coin
    says otherwise (``SparseMixerCore``: the mask maps {0, 1} to {0.5, 1}), backward twice the
    gradient at the multiplier. The learned per-dimension scale ``omega`` of the reference is part
    of the model, not of the estimator, and is left out."""

    coin = 0.5
    low_factor = 0.5
    gradient_scale = 2.0


@register_estimator("sparsemixer-v2", "SparseMixer v2 (GRIN MoE): sampled top-1, Heun's third-order router gradient")
class SparseMixerV2(_SparseMixer):
    """SparseMixer v2 (``microsoft/SparseMixer``, ``sparsemixer/sparsemixer_v2.py``, used by GRIN MoE):
    z from the jitter-masked softmax p~; forward multiplier p~_z times 1 when z is the argmax or with
    probability 0.25 (``rand > 0.75``), else 0.3333 (Heun's third-order method); backward the
    gradient of p~_z itself (``v2core.backward``: g p~_z (onehot(z) - p~)). Top-2 of the reference
    weighs the second expert by its conditional probability, a weighting this suite's layer does not
    have, so top-1 only here."""

    coin = 0.25
    low_factor = 0.3333
    gradient_scale = 1.0


@register_estimator("reinmax-router", "ReinMax (Liu et al. 2023) on the sampled top-1 expert choice; every expert")
class ReinMaxRouter(RouterEstimator):
    """ReinMax's categorical estimator (``estimators.reinmax``) on the one-hot expert choice h ~
    softmax(logits) of top-1 sampled routing: y = sum_e h_e w_e f_e, the weight differentiated as the
    conventional router does. Its backward pass reads dL/dh_e of every expert: E evaluations. With
    renormalised weights (w = 1) it is exactly ``reinmax`` on the categorical unit h."""

    routings = "sampled"
    max_top_k = 1
    expert_evals = "E"
    domains = {"tau": STRICTLY_POSITIVE}

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.inner = ReinMax(tau)

    def surrogate(self, logits, loss_fn, layer):
        units = logits if logits.ndim >= 3 else logits.unsqueeze(-2)  # (*batch, units, E): the categorical layout
        with self.inner.drawing_from(self.rng):
            h = self.inner.sample_categorical(units).reshape(logits.shape)
        probs = torch.softmax(logits, -1)
        w = probs if layer.weights == "softmax" else torch.ones_like(probs)
        outputs = layer.experts(torch.ones(h.shape, dtype=torch.bool, device=h.device))
        return loss_fn(((h * w).unsqueeze(-1) * outputs).sum(-2))


@register_estimator("reinforce-router", "REINFORCE on the sampled routing (score of the routing + the weights' path)")
class ReinforceRouter(RouterEstimator):
    """The score-function estimator on sampled routing (the seed paper's Theorem 1 with the routing as
    the unit): d E[L] = E[dL/dtheta at the routing] + E[(L - b) d log P(routing)], the first term
    through the kept weights, the second with the routing's score; unbiased for any b that does not
    depend on the routing (here 0). Only the kept experts are evaluated."""

    routings = "sampled"
    unbiased = True
    loss_rounding = 1.0

    def baseline(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(losses)

    def observe(self, losses: torch.Tensor, score: torch.Tensor) -> None:
        """Update running statistics after the estimate (stateful subclasses)."""

    def surrogate(self, logits, loss_fn, layer):
        index, score = route(self.rng, logits, layer)
        probs = torch.softmax(logits, -1)
        mask = mask_of(index, logits.shape[-1]).bool()
        losses = loss_fn(combine(layer.experts(mask), index, kept_weights(probs, index, layer.weights)))
        signal = (losses.detach() - self.baseline(losses.detach())).unsqueeze(-1) * score
        if self.update_state:
            with torch.no_grad():
                self.observe(losses.detach(), score)
        return attach_gradient(losses, logits, signal)


@register_estimator("optimal-baseline-router",
                    "REINFORCE on the sampled routing with the seed paper's minimum-variance baseline (eq. 10)")
class OptimalBaselineRouter(ReinforceRouter):
    """REINFORCE on the routing with b = E[||s||^2 L] / E[||s||^2] (the seed paper's eq. 10, s the
    routing's score w.r.t. the logits), one baseline for the router (one unit shared by every routed
    example), both expectations running averages advanced once per call by ``decay`` and frozen while
    measured: unbiased, since b comes from earlier calls only."""

    stateful = True
    domains = {"decay": Interval(0, 1, closed="left")}

    def __init__(self, decay: float = 0.9):
        super().__init__()
        self.decay = decay
        self.register_buffer("numerator", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("denominator", torch.zeros(0, dtype=torch.float64))

    def baseline(self, losses):
        if self.numerator.numel() == 0 or float(self.denominator) <= 0:
            return torch.zeros_like(losses)
        return (self.numerator / self.denominator).to(losses.dtype).expand_as(losses)

    def observe(self, losses, score):
        weight = (score**2).sum(-1).to(torch.float64)
        num = (weight * losses.to(torch.float64)).mean().reshape(1)
        den = weight.mean().reshape(1)
        if self.numerator.numel() == 0:
            self.numerator, self.denominator = num, den
            return
        self.numerator.mul_(self.decay).add_((1 - self.decay) * num)
        self.denominator.mul_(self.decay).add_((1 - self.decay) * den)
