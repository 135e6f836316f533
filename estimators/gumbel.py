"""The Gumbel family for Bernoulli(sigm(a)) units: the binary Concrete relaxation, its
straight-through form and its Rao-Blackwellisation.

Binary Gumbel-max: with logistic noise L = log U - log(1 - U) (the difference of two standard
Gumbels), h = 1[a + L > 0] is exactly Bernoulli(sigm(a)). The relaxed sample replaces the step by
sigm((a + L) / tau), whose derivative in a is k_tau(a + L) = sigm'((a + L) / tau) / tau.

Numerics: noise and relaxation are computed in float32 for float16/bfloat16 logits (then cast
back), so half-precision inputs keep a full-resolution noise distribution. Each estimator is
written as value + k (a - sg(a)) with the value and the derivative k computed explicitly (no
1 - sigm cancellation, no log(0), no 0 * inf), so the forward value is exact and values and
gradients stay finite for any tau > 0 and any finite logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from estimators import register_estimator
from estimators.base import PathwiseEstimator


def check_temperature(tau: float) -> float:
    """The relaxations' temperature: a finite number > 0 and not subnormal in float32 (a
    temperature below float32's smallest normal number underflows to 0 there: x / 0 is NaN)."""
    if not (math.isfinite(tau) and tau >= torch.finfo(torch.float32).tiny):
        raise ValueError(f"tau must be a finite number > 0 (at least {torch.finfo(torch.float32).tiny:.3g}), got {tau}")
    return float(tau)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision logits (noise and relaxations are computed there, then cast back),
    otherwise the logits' own dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def relaxed_slope(x: torch.Tensor, tau: float, inplace: bool = False) -> torch.Tensor:
    """k_tau(x) = d sigm(x / tau) / dx = sigm(x / tau) sigm(-x / tau) / tau: accurate in the tails
    (no 1 - sigm cancellation), 0 where it underflows, never NaN. ``inplace`` overwrites x."""
    y = x.div_(tau) if inplace else x / tau
    slope = torch.sigmoid(y)
    return slope.mul_(y.neg_().sigmoid_()).div_(tau)


def straight_through(value: torch.Tensor, logits: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """``value`` exactly (bit for bit), with derivative ``slope`` with respect to ``logits``
    elementwise: value + slope (a - sg(a)). The slope is capped at the dtype's largest finite
    number so that slope * 0 is 0 in the forward pass even at absurdly small temperatures."""
    slope = slope.detach().clamp(max=torch.finfo(slope.dtype).max)
    return value.detach() + slope * (logits - logits.detach())


class _Relaxation(PathwiseEstimator):
    """Shared temperature parameter; every member is biased and draws continuous noise."""

    unbiased = False
    randomness = "continuous"

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_temperature(tau)


@register_estimator("gumbel-softmax",
                    "Binary Concrete / Gumbel-softmax: h = sigm((a + L) / tau), L logistic; relaxed forward")
class GumbelSoftmax(_Relaxation):
    """The binary Concrete sample h = sigm((a + L) / tau), L ~ Logistic(0, 1) (Maddison, Mnih & Teh
    2017, the binary special case X = sigm((log alpha + L) / lambda); Jang, Gu & Poole 2017, the
    Gumbel-softmax y = softmax((log pi + g) / tau) with two classes). The loss sees the relaxed,
    non-binary h; back-propagation is exact for the relaxed loss. For a single unit and a smooth
    loss the bias vanishes as tau -> 0 (O(tau^2) for a linear loss) while the variance grows as 1/tau.
    """

    binary_forward = False

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        perturbed = a.detach() + self.rng.logistic(a.shape, a)
        relaxed = torch.sigmoid(perturbed / self.tau)
        return straight_through(relaxed, a, relaxed_slope(perturbed, self.tau)).to(logits.dtype)


@register_estimator("st-gumbel",
                    "Straight-through Gumbel: h = 1[a + L > 0] forward, gradient of sigm((a + L) / tau)")
class StraightThroughGumbel(_Relaxation):
    """ST-Gumbel-softmax (Jang, Gu & Poole 2017, sec. 2.2 "Straight-Through Gumbel-Softmax", two
    classes): the forward value is the exact sample h = 1[a + L > 0] ~ Bernoulli(sigm(a)), the
    backward pass differentiates the relaxed sample sigm((a + L) / tau), so dL/da := dL/dh k_tau(a + L).
    As tau -> 0 its mean on one unit tends to sigm'(a) (L'(0) + L'(1)) / 2 (the trapezoid rule for
    L(1) - L(0)): unbiased in that limit for quadratic losses only.
    """

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        perturbed = a.detach() + self.rng.logistic(a.shape, a)
        hard = (perturbed > 0).to(a.dtype)
        return straight_through(hard, a, relaxed_slope(perturbed, self.tau)).to(logits.dtype)


def conditional_logistic(logits: torch.Tensor, hard: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Logistic noise L conditioned on 1[a + L > 0] = hard, by inversion of uniforms ``v`` in [0, 1).

    Given h = 1, U = sigm(L) is uniform on (sigm(-a), 1): U = 1 - sigm(a) v, and
    L = logit(1 - sigm(a) v) = softplus(-a) - log v + log(sigm(-a) + sigm(a) (1 - v)): the last sum
    has no cancellation and is at least eps/2 once v is kept in [tiny, 1 - eps/2], so every term
    is finite. Given h = 0 the same holds for -L at -a (the logistic law is symmetric). ``v`` has
    the K draws on a leading axis.
    """
    info = torch.finfo(v.dtype)
    v = v.clamp(info.tiny, 1 - info.eps / 2)
    sign = 2 * hard - 1
    b = sign * logits
    tail = torch.sub(1, v).mul_(torch.sigmoid(b)).add_(torch.sigmoid(-b)).log_()
    return tail.sub_(v.log_()).add_(F.softplus(-b)).mul_(sign)


@register_estimator("gumbel-rao", "Gumbel-Rao (Paulus et al. 2021): ST-Gumbel, relaxed gradient averaged "
                                  "over K noises drawn given h")
class GumbelRao(_Relaxation):
    """Rao-Blackwellised ST-Gumbel (Paulus, Maddison & Krause 2021, the estimator
    dL/dD E[d softmax_tau(theta + G) / d theta | D], Monte Carlo over K conditional draws G_k | D).
    Binary form: h ~ Bernoulli(sigm(a)), then K logistic noises L_k drawn conditionally on
    1[a + L_k > 0] = h, and dL/da := dL/dh (1/K) sum_k k_tau(a + L_k). The loss is evaluated once.

    The derivative is the partial one in a with L_k held fixed, as in ST-Gumbel, so that by the
    tower property the mean equals ST-Gumbel's for every K and only the variance drops;
    differentiating through the reparameterised L_k | h as well would change the mean. K = 1 is
    ST-Gumbel in distribution. Memory and time grow with K (K x the batch in float32).
    """

    def __init__(self, tau: float = 1.0, K: int = 10):
        super().__init__(tau)
        if K < 1:
            raise ValueError(f"K must be at least 1, got {K}")
        self.K = K

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        base = a.detach()
        hard = self.rng.bernoulli(torch.sigmoid(base))
        v = self.rng.uniform((self.K, *a.shape), a)
        perturbed = conditional_logistic(base, hard, v).add_(base)  # K x the batch: work in place
        slope = relaxed_slope(perturbed, self.tau, inplace=True).mean(0)
        return straight_through(hard, a, slope).to(logits.dtype)
