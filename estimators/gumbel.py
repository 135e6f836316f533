"""The Gumbel family for Bernoulli(sigm(a)) units: the binary Concrete relaxation, its
straight-through form and its Rao-Blackwellisation; each also serves categorical units
(``categorical=True``: logits (*batch, units, K), the Gumbel-max trick over the K categories).

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

import torch
import torch.nn.functional as F

from estimators import register_estimator
from estimators.base import LossFn, NoiseLaw, PathwiseEstimator
from estimators.domains import MAX_DRAWS, STRICTLY_POSITIVE, Count


def check_temperature(tau: float) -> float:
    """The relaxations' temperature as a float (its domain, ``STRICTLY_POSITIVE``, is declared by
    each class that takes one and checked before ``__init__`` runs)."""
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


def softmax_jacobian_term(probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Exactly zero in value, with derivative J(p) = diag(p) - p p' with respect to ``logits``
    along the last axis (the softmax Jacobian at probabilities p = ``probs``, held fixed): the
    categorical counterpart of slope (a - sg(a)). With x = a - sg(a), the term is
    p x - p <p, x>, so a vector g coming back becomes p g - p <p, g> = J(p) g. ``probs`` may carry
    extra leading axes (then average them away)."""
    x = logits - logits.detach()
    p = probs.detach()
    return p * x - p * (p * x).sum(-1, keepdim=True)


def tempered_softmax(perturbed: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(z / tau) over the last axis, shifted by the maximum first so that z / tau never
    overflows (the largest entry is 0, the others -inf at worst): finite for any tau > 0."""
    shifted = perturbed - perturbed.amax(-1, keepdim=True)
    return torch.softmax(shifted / tau, -1)


class CategoricalForm:
    """Mixin for an estimator that also serves categorical units: ``categorical=True`` routes to
    ``sample_categorical(logits)`` (logits (*batch, units, K) -> a one-hot or relaxed h of that
    shape); without it the binary path runs unchanged."""

    variables = "both"

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, categorical: bool = False) -> torch.Tensor:
        if categorical:
            a = logits.to(compute_dtype(logits.dtype))
            return loss_fn(self.sample_categorical(a).to(logits.dtype))
        return super().forward(logits, loss_fn)

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        """The binary count: one evaluation of the sample whatever K = ``categories``."""
        return super().loss_evaluations(units)

    def sample_categorical(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class _Relaxation(CategoricalForm, PathwiseEstimator):
    """Shared temperature parameter; every member is biased and draws continuous noise."""

    family = "relaxation"
    unbiased = False
    randomness = "continuous"
    domains = {"tau": STRICTLY_POSITIVE}

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

    Categorical form (Jang, Gu & Poole 2017, eq. 1): h = softmax((a + G) / tau), G i.i.d. standard
    Gumbel over the K categories; the derivative is the softmax's, J(h) / tau.
    """

    binary_forward = False

    def noise_laws(self, logits, categorical=False):
        """Logistic L per unit (categorical: a Gumbel per category); the relaxed h is smooth in it."""
        return (NoiseLaw("gumbel" if categorical else "logistic"),)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        perturbed = a.detach() + self.rng.logistic(a.shape, a)
        relaxed = torch.sigmoid(perturbed / self.tau)
        return straight_through(relaxed, a, relaxed_slope(perturbed, self.tau)).to(logits.dtype)

    def sample_categorical(self, logits: torch.Tensor) -> torch.Tensor:
        relaxed = tempered_softmax(logits.detach() + self.rng.gumbel(logits.shape, logits), self.tau)
        return relaxed + softmax_jacobian_term(relaxed, logits) / self.tau


@register_estimator("st-gumbel",
                    "Straight-through Gumbel: h = 1[a + L > 0] forward, gradient of sigm((a + L) / tau)")
class StraightThroughGumbel(_Relaxation):
    """ST-Gumbel-softmax (Jang, Gu & Poole 2017, sec. 2.2 "Straight-Through Gumbel-Softmax", two
    classes): the forward value is the exact sample h = 1[a + L > 0] ~ Bernoulli(sigm(a)), the
    backward pass differentiates the relaxed sample sigm((a + L) / tau), so dL/da := dL/dh k_tau(a + L).
    As tau -> 0 its mean on one unit tends to sigm'(a) (L'(0) + L'(1)) / 2 (the trapezoid rule for
    L(1) - L(0)): unbiased in that limit for quadratic losses only.

    Categorical form (ibid.): h = one_hot(argmax(a + G)) ~ Categorical(softmax(a)) forward, the
    derivative of softmax((a + G) / tau), J(softmax((a + G) / tau)) / tau, backward. With K = 2 and
    logits (0, a) it is the binary form with L = G_1 - G_0.
    """

    def noise_laws(self, logits, categorical=False):
        """Logistic L per unit, h = 1[a + L > 0] changing at L = -a; categorical: Gumbels G, h the
        argmax of a + G."""
        if categorical:
            return (NoiseLaw("gumbel", argmax_of=logits),)
        return (NoiseLaw("logistic", breaks=-logits[..., None]),)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        perturbed = a.detach() + self.rng.logistic(a.shape, a)
        hard = (perturbed > 0).to(a.dtype)
        return straight_through(hard, a, relaxed_slope(perturbed, self.tau)).to(logits.dtype)

    def sample_categorical(self, logits: torch.Tensor) -> torch.Tensor:
        perturbed = logits.detach() + self.rng.gumbel(logits.shape, logits)
        hard = F.one_hot(perturbed.argmax(-1), logits.shape[-1]).to(logits.dtype)
        return hard + softmax_jacobian_term(tempered_softmax(perturbed, self.tau), logits) / self.tau


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

    Categorical form (Paulus et al. 2021, sec. 3 and their ``conditional_gumbel``): D ~
    Categorical(softmax(a)), then K perturbed logits a + G_k drawn given argmax(a + G_k) = D by the
    top-down construction (:func:`conditional_gumbel`), and dL/da := (1/K) sum_k J(s_k) dL/dD / tau,
    s_k = softmax((a + G_k) / tau), with the G_k held fixed (no derivative through their
    construction, which depends on a). Here K counts conditional draws, not categories.
    """

    domains = {"K": Count(1, MAX_DRAWS)}

    def __init__(self, tau: float = 1.0, K: int = 10):
        super().__init__(tau)
        self.K = K

    def noise_laws(self, logits, categorical=False):
        """After the discrete h: K conditionally i.i.d. copies (uniforms v, categorical: Gumbels g)
        per unit, mapped to the noise given h smoothly, and averaged."""
        return (NoiseLaw("gumbel" if categorical else "uniform", lead=1, copies=True),)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        base = a.detach()
        hard = self.rng.bernoulli(torch.sigmoid(base))
        v = self.rng.uniform((self.K, *a.shape), a)
        perturbed = conditional_logistic(base, hard, v).add_(base)  # K x the batch: work in place
        slope = relaxed_slope(perturbed, self.tau, inplace=True).mean(0)
        return straight_through(hard, a, slope).to(logits.dtype)

    def sample_categorical(self, logits: torch.Tensor) -> torch.Tensor:
        base = logits.detach()
        hard = self.rng.categorical(torch.softmax(base, -1))
        perturbed = conditional_gumbel(base, hard, self.rng.gumbel((self.K, *base.shape), base))
        term = softmax_jacobian_term(tempered_softmax(perturbed, self.tau), logits).mean(0)
        return hard + term / self.tau


def conditional_gumbel(logits: torch.Tensor, hard: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Perturbed logits a + G, G standard Gumbel conditioned on argmax(a + G) = the one-hot
    ``hard``, from unconditioned standard Gumbels ``g`` (extra leading axes allowed).

    Top-down (Maddison, Tarlow & Minka 2014; Paulus et al. 2021, app.): the maximum of the
    perturbed logits is Gumbel with location log Z = logsumexp(a), and it is independent of the
    argmax, so the sampled class gets T = log Z + g_D; every other class is a Gumbel with location
    a_j truncated below T, -log(exp(-(a_j + g_j)) + exp(-T)) (exponentials E = exp(-g)). Computed
    with logaddexp: finite for finite logits.
    """
    top = torch.logsumexp(logits, -1, keepdim=True) + (hard * g).sum(-1, keepdim=True)
    others = -torch.logaddexp(-(logits + g), -top)
    return torch.where(hard > 0, top, others)
