"""Relaxation and straight-through variants: gumbel-softmax, st-gumbel, gumbel-rao, gapped-st,
reinmax, slope-annealed-st.

(a) exact values by recorded or replayed noise against hand computations; (b) Gumbel-Rao against
the conditional expectation of the relaxed gradient, by quadrature; (c) every estimator's bias and
variance on a one-unit toy, by quadrature or closed form, against the harness's Monte Carlo and
exact figures, and the limits in the temperature that the derivations predict; (d) parameter
errors, extreme temperatures and logits, half precision.

On one unit with z = a + L, L ~ Logistic(0, 1), the relaxed slope k_tau(z) = sigm'(z / tau) / tau is
the density of Logistic(0, tau), so every mean below is an integral of two logistic densities.
Statistical tests run at fixed seeds; each states its false-alarm rate at a random seed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

import problems
from bench.harness import make_config, run
from estimators import build_estimator
from estimators.base import Noise, NotEnumerable, ReplayNoise, all_configurations
from estimators.registry import RegistryError

F64 = torch.float64
NAMES = ["gumbel-softmax", "st-gumbel", "gumbel-rao", "gapped-st", "reinmax", "slope-annealed-st"]
TEMPERED = ["gumbel-softmax", "st-gumbel", "gumbel-rao", "gapped-st", "reinmax"]
BINARY = [name for name in NAMES if name != "gumbel-softmax"]


# =============================================================================================
# helpers
# =============================================================================================

def seeded(estimator, seed: int = 0):
    """``with seeded(estimator, seed) as est:`` -- est draws from a generator seeded with ``seed``."""
    return estimator.drawing_from(Noise(torch.Generator().manual_seed(seed)))


def make(name: str, seed: int = 0, **params):
    """``with make(name, seed, **params) as est:`` -- a built estimator drawing from ``seed``."""
    return seeded(build_estimator(name, params), seed)


def estimate(estimator, logits, loss_fn):
    """(surrogate value, gradient w.r.t. logits) of one call."""
    logits = logits.detach().clone().requires_grad_(True)
    surrogate = estimator(logits, loss_fn)
    (grad,) = torch.autograd.grad(surrogate.sum(), logits)
    return surrogate.detach(), grad


class RecordingNoise(Noise):
    """Seeded noise from its own generator that records every draw, by kind."""

    def __init__(self, seed: int = 0):
        super().__init__(torch.Generator().manual_seed(seed))
        self.draws: list[tuple[str, torch.Tensor]] = []

    def _record(self, kind, value):
        self.draws.append((kind, value.clone()))
        return value

    def uniform(self, shape, like):
        return self._record("uniform", torch.rand(tuple(shape), generator=self.generator, dtype=like.dtype))

    def logistic(self, shape, like):
        u = torch.rand(tuple(shape), generator=self.generator, dtype=like.dtype).clamp(1e-12, 1 - 1e-12)
        return self._record("logistic", torch.log(u) - torch.log1p(-u))

    def bernoulli(self, probs, shape=None):
        shape = probs.shape if shape is None else torch.Size(shape)
        u = torch.rand(tuple(shape), generator=self.generator, dtype=probs.dtype)
        return self._record("bernoulli", (u < probs).to(probs.dtype))

    def kinds(self):
        return [kind for kind, _ in self.draws]


UNITS = 3


@pytest.fixture
def quad():
    return problems.build_problem("bernoulli-quadratic", {"d": UNITS, "data_seed": 1}).to(F64)


def dloss_dh(problem, h):
    """dL/dh of L(h) = h'Ah + b'h, by hand: (A + A') h + b."""
    return h @ (problem.A + problem.A.T) + problem.b


def random_logits(*shape, seed=0, scale=1.5):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def slope_by_hand(x, tau):
    """k_tau(x) = d sigm(x / tau) / dx, written the textbook way (sigm (1 - sigm) / tau)."""
    s = torch.sigmoid(x / tau)
    return s * (1 - s) / tau


def log_prob_of(bits, probs):
    return (bits * torch.log(probs) + (1 - bits) * torch.log1p(-probs)).sum(-1)


def metrics_of(config) -> dict:
    result = run(config)
    assert result.status == "finished", result.error
    return {m.name: m for m in result.metrics if getattr(m, "scope", "all") == "all"}


# =============================================================================================
# (a) exact values by recorded or replayed noise
# =============================================================================================

def test_gumbel_softmax_by_recorded_noise(quad):
    tau = 0.6
    logits = random_logits(6, UNITS)
    est = build_estimator("gumbel-softmax", {"tau": tau})
    noise = RecordingNoise(1)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["logistic"]
    z = logits + noise.draws[0][1]
    h = torch.sigmoid(z / tau)
    torch.testing.assert_close(value, quad.loss(h), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, dloss_dh(quad, h) * slope_by_hand(z, tau), rtol=0, atol=1e-12)


def test_st_gumbel_by_recorded_noise(quad):
    tau = 0.6
    logits = random_logits(6, UNITS)
    est = build_estimator("st-gumbel", {"tau": tau})
    noise = RecordingNoise(2)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["logistic"]
    z = logits + noise.draws[0][1]
    h = (z > 0).to(F64)
    torch.testing.assert_close(value, quad.loss(h), rtol=0, atol=0)
    torch.testing.assert_close(grad, dloss_dh(quad, h) * slope_by_hand(z, tau), rtol=0, atol=1e-12)


def test_gumbel_rao_by_recorded_noise(quad):
    # h ~ Bernoulli(p) first; then each L_k is the logistic quantile of a uniform restricted to the
    # side h fixes: U = 1 - p v when h = 1 (U in (1 - p, 1)), U = (1 - p) v when h = 0.
    tau, K = 0.6, 5
    logits = random_logits(40, UNITS, seed=3)
    est = build_estimator("gumbel-rao", {"tau": tau, "K": K})
    noise = RecordingNoise(3)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["bernoulli", "uniform"]
    h, v = noise.draws[0][1], noise.draws[1][1]
    assert v.shape == (K, 40, UNITS)
    assert 0 < float(h.mean()) < 1
    p = torch.sigmoid(logits)
    noise_k = torch.where(h > 0, torch.logit(1 - p * v), torch.logit((1 - p) * v))
    z = logits + noise_k
    assert torch.equal((z > 0).to(F64), h.expand_as(z))  # every draw agrees with the sampled h
    torch.testing.assert_close(value, quad.loss(h), rtol=0, atol=0)
    expected = dloss_dh(quad, h) * slope_by_hand(z, tau).mean(0)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


def replayed(name, params, problem, logits):
    """One estimate per configuration of the units' bits, replayed."""
    configs = all_configurations(UNITS, F64)
    est = build_estimator(name, params)
    replay = ReplayNoise(configs)
    with est.drawing_from(replay):
        value, grad = estimate(est, logits, problem.loss)
    assert replay.offset == UNITS
    return configs, value, grad, replay


@pytest.mark.parametrize("tau, gap", [(1.0, 1.0), (0.6, 0.7), (2.0, 0.0)],
                         ids=["defaults", "tau0.6-gap0.7", "no-gap"])
def test_gapped_st_by_replay(quad, tau, gap):
    # the two-class perturbed logit difference: max(a, gap) when h = 1, min(a, -gap) when h = 0
    logits = random_logits(8, UNITS, seed=4, scale=2.0)
    h, value, grad, replay = replayed("gapped-st", {"tau": tau, "gap": gap}, quad, logits)
    z = torch.where(h > 0, torch.maximum(logits, torch.tensor(gap, dtype=F64)),
                    torch.minimum(logits, torch.tensor(-gap, dtype=F64)))
    torch.testing.assert_close(value, quad.loss(h), rtol=0, atol=0)
    torch.testing.assert_close(grad, dloss_dh(quad, h) * slope_by_hand(z, tau), rtol=0, atol=1e-12)
    torch.testing.assert_close(replay.log_prob, log_prob_of(h, torch.sigmoid(logits)), rtol=0, atol=1e-12)


def _gst_perturbed_logits(logits2, onehot, gap):
    """The authors' ``gst_mover`` perturbation on explicit class logits (classes on the last axis):
    the sampled class is moved up to the largest logit and every other one down to at most
    max - gap; the shift is held fixed (stop-gradient)."""
    fixed = logits2.detach()
    max_logits = fixed.gather(-1, fixed.argmax(-1, keepdim=True))
    move = (max_logits - fixed) * onehot
    move2 = (fixed - max_logits + gap).clamp(min=0.0) * (1 - onehot)
    return logits2 + (move - move2)


def test_gapped_st_binary_form_matches_the_two_class_algorithm(quad):
    # two classes with logits (a, 0) and D = (h, 1 - h): GST back-propagates dL/dD_1 through
    # softmax_tau(theta + m)_1 with m held fixed; its derivative in a is the binary form's slope
    tau, gap = 0.8, 1.3
    logits = random_logits(8, UNITS, seed=5, scale=2.0)
    h, _, grad, _ = replayed("gapped-st", {"tau": tau, "gap": gap}, quad, logits)
    theta = torch.stack([logits, torch.zeros_like(logits)], -1).requires_grad_(True)
    onehot = torch.stack([h, 1 - h], -1)
    perturbed = _gst_perturbed_logits(theta, onehot, gap)
    chosen = (perturbed * onehot).sum(-1)
    other = (perturbed * (1 - onehot)).sum(-1)
    assert (chosen - other >= gap - 1e-12).all()  # consistency and the strict gap
    relaxed = torch.softmax(perturbed / tau, -1)
    (slope,) = torch.autograd.grad(relaxed[..., 0].sum(), theta)
    torch.testing.assert_close(grad, dloss_dh(quad, h) * slope[..., 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.5])
def test_reinmax_by_replay(quad, tau):
    logits = random_logits(8, UNITS, seed=6, scale=2.0)
    h, value, grad, replay = replayed("reinmax", {"tau": tau}, quad, logits)
    p = torch.sigmoid(logits)
    q = (h + torch.sigmoid(logits / tau)) / 2
    coefficient = 2 * q * (1 - q) - p * (1 - p) / 2
    if tau == 1.0:  # derived: (1 - p) / 2 when h = 1, p / 2 when h = 0
        torch.testing.assert_close(coefficient, torch.where(h > 0, (1 - p) / 2, p / 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(value, quad.loss(h), rtol=0, atol=0)
    torch.testing.assert_close(grad, dloss_dh(quad, h) * coefficient, rtol=0, atol=1e-12)
    torch.testing.assert_close(replay.log_prob, log_prob_of(h, p), rtol=0, atol=1e-12)


def test_reinmax_binary_form_matches_the_two_class_algorithm(quad):
    # ReinMax on class logits (a, 0): grad_theta = 2 J(pi_1) g - J(pi_0) g / 2 with J(pi) = diag(pi) - pi pi',
    # pi_0 = softmax(theta), pi_1 = (D + softmax(theta / tau)) / 2, g = dL/dD = (dL/dh, 0)
    tau = 1.7
    logits = random_logits(8, UNITS, seed=7, scale=2.0)
    h, _, grad, _ = replayed("reinmax", {"tau": tau}, quad, logits)
    theta = torch.stack([logits, torch.zeros_like(logits)], -1)
    D = torch.stack([h, 1 - h], -1)
    pi0 = torch.softmax(theta, -1)
    pi1 = (D + torch.softmax(theta / tau, -1)) / 2
    g = torch.stack([dloss_dh(quad, h), torch.zeros_like(h)], -1)

    def jvp(pi, g):
        return pi * g - pi * (pi * g).sum(-1, keepdim=True)

    two_class = 2 * jvp(pi1, g) - jvp(pi0, g) / 2
    torch.testing.assert_close(grad, two_class[..., 0], rtol=0, atol=1e-12)


def test_slope_annealed_st_by_replay_follows_the_schedule(quad):
    # s_t = min(max_slope, slope + growth t), t = calls made while update_state is True
    slope, growth, max_slope = 2.0, 0.5, 3.0
    logits = random_logits(8, UNITS, seed=8)
    configs = all_configurations(UNITS, F64)
    est = build_estimator("slope-annealed-st", {"slope": slope, "growth": growth, "max_slope": max_slope})
    for call, expected_slope, frozen in [(0, 2.0, False), (1, 2.5, True), (1, 2.5, False), (2, 3.0, False),
                                         (3, 3.0, False)]:
        assert int(est.steps) == call
        replay = ReplayNoise(configs)
        with est.drawing_from(replay):
            if frozen:
                with est.frozen():
                    value, grad = estimate(est, logits, quad.loss)
            else:
                value, grad = estimate(est, logits, quad.loss)
        s = expected_slope
        ps = torch.sigmoid(s * logits)
        torch.testing.assert_close(value, quad.loss(configs), rtol=0, atol=0)
        torch.testing.assert_close(grad, dloss_dh(quad, configs) * s * ps * (1 - ps), rtol=0, atol=1e-12)
        torch.testing.assert_close(replay.log_prob, log_prob_of(configs, ps), rtol=0, atol=1e-12)
    assert int(est.steps) == 4 and "steps" in est.state_dict()


def test_slope_annealed_st_counts_steps_per_layer():
    # a stacked model uses estimator.layer(i): each layer's slope follows its own calls, frozen or not
    with make("slope-annealed-st", seed=0, slope=1.0, growth=0.25) as est:
        logits = torch.zeros(4, 2, dtype=F64)
        est.layer(1)  # layer copies are made on first use, from the state at that time
        for _ in range(3):
            est.layer(0).sample(logits)
        est.layer(1).sample(logits)
        with est.frozen():
            est.layer(1).sample(logits)
        assert est.layer(0).current_slope == 1.75 and est.layer(1).current_slope == 1.25


def test_slope_annealed_st_at_slope_one_is_straight_through_sigmoid(quad):
    logits = random_logits(8, UNITS, seed=9)
    configs = all_configurations(UNITS, F64)
    results = []
    for name, params in [("slope-annealed-st", {"slope": 1.0, "growth": 0.0}), ("straight-through-sigmoid", {})]:
        est = build_estimator(name, params)
        with est.drawing_from(ReplayNoise(configs)):
            results.append(estimate(est, logits, quad.loss))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=1e-15)


def test_declared_randomness_matches_what_is_drawn():
    # binary Gumbel family: continuous noise (no enumeration); the three ST variants only draw
    # Bernoulli bits, so the harness's exact moments apply to them
    expected = {"gumbel-softmax": "continuous", "st-gumbel": "continuous", "gumbel-rao": "continuous",
                "gapped-st": "bernoulli", "reinmax": "bernoulli", "slope-annealed-st": "bernoulli"}
    for name in NAMES:
        est = build_estimator(name)
        assert est.randomness == expected[name], name
        assert est.unbiased is False and est.needs_loss_backprop is True and est.loss_evaluations(5) == 1
        assert est.binary_forward == (name in BINARY)
        assert est.stateful == (name == "slope-annealed-st")
        with est.drawing_from(ReplayNoise(torch.zeros(4, 64, dtype=F64))):
            if est.randomness == "continuous":
                with pytest.raises(NotEnumerable):
                    est(torch.zeros(4, 3, dtype=F64), lambda h: h.sum(-1))


# =============================================================================================
# quadrature on one unit: z = a + L ~ Logistic(a, 1), k_tau(z) = Logistic(0, tau) density
# =============================================================================================

def f(z, a):
    return scipy.stats.logistic.pdf(z, loc=a)


def k(z, tau):
    return scipy.stats.logistic.pdf(z, scale=tau)


def half_line(g, tau, side):
    """Integral of g(z) over side * z > 0, in u = |z| / tau so the kernel's scale is 1."""
    value, _ = scipy.integrate.quad(lambda u: g(side * tau * u) * tau, 0, np.inf, epsabs=0, epsrel=1e-10,
                                    limit=400)
    return value


SIDES = ((1, 1.0), (0, -1.0))  # (h, sign of z)


def st_gumbel_moments(a, tau, dL):
    """E[G], E[G^2] of G = L'(h) k_tau(z), h = 1[z > 0] (ST-Gumbel on one unit)."""
    m1 = sum(dL(h) * half_line(lambda z: f(z, a) * k(z, tau), tau, s) for h, s in SIDES)
    m2 = sum(dL(h) ** 2 * half_line(lambda z: f(z, a) * k(z, tau) ** 2, tau, s) for h, s in SIDES)
    return m1, m2


def conditional_moments(a, tau, h):
    """E[k_tau(z) | h] and E[k_tau(z)^2 | h]."""
    side = 1.0 if h else -1.0
    prob = scipy.special.expit(side * a)
    return (half_line(lambda z: f(z, a) * k(z, tau), tau, side) / prob,
            half_line(lambda z: f(z, a) * k(z, tau) ** 2, tau, side) / prob)


def gumbel_rao_moments(a, tau, K, dL):
    """E[G], E[G^2] of G = L'(h) (1/K) sum_k k_tau(z_k), z_k | h i.i.d.: the mean is ST-Gumbel's,
    the conditional variance is divided by K."""
    m1 = m2 = 0.0
    for h, side in SIDES:
        prob = scipy.special.expit(side * a)
        mean, second = conditional_moments(a, tau, h)
        m1 += prob * dL(h) * mean
        m2 += prob * dL(h) ** 2 * (mean**2 + (second - mean**2) / K)
    return m1, m2


def gumbel_softmax_moments(a, tau, dL):
    """E[G], E[G^2] of G = L'(sigm(z / tau)) k_tau(z) (relaxed forward)."""
    def g1(z):
        return f(z, a) * dL(scipy.special.expit(z / tau)) * k(z, tau)

    def g2(z):
        return f(z, a) * (dL(scipy.special.expit(z / tau)) * k(z, tau)) ** 2

    return (sum(half_line(g1, tau, s) for _, s in SIDES), sum(half_line(g2, tau, s) for _, s in SIDES))


def discrete_moments(a, dL, coefficient, prob):
    """E[G], E[G^2] of G = L'(h) c(h), h ~ Bernoulli(prob)."""
    m1 = prob * dL(1) * coefficient(1) + (1 - prob) * dL(0) * coefficient(0)
    m2 = prob * (dL(1) * coefficient(1)) ** 2 + (1 - prob) * (dL(0) * coefficient(0)) ** 2
    return m1, m2


def dsigm(x):
    return scipy.special.expit(x) * scipy.special.expit(-x)


def gapped_st_moments(a, dL, tau, gap):
    def coefficient(h):
        return float(k(max(a, gap) if h else min(a, -gap), tau))

    return discrete_moments(a, dL, coefficient, scipy.special.expit(a))


def reinmax_moments(a, dL, tau):
    p = scipy.special.expit(a)

    def coefficient(h):
        q = (h + scipy.special.expit(a / tau)) / 2
        return 2 * q * (1 - q) - p * (1 - p) / 2

    return discrete_moments(a, dL, coefficient, p)


def slope_annealed_moments(a, dL, slope):
    return discrete_moments(a, dL, lambda h: slope * dsigm(slope * a), scipy.special.expit(slope * a))


# =============================================================================================
# (b) Gumbel-Rao: the conditional expectation and the variance reduction
# =============================================================================================

@pytest.mark.parametrize("a, tau", [(-1.2, 0.3), (0.4, 1.0)], ids=["a-1.2-tau0.3", "a0.4-tau1"])
def test_gumbel_rao_large_K_is_the_conditional_expectation(a, tau):
    # With a linear loss, grad / c is (1/K) sum_k k_tau(z_k) for z_k | h: with K = 20000 each row is
    # the quadrature value E[k_tau(z) | h] within sqrt(Var / K) < 2% of it. |z| < 5 on every one of
    # the 64 rows: false alarm ~4e-5 at a random seed.
    K, rows, c = 20_000, 64, 2.5
    with make("gumbel-rao", seed=11, tau=tau, K=K) as est:
        value, grad = estimate(est, torch.full((rows, 1), a, dtype=F64), lambda h: c * h.sum(-1))
    h = value / c
    means, sds = {}, {}
    for bit in (1, 0):
        mean, second = conditional_moments(a, tau, bit)
        means[bit], sds[bit] = mean, math.sqrt((second - mean**2) / K)
        assert sds[bit] < 0.02 * mean
        chosen = h == bit
        assert chosen.any()
        z = (grad[chosen, 0] / c - mean) / sds[bit]
        assert float(z.abs().max()) < 5
    # the test resolves the conditioning: the two conditional means are > 10 sd apart
    assert abs(means[1] - means[0]) > 10 * max(sds.values())


TARGET = {"d": 1, "t": 0.2, "logit": 0.7}  # one unit, L = (h - 0.2)^2, L'(h) = 2 (h - 0.2)
A = float(torch.tensor(TARGET["logit"], dtype=torch.float32))  # the logit as the float32 problem holds it


def target_dL(h):
    return 2 * (h - TARGET["t"])


def target_gradient():
    return (1 - 2 * TARGET["t"]) * dsigm(A)


def test_gumbel_rao_variance_is_below_st_gumbel_and_matches_monte_carlo():
    # exact variances by quadrature (GR with K = 1 is ST-Gumbel exactly); the harness's Monte Carlo
    # variance must match each within 4 jackknife standard errors (false alarm ~4e-4 per check)
    a, tau = A, 0.5
    st = st_gumbel_moments(a, tau, target_dL)
    gr1 = gumbel_rao_moments(a, tau, 1, target_dL)
    gr8 = gumbel_rao_moments(a, tau, 8, target_dL)
    assert gr1 == pytest.approx(st, rel=1e-9)
    assert gr8[0] == pytest.approx(st[0], rel=1e-12)  # same mean for every K
    var = {"st": st[1] - st[0] ** 2, "gr8": gr8[1] - gr8[0] ** 2}
    assert var["gr8"] < 0.8 * var["st"]
    for key, (name, params) in {"st": ("st-gumbel", {"tau": tau}),
                                "gr8": ("gumbel-rao", {"tau": tau, "K": 8})}.items():
        m = metrics_of(make_config(name, params, "bernoulli-target", TARGET, seed=3, samples=100_000, warmup=16))
        assert abs(m["variance"].value - var[key]) < 4 * m["variance"].stderr, key


# =============================================================================================
# (c) bias measured on one unit: hand/quadrature mean against the harness
# =============================================================================================

BIAS_CASES = [
    ("gumbel-softmax", {"tau": 0.5}, lambda: gumbel_softmax_moments(A, 0.5, target_dL)),
    ("st-gumbel", {"tau": 0.5}, lambda: st_gumbel_moments(A, 0.5, target_dL)),
    ("gumbel-rao", {"tau": 0.5, "K": 4}, lambda: gumbel_rao_moments(A, 0.5, 4, target_dL)),
    ("gapped-st", {}, lambda: gapped_st_moments(A, target_dL, 1.0, 1.0)),
    ("gapped-st", {"tau": 0.5, "gap": 0.3}, lambda: gapped_st_moments(A, target_dL, 0.5, 0.3)),
    ("reinmax", {"tau": 2.0}, lambda: reinmax_moments(A, target_dL, 2.0)),
    ("slope-annealed-st", {"slope": 2.0, "growth": 0.0}, lambda: slope_annealed_moments(A, target_dL, 2.0)),
]


@pytest.mark.parametrize("name, params, moments", BIAS_CASES,
                         ids=[f"{n}({','.join(f'{k}={v}' for k, v in p.items())})" for n, p, _ in BIAS_CASES])
def test_bias_and_variance_on_one_unit_match_the_harness(name, params, moments):
    # The bias is a property of the estimator, reported by the harness: its Monte Carlo bias and
    # variance must agree with the hand/quadrature values within 4 standard errors (false alarm
    # ~4e-4 per comparison), and its exact figures to 1e-9 where it enumerates, 1e-7 where it integrates.
    mean, second = moments()
    bias, variance = abs(mean - target_gradient()), second - mean**2
    assert bias > 0.005  # biased here, and by a measurable amount
    m = metrics_of(make_config(name, params, "bernoulli-target", TARGET, seed=5, samples=100_000, warmup=16))
    assert abs(m["bias_norm"].value - bias) < 4 * m["bias_norm"].stderr
    assert abs(m["variance"].value - variance) < 4 * m["variance"].stderr
    assert m["unbiased_pvalue"].value < 1e-6
    # enumerated, or integrated over the continuous noise (to the quadrature's 1e-8 tolerance)
    assert m["exact_bias_norm"].value == pytest.approx(bias, rel=1e-9 if build_estimator(name, params).enumerable
                                                       else 1e-7)
    assert m["exact_variance"].value == pytest.approx(variance, rel=1e-9 if build_estimator(name, params).enumerable
                                                      else 1e-7)


@pytest.mark.parametrize("problem, params", [("bernoulli-quadratic", {"d": 4}),
                                             ("bernoulli-target", {"d": 3, "logit": 0.8})],
                         ids=["quadratic-d4", "target-d3"])
def test_reinmax_at_tau_one_is_exact_for_quadratic_losses(problem, params):
    # derived: E = sigm'(a) (L'(0) + L'(1)) / 2 per unit, the trapezoid rule, exact when L is
    # quadratic in each unit (by enumeration: zero up to rounding); not exact on the tanh MLP
    exact = metrics_of(make_config("reinmax", {}, problem, params, seed=0, samples=2_000, warmup=16))
    assert exact["exact_bias_norm"].value < 1e-12
    other = metrics_of(make_config("reinmax", {}, "bernoulli-blackbox", {"d": 3, "hidden": 16}, seed=0,
                                   samples=2_000, warmup=16))
    assert other["exact_bias_norm"].value > 0.01
    # and at tau != 1 the quadratic case is biased
    biased = metrics_of(make_config("reinmax", {"tau": 3.0}, problem, params, seed=0, samples=2_000, warmup=16))
    assert biased["exact_bias_norm"].value > 1e-3


def test_linear_loss_bias_vanishes_as_tau_squared():
    # L = c h on one unit: E[c k_tau(a + L)] = c (f * k_tau)(a) = c [f(a) + (pi^2 tau^2 / 6) f''(a) + O(tau^4)]
    # (f the logistic density, variance of Logistic(0, tau) = pi^2 tau^2 / 3), so bias / tau^2 ->
    # c pi^2 / 6 sigm'''(a) for gumbel-softmax and st-gumbel alike (identical when L' is constant),
    # while the variance grows as c^2 sigm'(a) / (6 tau) (the integral of the logistic density squared is 1/6).
    a, c = A, 1.3
    s = scipy.special.expit(a)
    third = dsigm(a) * (1 - 6 * s + 6 * s * s)
    previous = math.inf
    for tau in (0.2, 0.05, 0.01):
        mean, second = st_gumbel_moments(a, tau, lambda h: c)
        relaxed = gumbel_softmax_moments(a, tau, lambda h: c)
        assert relaxed == pytest.approx((mean, second), rel=1e-8)
        bias = mean - c * dsigm(a)
        assert abs(bias) < previous
        previous = abs(bias)
    assert bias / tau**2 == pytest.approx(c * math.pi**2 / 6 * third, rel=1e-3)
    assert (second - mean**2) * tau == pytest.approx(c**2 * dsigm(a) / 6, rel=0.02)


def test_small_tau_limits_on_a_cubic_loss():
    # L = h^3: L(1) - L(0) = 1 but (L'(0) + L'(1)) / 2 = 1.5. As tau -> 0 gumbel-softmax's relaxed
    # path integrates L' exactly (bias -> 0, here O(tau)); st-gumbel's mean tends to the trapezoid
    # sigm'(a) 1.5, which is exactly reinmax's mean at tau = 1: a bias that no temperature removes.
    a = A
    truth = dsigm(a)

    def dL(h):
        return 3 * h * h

    relaxed, hard = [], []
    for tau in (0.05, 0.005):
        relaxed.append(gumbel_softmax_moments(a, tau, dL)[0] / truth - 1)
        hard.append(st_gumbel_moments(a, tau, dL)[0] / truth)
    assert 0 < relaxed[1] < relaxed[0] and relaxed[1] < 5e-3
    assert abs(hard[1] - 1.5) < abs(hard[0] - 1.5) and hard[1] == pytest.approx(1.5, abs=5e-3)
    assert reinmax_moments(a, dL, 1.0)[0] == pytest.approx(1.5 * truth, rel=1e-12)


def test_gumbel_softmax_variance_grows_as_one_over_tau():
    # tau Var -> sigm'(a) int L'(sigm(u))^2 sigm'(u)^2 du for a smooth L (here L = (h - t)^2)
    a = A
    limit = dsigm(a) * scipy.integrate.quad(
        lambda u: (target_dL(scipy.special.expit(u)) * dsigm(u)) ** 2, -np.inf, np.inf, epsrel=1e-10)[0]
    scaled = []
    for tau in (0.05, 0.005):
        mean, second = gumbel_softmax_moments(a, tau, target_dL)
        scaled.append((second - mean**2) * tau)
    assert abs(scaled[1] - limit) < abs(scaled[0] - limit)
    assert scaled[1] == pytest.approx(limit, rel=0.01)


# =============================================================================================
# (d) parameter errors, extreme values, low precision
# =============================================================================================

BAD = ([(name, {"tau": tau}, "tau must be a finite number") for name in TEMPERED
        for tau in (0.0, -1.0, float("nan"), float("inf"))]
       + [("gumbel-rao", {"K": 0}, "K must be at least 1"), ("gumbel-rao", {"K": 2.5}, "K must be an integer"),
          ("gapped-st", {"gap": -0.5}, "gap must be a finite number >= 0"),
          ("slope-annealed-st", {"slope": 0.0}, "slope must be a finite number > 0"),
          ("slope-annealed-st", {"growth": -1.0}, "growth must be a finite number >= 0"),
          ("slope-annealed-st", {"slope": 3.0, "max_slope": 2.0}, "max_slope must be finite and >= slope")])


@pytest.mark.parametrize("name, params, fragment", BAD,
                         ids=[f"{n}({','.join(f'{k}={v}' for k, v in p.items())})" for n, p, _ in BAD])
def test_bad_parameters_are_one_line_errors(name, params, fragment):
    with pytest.raises(RegistryError) as info:
        build_estimator(name, params)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert fragment in message and name in message and "\n" not in message


EXTREME_LOGITS = torch.tensor([[-50.0, -20.0, -1e-6, 0.0, 1e-6, 20.0, 50.0]])
EXTREME_SETTINGS = [(name, {"tau": tau}) for name in TEMPERED for tau in (1e-4, 1e4)] + [
    ("slope-annealed-st", {"slope": 1e-4, "growth": 0.0}), ("slope-annealed-st", {"slope": 1e4, "max_slope": 1e4})]


class EdgeNoise(Noise):
    """Uniforms at the ends of [0, 1): 0 and the largest float below 1, alternating; bits as usual."""

    def uniform(self, shape, like):
        below_one = 1 - torch.finfo(like.dtype).eps / 2
        flat = (torch.arange(math.prod(shape), dtype=like.dtype) % 2) * below_one
        return flat.reshape(tuple(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("noise", ["seeded", "edge"])
@pytest.mark.parametrize("name, params", EXTREME_SETTINGS,
                         ids=[f"{n}({','.join(f'{k}={v:g}' for k, v in p.items())})" for n, p in EXTREME_SETTINGS])
def test_extreme_temperatures_and_logits_stay_finite(name, params, noise, dtype):
    est = build_estimator(name, params)
    logits = EXTREME_LOGITS.to(dtype).expand(64, -1)
    seen = []

    def loss(h):
        seen.append(h.detach())
        return ((h - 0.3) ** 2).sum(-1)

    with est.drawing_from((Noise if noise == "seeded" else EdgeNoise)(torch.Generator().manual_seed(0))):
        value, grad = estimate(est, logits, loss)
    h = seen[0]
    assert torch.isfinite(value).all() and torch.isfinite(grad).all() and torch.isfinite(h).all()
    assert h.dtype == dtype and grad.dtype == dtype
    if est.binary_forward:
        assert ((h == 0) | (h == 1)).all()
    else:
        assert ((h >= 0) & (h <= 1)).all()
    # a unit at logit +-50 is (numerically) certain, whatever the noise
    if noise == "seeded" and name != "slope-annealed-st":
        assert (h[:, -1] > 0.5).all() and (h[:, 0] < 0.5).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_matches_float32_on_the_same_noise(name, dtype):
    # noise and relaxation are computed in float32 and cast back: with the same seed the half-
    # precision value and gradient are the float32 ones rounded (a linear loss keeps dL/dh exact)
    logits = torch.cat([random_logits(200, 5, seed=12, scale=3.0), torch.tensor([[-50.0, -8.0, 0.0, 8.0, 50.0]],
                                                                               dtype=F64)]).to(dtype)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -0.25])
    params = {"tau": 1e-4} if name in TEMPERED else {}
    with make(name, seed=13, **params) as low:
        value, grad = estimate(low, logits, lambda h: (h * weights.to(h.dtype)).sum(-1))
    assert value.dtype == dtype and grad.dtype == dtype
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    with make(name, seed=13, **params) as full:
        value32, grad32 = estimate(full, logits.to(torch.float32), lambda h: (h * weights).sum(-1))
    torch.testing.assert_close(grad, grad32.to(dtype), rtol=0, atol=0)
    tolerance = {torch.float16: 1e-2, torch.bfloat16: 8e-2}[dtype]  # the loss summed in half precision
    torch.testing.assert_close(value.to(torch.float32), value32, rtol=tolerance, atol=tolerance)
