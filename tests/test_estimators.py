"""Estimator layer: exact values by replay, unbiasedness and variance against enumeration, traits,
parameter validation, the paper's propositions and batch shapes.

Statistical tests run at fixed seeds, so they are deterministic; each states the false-alarm rate it
would have at a random seed, which is what the thresholds were chosen for.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import scipy.stats
import torch

import estimators
import problems
from bench.harness import exact_estimator_moments, make_config, run
from bench.quadrature import QUADRATURE_TOLERANCE
from estimators import ESTIMATORS, build_estimator
from estimators.base import (FAMILY_ORDER, OTHER_FAMILY, Noise, NotEnumerable, ReplayNoise, all_configurations,
                             attach_gradient)
from estimators.registry import RegistryError

F64 = torch.float64
NAMES = estimators.unit_estimator_names()  # layers of units (sequence estimators: tests/test_sequence.py)
TOY_PROBLEMS = [entry.name for entry in problems.PROBLEMS.entries()  # the Bernoulli toys, plugins' too
                if issubclass(entry.cls, problems.BernoulliProblem)]

# every registered estimator at its defaults, plus non-default instances that change behaviour
INSTANCES = [(name, {}) for name in NAMES] + [
    ("reinforce-loo", {"K": 2}),
    ("sts", {"beta_noise": 40.1}),
    ("noisy-rectifier", {"noise": "logistic"}),
    ("noisy-rectifier", {"target_rate": 0.2}),
    ("nvil", {"normalise": True}),
]


def spec_id(spec) -> str:
    name, params = spec
    if not params:
        return name
    return f"{name}({','.join(f'{k}={v}' for k, v in params.items())})"


INSTANCE_IDS = [spec_id(s) for s in INSTANCES]


def seeded(estimator, seed: int = 0):
    """``with seeded(estimator, seed) as est:`` -- est draws from a generator seeded with ``seed``."""
    return estimator.drawing_from(Noise(torch.Generator().manual_seed(seed)))


def make(name: str, seed: int = 0, **params):
    """``with make(name, seed, **params) as est:`` -- a built estimator drawing from ``seed``."""
    return seeded(build_estimator(name, params), seed)


def metrics_of(result) -> dict:
    assert result.status == "finished", result.error
    return {m.name: m for m in result.metrics}


def estimate(estimator, logits, loss_fn):
    """(surrogate, gradient w.r.t. logits) of one call."""
    logits = logits.detach().clone().requires_grad_(True)
    surrogate = estimator(logits, loss_fn)
    (grad,) = torch.autograd.grad(surrogate.sum(), logits)
    return surrogate.detach(), grad


def quadratic(d: int = 3, data_seed: int = 1):
    return problems.build_problem("bernoulli-quadratic", {"d": d, "data_seed": data_seed}).to(F64)


def dloss_dh(problem, h):
    """dL/dh of L(h) = h'Ah + b'h, by hand: (A + A') h + b."""
    return h @ (problem.A + problem.A.T) + problem.b


def random_logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


class RecordingNoise(Noise):
    """Seeded noise that records every draw it hands out, by kind, for by-hand recomputation.
    Draws come from its own generator, independent of ``Noise``'s implementation."""

    def __init__(self, seed: int = 0):
        super().__init__(torch.Generator().manual_seed(seed))
        self.numpy = np.random.default_rng(seed)
        self.draws: list[tuple[str, torch.Tensor]] = []

    def _record(self, kind, value):
        self.draws.append((kind, value))
        return value

    def uniform(self, shape, like):
        return self._record("uniform", torch.rand(shape, generator=self.generator, dtype=like.dtype))

    def normal(self, shape, like):
        return self._record("normal", torch.randn(shape, generator=self.generator, dtype=like.dtype))

    def logistic(self, shape, like):
        u = torch.rand(shape, generator=self.generator, dtype=like.dtype).clamp(1e-12, 1 - 1e-12)
        return self._record("logistic", torch.log(u) - torch.log1p(-u))

    def rademacher(self, shape, like):
        bits = torch.randint(0, 2, tuple(shape), generator=self.generator).to(like.dtype)
        return self._record("rademacher", bits * 2 - 1)

    def bernoulli(self, probs, shape=None):
        shape = probs.shape if shape is None else torch.Size(shape)
        u = torch.rand(shape, generator=self.generator, dtype=probs.dtype)
        return self._record("bernoulli", (u < probs).to(probs.dtype))

    def beta(self, alpha, beta, shape, like):
        return self._record("beta", torch.from_numpy(self.numpy.beta(alpha, beta, size=tuple(shape))).to(like.dtype))

    def kinds(self):
        return [kind for kind, _ in self.draws]


# =============================================================================================
# base.py: configurations, replay layout, attach_gradient
# =============================================================================================

def test_all_configurations_rows_are_bits_of_their_index_lsb_first():
    configs = all_configurations(3)
    assert configs.shape == (8, 3)
    for k, row in enumerate(configs.tolist()):
        assert row == [float((k >> i) & 1) for i in range(3)]


def test_replay_consumes_bits_in_order_and_accumulates_log_prob():
    configs = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]], dtype=F64)
    replay = ReplayNoise(configs)
    p1 = torch.tensor([[0.2, 0.7], [0.4, 0.9]], dtype=F64)
    first = replay.bernoulli(p1)  # consumes columns 0-1
    torch.testing.assert_close(first, configs[:, :2])
    p2 = torch.tensor([0.3, 0.6], dtype=F64)
    second = replay.bernoulli(p2, (2, 2))  # columns 2-3; probs broadcast over rows
    torch.testing.assert_close(second, configs[:, 2:4])
    assert replay.offset == 4
    expected = torch.tensor([math.log(0.2) + math.log(0.3) + math.log(0.3) + math.log(0.6),
                             math.log(0.6) + math.log(0.9) + math.log(0.3) + math.log(0.4)], dtype=F64)
    torch.testing.assert_close(replay.log_prob, expected, rtol=0, atol=1e-12)
    with pytest.raises(NotEnumerable, match="more Bernoulli bits"):
        replay.bernoulli(p2, (2, 4))


def test_replay_leading_axis_layout():
    # a (K, S, units) request takes K * units bits per row: draw k is columns [k*units, (k+1)*units)
    configs = torch.tensor([[1, 0, 0, 1, 1, 1], [0, 0, 1, 0, 1, 1]], dtype=F64)
    bits = ReplayNoise(configs).bernoulli(torch.full((2, 2), 0.5, dtype=F64), (3, 2, 2))
    for k in range(3):
        torch.testing.assert_close(bits[k], configs[:, 2 * k:2 * k + 2])


def test_replay_refuses_continuous_randomness_and_wrong_shapes():
    replay = ReplayNoise(torch.zeros(4, 3))
    like = torch.zeros(4, 3)
    for draw in (replay.uniform, replay.normal, replay.logistic, replay.rademacher):
        with pytest.raises(NotEnumerable):
            draw((4, 3), like)
    with pytest.raises(NotEnumerable):
        replay.beta(2.0, 3.0, (4, 3), like)
    with pytest.raises(NotEnumerable, match="expects draws of shape"):
        replay.bernoulli(torch.full((5, 3), 0.5))


def test_attach_gradient_keeps_value_and_adds_gradient():
    logits = random_logits(4, 3).requires_grad_(True)
    value = (logits ** 2).sum(-1)
    extra = random_logits(4, 3, seed=1)
    out = attach_gradient(value, logits, extra)
    torch.testing.assert_close(out, value, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    torch.testing.assert_close(grad, 2 * logits.detach() + extra, rtol=0, atol=1e-14)


# =============================================================================================
# (a) exact values by replay: no Monte Carlo tolerance
# =============================================================================================

S, UNITS = 8, 3


@pytest.fixture
def quad():
    return quadratic(UNITS)


@pytest.fixture
def replay_setup(quad):
    """Each of the 8 rows replays one configuration of 3 units, at its own logits."""
    configs = all_configurations(UNITS, F64)
    logits = random_logits(S, UNITS)
    return quad, configs, logits, torch.sigmoid(logits)


def log_prob_of(bits, probs):
    return (bits * torch.log(probs) + (1 - bits) * torch.log1p(-probs)).sum(-1)


def test_reinforce_by_replay(replay_setup):
    problem, h, logits, p = replay_setup
    est = build_estimator("reinforce")
    replay = ReplayNoise(h)
    with est.drawing_from(replay):
        value, grad = estimate(est, logits, problem.loss)
    L = problem.loss(h)
    torch.testing.assert_close(grad, (h - p) * L[:, None], rtol=0, atol=1e-12)
    torch.testing.assert_close(value, L, rtol=0, atol=1e-12)
    torch.testing.assert_close(replay.log_prob, log_prob_of(h, p), rtol=0, atol=1e-12)


def test_reinforce_ma_known_state(replay_setup):
    problem, h, logits, p = replay_setup
    est = build_estimator("reinforce-ma")
    est.mean_loss.fill_(0.7)
    est.seen.fill_(True)
    with est.drawing_from(ReplayNoise(h)), est.frozen():
        value, grad = estimate(est, logits, problem.loss)
    L = problem.loss(h)
    torch.testing.assert_close(grad, (h - p) * (L[:, None] - 0.7), rtol=0, atol=1e-6)
    torch.testing.assert_close(value, L, rtol=0, atol=1e-12)
    assert float(est.mean_loss) == pytest.approx(0.7)  # frozen: unchanged


def test_reinforce_ma_baseline_follows_observed_batches(replay_setup):
    problem, h, logits, p = replay_setup
    decay = 0.8
    est = build_estimator("reinforce-ma", {"decay": decay}).to(F64)
    batches = [h, h.flip(0), 1 - h]
    baseline = 0.0  # no observation yet
    for batch in batches:
        with est.drawing_from(ReplayNoise(batch)):
            _, grad = estimate(est, logits, problem.loss)
        L = problem.loss(batch)
        torch.testing.assert_close(grad, (batch - p) * (L[:, None] - baseline), rtol=0, atol=1e-12)
        # the first observation sets the average, later ones blend in with weight 1 - decay
        baseline = float(L.mean()) if baseline == 0.0 else decay * baseline + (1 - decay) * float(L.mean())
        assert float(est.mean_loss) == pytest.approx(baseline, abs=1e-12)


def test_reinforce_optimal_known_state(replay_setup):
    problem, h, logits, p = replay_setup
    est = build_estimator("reinforce-optimal")
    est.numerator = torch.tensor([0.3, -1.2, 0.5], dtype=F64)
    est.denominator = torch.tensor([0.2, 0.4, 0.0], dtype=F64)  # unit 2: no data -> baseline 0
    with est.drawing_from(ReplayNoise(h)), est.frozen():
        _, grad = estimate(est, logits, problem.loss)
    baseline = torch.tensor([1.5, -3.0, 0.0], dtype=F64)
    torch.testing.assert_close(grad, (h - p) * (problem.loss(h)[:, None] - baseline), rtol=0, atol=1e-12)


def test_reinforce_optimal_baseline_is_eq10_from_observed_batches(replay_setup):
    # Lbar_i = num_i / den_i with num_i = EMA of mean_s (h_i - p_i)^2 L, den_i = EMA of (h_i - p_i)^2,
    # both from earlier calls only (paper eq. 10); the first observation initialises the EMAs.
    problem, h, logits, p = replay_setup
    decay = 0.7
    est = build_estimator("reinforce-optimal", {"decay": decay})
    num = den = None
    for batch in [h, h.flip(0), 1 - h, h.roll(3, 0)]:
        with est.drawing_from(ReplayNoise(batch)):
            _, grad = estimate(est, logits, problem.loss)
        L = problem.loss(batch)
        baseline = torch.zeros(UNITS, dtype=F64) if num is None else num / den
        torch.testing.assert_close(grad, (batch - p) * (L[:, None] - baseline), rtol=0, atol=1e-12)
        w = (batch - p) ** 2
        batch_num, batch_den = (w * L[:, None]).mean(0), w.mean(0)
        if num is None:
            num, den = batch_num, batch_den
        else:
            num, den = decay * num + (1 - decay) * batch_num, decay * den + (1 - decay) * batch_den
        torch.testing.assert_close(est.numerator, num, rtol=0, atol=1e-12)
        torch.testing.assert_close(est.denominator, den, rtol=0, atol=1e-12)


def test_reinforce_loo_by_replay(quad):
    K, rows = 3, 32
    configs = torch.randint(0, 2, (rows, K * UNITS), generator=torch.Generator().manual_seed(5)).to(F64)
    logits = random_logits(rows, UNITS)
    p = torch.sigmoid(logits)
    est = build_estimator("reinforce-loo", {"K": K})
    replay = ReplayNoise(configs)
    with est.drawing_from(replay):
        value, grad = estimate(est, logits, quad.loss)
    assert replay.offset == K * UNITS
    expected = torch.zeros(rows, UNITS, dtype=F64)
    losses = []
    for k in range(K):
        hk = configs[:, k * UNITS:(k + 1) * UNITS]
        losses.append(quad.loss(hk))
    for k in range(K):
        hk = configs[:, k * UNITS:(k + 1) * UNITS]
        others = sum(losses[j] for j in range(K) if j != k) / (K - 1)
        expected += (hk - p) * (losses[k] - others)[:, None] / K
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(value, sum(losses) / K, rtol=0, atol=1e-12)


def test_straight_through_by_replay(replay_setup):
    problem, h, logits, p = replay_setup
    est = build_estimator("straight-through")
    with est.drawing_from(ReplayNoise(h)):
        value, grad = estimate(est, logits, problem.loss)
    torch.testing.assert_close(grad, dloss_dh(problem, h), rtol=0, atol=1e-12)
    torch.testing.assert_close(value, problem.loss(h), rtol=0, atol=1e-12)


def test_straight_through_sigmoid_by_replay(replay_setup):
    problem, h, logits, p = replay_setup
    est = build_estimator("straight-through-sigmoid")
    with est.drawing_from(ReplayNoise(h)):
        value, grad = estimate(est, logits, problem.loss)
    torch.testing.assert_close(grad, dloss_dh(problem, h) * p * (1 - p), rtol=0, atol=1e-12)
    torch.testing.assert_close(value, problem.loss(h), rtol=0, atol=1e-12)


def test_sts_by_replay(replay_setup):
    problem, b, logits, p = replay_setup
    est = build_estimator("sts")
    replay = ReplayNoise(b)
    with est.drawing_from(replay):
        value, grad = estimate(est, logits, problem.loss)
    h = b * p.sqrt()
    dsqrt_p = p.sqrt() * (1 - p) / 2  # d sqrt(sigm(a)) / da
    torch.testing.assert_close(grad, dloss_dh(problem, h) * b * dsqrt_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(value, problem.loss(h), rtol=0, atol=1e-12)
    # the bits were drawn with P(b = 1) = sqrt(p)
    torch.testing.assert_close(replay.log_prob, log_prob_of(b, p.sqrt()), rtol=0, atol=1e-12)


def test_sts_proposition_2_by_enumeration():
    # E[h] = sigm(a) and P(h > 0) = sqrt(sigm(a)), exactly, over all 2^units outcomes
    units = 4
    logits = random_logits(units)
    configs = all_configurations(units, F64)
    est = build_estimator("sts")
    replay = ReplayNoise(configs)
    with est.drawing_from(replay):
        h = est.sample(logits.expand(2**units, units))
    weight = replay.log_prob.exp()
    p = torch.sigmoid(logits)
    torch.testing.assert_close((weight[:, None] * h).sum(0), p, rtol=0, atol=1e-12)
    torch.testing.assert_close((weight[:, None] * (h > 0)).sum(0), p.sqrt(), rtol=0, atol=1e-12)


def test_sigmoid_and_rectifier_values(quad):
    logits = random_logits(5, UNITS)
    p = torch.sigmoid(logits)
    value, grad = estimate(build_estimator("sigmoid"), logits, quad.loss)
    torch.testing.assert_close(grad, dloss_dh(quad, p) * p * (1 - p), rtol=0, atol=1e-12)
    torch.testing.assert_close(value, quad.loss(p), rtol=0, atol=1e-12)
    value, grad = estimate(build_estimator("rectifier"), logits, quad.loss)
    r = logits.clamp_min(0)
    torch.testing.assert_close(grad, dloss_dh(quad, r) * (logits > 0), rtol=0, atol=1e-12)
    torch.testing.assert_close(value, quad.loss(r), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in problems.PROBLEMS.names()
                                  if issubclass(problems.PROBLEMS.entry(n).cls, problems.BernoulliProblem)])
def test_exact_estimator_is_exact_on_every_problem(name):
    problem = problems.build_problem(name).to(F64)
    if problem.units > 12:
        pytest.skip("too many units to enumerate in a unit test")
    logits = problem.logits.detach().expand(2, problem.units)
    value, grad = estimate(build_estimator("exact"), logits, problem.loss)
    torch.testing.assert_close(grad, problem.exact_gradient().expand(2, -1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value, torch.full((2,), problem.expected_loss(), dtype=F64),
                               rtol=1e-10, atol=1e-12)


def test_exact_estimator_refuses_too_many_units():
    est = build_estimator("exact", {"max_units": 4})
    with pytest.raises(ValueError, match="max_units=4"):
        est(torch.zeros(1, 5), lambda h: h.sum(-1))


def test_spsa_by_recorded_noise(quad):
    c = 0.3
    logits = random_logits(6, UNITS)
    est = build_estimator("spsa", {"c": c})
    noise = RecordingNoise(1)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["uniform", "rademacher"]
    u, D = noise.draws[0][1], noise.draws[1][1]
    up = quad.loss((u < torch.sigmoid(logits + c * D)).to(F64))
    down = quad.loss((u < torch.sigmoid(logits - c * D)).to(F64))
    torch.testing.assert_close(grad, ((up - down) / (2 * c))[:, None] / D, rtol=0, atol=1e-12)
    torch.testing.assert_close(value, (up + down) / 2, rtol=0, atol=1e-12)


def test_finite_difference_by_recorded_noise(quad):
    eps = 0.25
    logits = random_logits(6, UNITS)
    est = build_estimator("finite-difference", {"eps": eps})
    noise = RecordingNoise(2)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["uniform"]
    u = noise.draws[0][1]
    expected = torch.zeros_like(logits)
    evaluations = []
    for i in range(UNITS):
        step = torch.zeros(UNITS, dtype=F64)
        step[i] = eps
        up = quad.loss((u < torch.sigmoid(logits + step)).to(F64))
        down = quad.loss((u < torch.sigmoid(logits - step)).to(F64))
        expected[:, i] = (up - down) / (2 * eps)
        evaluations += [up, down]
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(value, torch.stack(evaluations).mean(0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("noise_kind", ["gaussian", "logistic"])
def test_noisy_rectifier_by_recorded_noise(quad, noise_kind):
    std = 0.7
    logits = random_logits(6, UNITS)
    est = build_estimator("noisy-rectifier", {"std": std, "noise": noise_kind})
    noise = RecordingNoise(3)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["normal" if noise_kind == "gaussian" else "logistic"]
    pre = logits + std * noise.draws[0][1]
    h = pre.clamp_min(0)
    torch.testing.assert_close(grad, dloss_dh(quad, h) * (pre > 0), rtol=0, atol=1e-12)
    torch.testing.assert_close(value, quad.loss(h), rtol=0, atol=1e-12)
    # eval mode: no noise, h = max(0, a)
    est.eval()
    value, _ = estimate(est, logits, quad.loss)
    torch.testing.assert_close(value, quad.loss(logits.clamp_min(0)), rtol=0, atol=1e-12)


def test_sigmoid_noise_by_recorded_noise(quad):
    std = 0.5
    logits = random_logits(6, UNITS)
    est = build_estimator("sigmoid-noise", {"std": std})
    noise = RecordingNoise(4)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["normal"]
    s = torch.sigmoid(logits + std * noise.draws[0][1])
    torch.testing.assert_close(grad, dloss_dh(quad, s) * s * (1 - s), rtol=0, atol=1e-12)
    torch.testing.assert_close(value, quad.loss(s), rtol=0, atol=1e-12)
    est.eval()
    value, _ = estimate(est, logits, quad.loss)
    torch.testing.assert_close(value, quad.loss(torch.sigmoid(logits)), rtol=0, atol=1e-12)


def test_sts_beta_noise_by_recorded_noise(quad):
    est = build_estimator("sts", {"beta_noise": 40.1})
    logits = random_logits(6, UNITS)
    noise = RecordingNoise(5)
    with est.drawing_from(noise):
        value, grad = estimate(est, logits, quad.loss)
    assert noise.kinds() == ["beta", "bernoulli"]
    x = (logits + est.beta_scale * noise.draws[0][1]).detach().requires_grad_(True)
    smooth = torch.sigmoid(x).sqrt()
    (dsmooth,) = torch.autograd.grad(smooth.sum(), x)  # elementwise d sqrt(sigm(x)) / dx
    smooth = smooth.detach()
    b = noise.draws[1][1]
    h = b * smooth
    torch.testing.assert_close(dsmooth, smooth * (1 - smooth**2) / 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, dloss_dh(quad, h) * b * dsmooth, rtol=0, atol=1e-12)
    torch.testing.assert_close(value, quad.loss(h), rtol=0, atol=1e-12)


# =============================================================================================
# (b) unbiasedness z-tests and (c) variance against exact enumeration, through the harness
# =============================================================================================
# The unbiasedness p-value is Bonferroni-corrected over coordinates, so at a random seed an
# unbiased estimator fails `p > 1e-3` with probability at most 0.1% per test.

UNBIASED = [name for name in NAMES if build_estimator(name).unbiased]


@pytest.mark.parametrize("problem", TOY_PROBLEMS, ids=[f"on-{p}" for p in TOY_PROBLEMS])
@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_estimators_pass_the_z_test(name, problem):
    estimator = build_estimator(name)
    samples = 500 if estimator.randomness == "none" else 200_000  # deterministic: n is moot
    metrics = metrics_of(run(make_config(name, {}, problem, {}, seed=0, samples=samples, warmup=2_000)))
    assert metrics["unbiased_pvalue"].value > 1e-3
    if "exact_bias_norm" in metrics:  # enumeration: zero bias up to float64 rounding
        # quadrature: each coordinate to its tolerance of the estimate's scale, max_i |E g_i| + sd_i
        gradient = problems.build_problem(problem, {}).reference().gradient
        scale = float(gradient.norm()) + math.sqrt(metrics["exact_variance"].value)
        integrated = QUADRATURE_TOLERANCE * math.sqrt(gradient.numel()) * scale
        assert metrics["exact_bias_norm"].value < (1e-12 if estimator.enumerable else integrated)


# Biased estimators on instances where they are biased (the numbers were checked first: e.g.
# straight-through-sigmoid and sigmoid are exactly unbiased on bernoulli-target at logit 0, so
# those use logit -1.5 or the coupled quadratic). 200k samples give |z| > 30 on every case here.
BIASED_CASES = [
    ("straight-through", "bernoulli-quadratic", {}),
    ("straight-through", "bernoulli-target", {}),
    ("straight-through-sigmoid", "bernoulli-quadratic", {}),
    ("straight-through-sigmoid", "bernoulli-target", {"logit": -1.5}),
    ("sts", "bernoulli-quadratic", {}),
    ("sts", "bernoulli-target", {}),
    ("noisy-rectifier", "bernoulli-quadratic", {}),
    ("sigmoid", "bernoulli-quadratic", {}),
    ("sigmoid", "bernoulli-target", {"logit": -1.5}),
    ("rectifier", "bernoulli-quadratic", {}),
    ("sigmoid-noise", "bernoulli-quadratic", {}),
    ("gumbel-softmax", "bernoulli-quadratic", {}),
    ("st-gumbel", "bernoulli-quadratic", {}),
    ("gumbel-rao", "bernoulli-target", {"d": 1, "t": 0.2}),  # K = 10 evaluations of the relaxation: one unit
    ("gapped-st", "bernoulli-quadratic", {}),
    ("reinmax", "bernoulli-blackbox", {"d": 3, "hidden": 16}),  # exact for quadratic losses at tau = 1
    ("slope-annealed-st", "bernoulli-quadratic", {}),
    ("gaussian-dropout", "bernoulli-blackbox", {"d": 3, "hidden": 16}),  # unbiased for quadratic losses
]


@pytest.mark.parametrize("name, problem, params", BIASED_CASES,
                         ids=[f"{n}-on-{spec_id((p, q))}" for n, p, q in BIASED_CASES])
def test_biased_estimators_are_detected(name, problem, params):
    assert build_estimator(name).unbiased is False
    result = run(make_config(name, {}, problem, params, seed=0, samples=200_000, warmup=100))
    metrics = metrics_of(result)
    assert metrics["unbiased_pvalue"].value < 1e-6
    if build_estimator(name).enumerable or "exact_bias_norm" in metrics:  # enumerated, or integrated
        assert metrics["exact_bias_norm"].value > 0.01
    else:  # continuous noise over more dimensions than quadrature resolves within its budget
        assert "evaluations" in result.notes["exact_moments"] and result.notes["exact_moments"].startswith("not computed")
    assert metrics["bias_norm"].value > 0.01


def test_every_biased_builtin_estimator_has_a_bias_case():
    covered = {name for name, _, _ in BIASED_CASES}
    for entry in ESTIMATORS.entries():
        if entry.name in NAMES and entry.source == "built-in" and not entry.cls.unbiased and entry.name not in (
                "spsa", "finite-difference"):  # O(c^2) bias: checked against their own mean below
            assert entry.name in covered, entry.name


def _exact_mean(name, problem):
    """The estimator's exact mean gradient by enumeration (harness replay), float64."""
    est = build_estimator(name)
    reference = problem.reference()
    metrics, reason = exact_estimator_moments(est, problem, reference)
    assert metrics, reason
    return {m.name: m.value for m in metrics}


@pytest.mark.parametrize("name", ["straight-through", "straight-through-sigmoid", "sigmoid", "sts"])
def test_bias_on_quadratic_matches_closed_form(name):
    # dL/dh = (A + A')h + b, so the pathwise estimators' means have closed forms; their distance
    # to the true gradient p(1-p)(A_kk + b_k + sum_{j!=k} (A_kj + A_jk) p_j) is the exact bias.
    problem = problems.build_problem("bernoulli-quadratic")
    A = problem.A.to(F64)
    b = problem.b.to(F64)
    p = torch.sigmoid(problem.logits.to(F64))
    off = A - torch.diag(torch.diagonal(A))
    truth = problem.exact_gradient()
    if name == "straight-through":
        mean = 2 * torch.diagonal(A) * p + b + (off + off.T) @ p
    elif name in ("straight-through-sigmoid", "sigmoid"):
        mean = p * (1 - p) * (2 * torch.diagonal(A) * p + b + (off + off.T) @ p)
    else:  # sts: E[b_k dL/dh_k] = sqrt(p_k) (2 A_kk sqrt(p_k) + b_k + sum_{j!=k} (A_kj + A_jk) p_j)
        mean = p * (1 - p) / 2 * (2 * torch.diagonal(A) * p.sqrt() + b + (off + off.T) @ p)
    expected = float(torch.linalg.vector_norm(mean - truth))
    assert expected > 0.01
    assert _exact_mean(name, problem)["exact_bias_norm"] == pytest.approx(expected, rel=1e-9)


def _expected_loss_at(problem, logits):
    moved = copy.deepcopy(problem).to(F64)
    moved.logits.copy_(logits)
    return moved.expected_loss()


@pytest.mark.parametrize("name, step", [("finite-difference", 2.0), ("spsa", 2.0)])
def test_perturbation_estimators_are_unbiased_for_their_smoothed_target(name, step):
    # With common random numbers the marginal of each side is Bernoulli(sigm(a +- step)), so
    # E[FD_i] = (F(a + eps e_i) - F(a - eps e_i)) / 2 eps and E[SPSA_i] = E_D[(F(a + cD) -
    # F(a - cD)) / 2c D_i] exactly (F = expected loss; D enumerated). A large step makes that
    # differ from the gradient: the z-test must pass against the former (false alarm <= 0.1%) and
    # flag the latter (|z| > 40 here).
    from bench.metrics import GradientMoments

    problem = problems.build_problem("bernoulli-quadratic", {"d": 4})
    base = problem.logits.to(F64)
    units = problem.units
    if name == "finite-difference":
        target = torch.tensor([
            (_expected_loss_at(problem, base + step * e) - _expected_loss_at(problem, base - step * e)) / (2 * step)
            for e in torch.eye(units, dtype=F64)], dtype=F64)
        params = {"eps": step}
    else:
        target = torch.zeros(units, dtype=F64)
        for D in all_configurations(units, F64) * 2 - 1:
            diff = _expected_loss_at(problem, base + step * D) - _expected_loss_at(problem, base - step * D)
            target += diff / (2 * step) * D / 2**units
        params = {"c": step}
    truth = problem.exact_gradient()
    assert float(torch.linalg.vector_norm(target - truth)) > 0.04
    with seeded(build_estimator(name, params), 0) as est:
        n = 50_000
        grads = problem.sample_gradients(est, n)
    pvalues = []
    for reference in (target, truth):
        moments = GradientMoments(reference, n)
        moments.add(grads)
        pvalues.append({m.name: m.value for m in moments.metrics()}["unbiased_pvalue"])
    assert pvalues[0] > 1e-3
    assert pvalues[1] < 1e-6


ENUMERABLE = [name for name in NAMES if build_estimator(name).enumerable]
SMALL_PROBLEMS = [("bernoulli-target", {}), ("bernoulli-quadratic", {"d": 4}),
                  ("bernoulli-blackbox", {"d": 4, "hidden": 4})]


@pytest.mark.parametrize("problem, params", SMALL_PROBLEMS, ids=[f"on-{spec_id(s)}" for s in SMALL_PROBLEMS])
@pytest.mark.parametrize("name", ENUMERABLE)
def test_monte_carlo_variance_matches_enumeration(name, problem, params):
    # The jackknife over 32 groups makes (variance - exact) / stderr close to t with 31 degrees
    # of freedom: |t| > 4 has probability ~4e-4, the false-alarm rate of this test at a random seed.
    deterministic = build_estimator(name).randomness == "none"
    samples = 500 if deterministic else 20_000
    metrics = metrics_of(run(make_config(name, {}, problem, params, seed=1, samples=samples, warmup=2_000)))
    assert "exact_variance" in metrics, "enumeration was expected to run"
    exact = metrics["exact_variance"].value
    variance = metrics["variance"]
    if deterministic:
        assert exact == 0.0
        assert variance.value < 1e-12  # float32 rounding only
    elif exact < 1e-24:  # random, yet exact here: indecater on a loss additive over the units
        assert variance.value < 1e-12
    else:
        assert exact > 0
        assert abs(variance.value - exact) < 4 * variance.stderr


def test_optimal_baseline_beats_moving_average_on_coupled_units():
    # Same seed, same warm-up (10k estimates, then frozen) for both. The MC comparison is a
    # 4-sigma one-sided test on the difference of variances (false alarm < 1e-4 at random seeds).
    results = {}
    for name in ("reinforce", "reinforce-ma", "reinforce-optimal"):
        config = make_config(name, {}, "bernoulli-quadratic", {}, seed=0, samples=20_000, warmup=10_000)
        results[name] = metrics_of(run(config))
    ma, opt = results["reinforce-ma"], results["reinforce-optimal"]
    assert opt["exact_variance"].value < 0.97 * ma["exact_variance"].value
    assert ma["exact_variance"].value < 0.5 * results["reinforce"]["exact_variance"].value
    gap = ma["variance"].value - opt["variance"].value
    assert gap > 4 * math.hypot(ma["variance"].stderr, opt["variance"].stderr)


# =============================================================================================
# (e) traits
# =============================================================================================

@pytest.mark.parametrize("problem, params", [("bernoulli-target", {"d": 3}), ("bernoulli-quadratic", {"d": 4})],
                         ids=["on-target-d3", "on-quadratic-d4"])
@pytest.mark.parametrize("spec", INSTANCES, ids=INSTANCE_IDS)
def test_measured_loss_evaluations_match_the_declaration(spec, problem, params):
    name, est_params = spec
    metrics = metrics_of(run(make_config(name, est_params, problem, params, seed=0, samples=64, warmup=64)))
    units = params["d"]
    assert metrics["loss_evals"].value == build_estimator(name, est_params).loss_evaluations(units)


@pytest.mark.parametrize("spec", INSTANCES, ids=INSTANCE_IDS)
def test_trait_types(spec):
    est = build_estimator(*spec)
    assert est.name == spec[0] and est.description
    record = est.traits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.unbiased = not record.unbiased
    traits = record.as_dict()
    assert set(traits) == {"family", "unbiased", "loss_evals", "needs_loss_backprop", "binary_forward", "randomness",
                           "stateful", "has_parameters", "activation", "variables"}
    assert traits["family"] in FAMILY_ORDER
    assert traits["family"] != OTHER_FAMILY or ESTIMATORS.entry(spec[0]).source != "built-in"  # built-ins declare one
    assert traits["activation"] in ("sigmoid", "rectifier")
    assert traits["variables"] in ("binary", "categorical", "both")
    for key in ("unbiased", "needs_loss_backprop", "binary_forward", "stateful", "has_parameters"):
        assert isinstance(traits[key], bool), key
    assert traits["randomness"] in ("bernoulli", "continuous", "none")
    assert est.enumerable == (traits["randomness"] in ("bernoulli", "none"))
    assert isinstance(traits["loss_evals"], (int, str)) and not isinstance(traits["loss_evals"], bool)
    for units in (1, 3, 7):
        count = est.loss_evaluations(units)
        assert isinstance(count, int) and count >= 1
        if isinstance(traits["loss_evals"], int):
            assert count == traits["loss_evals"]
        else:  # a formula in `units` and the constructor parameters: it must say what the code does
            names = {"units": units, "categories": 2, **ESTIMATORS.resolved_params(est)}  # binary: K = 2
            assert eval(traits["loss_evals"], {"__builtins__": {}}, names) == count
        assert isinstance(est.bernoulli_draws(units), int)
    assert bool(list(est.parameters())) == traits["has_parameters"]


def _logits_and_loss(units=4, rows=64):
    problem = problems.build_problem("bernoulli-quadratic", {"d": units}).to(F64)
    return random_logits(rows, units, seed=3), problem


@pytest.mark.parametrize("spec", INSTANCES, ids=INSTANCE_IDS)
def test_binary_forward_is_truthful(spec):
    est = build_estimator(*spec)
    logits, problem = _logits_and_loss()
    seen = []

    def recording_loss(h):
        seen.append(h.detach().clone())
        return problem.loss(h)

    with seeded(est, 1):
        estimate(est, logits, recording_loss)
    # the units' output is binary; muprop/rebar/relax also evaluate the loss at non-binary points as control variates
    is_binary = any(bool(((h == 0) | (h == 1)).all()) for h in seen)
    assert is_binary == est.binary_forward, f"binary_forward={est.binary_forward}, saw binary={is_binary}"


@pytest.mark.parametrize("spec", INSTANCES, ids=INSTANCE_IDS)
def test_needs_loss_backprop_is_truthful(spec):
    logits, problem = _logits_and_loss()

    def detached_loss(h):
        with torch.no_grad():
            return problem.loss(h)

    est = build_estimator(*spec)
    if not est.needs_loss_backprop:
        # only the loss value is used: the gradient is identical with a detached loss
        with seeded(copy.deepcopy(est), 2) as twin:
            _, expected = estimate(twin, logits, problem.loss)
        with seeded(copy.deepcopy(est), 2) as twin:
            value, got = estimate(twin, logits, detached_loss)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert float(got.abs().sum()) > 0
    else:
        # without back-propagation through the loss there is no gradient to be had
        try:
            with seeded(est, 2):
                _, got = estimate(est, logits, detached_loss)
        except RuntimeError:
            return
        assert float(got.abs().sum()) == 0.0


@pytest.mark.parametrize("spec", INSTANCES, ids=INSTANCE_IDS)
def test_randomness_and_bernoulli_draws_are_truthful(spec):
    est = build_estimator(*spec)
    units, rows = 3, 5
    logits, problem = _logits_and_loss(units, rows)
    configs = torch.randint(0, 2, (rows, 64), generator=torch.Generator().manual_seed(0)).to(F64)
    replay = ReplayNoise(configs)
    with est.drawing_from(replay):
        if est.randomness == "continuous":
            with pytest.raises(NotEnumerable):
                est(logits, problem.loss)
            assert est.bernoulli_draws(units) == 0
            return
        est(logits, problem.loss)
        assert replay.offset == est.bernoulli_draws(units)
        if est.randomness == "none":
            assert est.bernoulli_draws(units) == 0
        else:
            assert est.bernoulli_draws(units) > 0


@pytest.mark.parametrize("spec", INSTANCES, ids=INSTANCE_IDS)
def test_stateful_is_truthful_and_frozen_holds_state(spec):
    with seeded(build_estimator(*spec), 0) as est:
        logits, problem = _logits_and_loss()
        estimate(est, logits, problem.loss)  # first call may size the buffers
        before = {k: v.clone() for k, v in est.state_dict().items()}
        with est.frozen():
            estimate(est, logits, problem.loss)
        assert est.update_state is True
        after_frozen = est.state_dict()
        assert before.keys() == after_frozen.keys()
        for key in before:
            assert torch.equal(before[key], after_frozen[key]), key
        estimate(est, logits, problem.loss)
        changed = any(not torch.equal(before[k], v) for k, v in est.state_dict().items())
        assert changed == est.stateful


PARAMETER_TRAITS = [  # (name, params, trait, class default, this instance's answer)
    ("nvil", {"normalise": True}, "unbiased", True, False),
    ("nvil", {"normalise": True}, "stateful", False, True),
    ("sts", {"beta_noise": 40.1}, "randomness", "bernoulli", "continuous"),
    ("noisy-rectifier", {"target_rate": 0.2}, "stateful", False, True),
]


@pytest.mark.parametrize("name, params, trait, default, answer", PARAMETER_TRAITS,
                         ids=[f"{n}-{t}" for n, _, t, *_ in PARAMETER_TRAITS])
def test_a_parameter_changes_a_trait_per_instance_never_the_class_default(name, params, trait, default, answer):
    # the class keeps the declared default (what `bench list` shows); the instance answers for
    # its own parameters, also in traits() (what a run stores); nobody can overwrite it
    cls = ESTIMATORS.entry(name).cls
    est = build_estimator(name, params)
    assert getattr(cls, trait) == default and getattr(build_estimator(name), trait) == default
    assert getattr(est, trait) == answer and getattr(est.traits(), trait) == answer
    assert getattr(cls, trait) == default  # building the instance changed nothing on the class
    with pytest.raises(AttributeError, match="computed from the estimator's parameters"):
        setattr(est, trait, default)
    assert trait not in vars(est)


@pytest.mark.parametrize("name", NAMES)
def test_class_traits_are_those_of_the_default_instance(name):
    # `bench list` reads traits from the class: they must describe the estimator at its defaults
    cls = ESTIMATORS.entry(name).cls
    assert cls.declared_traits() == build_estimator(name).traits()


class _Tagged(Noise):
    def __init__(self, tag: str):
        super().__init__(torch.Generator().manual_seed(0))
        self.tag = tag


def test_drawing_from_scopes_the_noise_source_and_restores_it():
    est = build_estimator("reinforce")
    default = est.rng
    outer, inner = _Tagged("outer"), _Tagged("inner")
    with est.drawing_from(outer) as entered:
        assert entered is est and est.rng is outer
        with est.drawing_from(inner):  # nested: the inner block draws from its own source ...
            assert est.rng is inner
        assert est.rng is outer  # ... and hands the outer one back
    assert est.rng is default
    with pytest.raises(RuntimeError, match="boom"), est.drawing_from(outer):
        assert est.rng is outer
        raise RuntimeError("boom")
    assert est.rng is default  # restored on an exception too


def test_drawing_from_reaches_layer_copies_made_before_and_inside_the_block():
    est = build_estimator("reinforce-optimal")
    before = est.layer(1)
    noise = _Tagged("scoped")
    with est.drawing_from(noise):
        assert before.rng is noise and est.layer(2).rng is noise and est.layer(1) is before
    assert all(est.layer(i).rng is est.rng for i in range(3)) and est.rng is not noise


def test_drawing_from_gives_the_draws_of_the_source_handed_in():
    logits = random_logits(16, UNITS)
    est = build_estimator("straight-through").to(F64)
    with est.drawing_from(Noise(torch.Generator().manual_seed(3))):
        h = est.sample(logits)
    u = torch.rand(16, UNITS, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert torch.equal(h.detach(), (u < torch.sigmoid(logits)).to(F64))


# =============================================================================================
# (f) parameter validation
# =============================================================================================

BAD_PARAMETERS = [
    ("reinforce-loo", {"K": 1}, "K must be at least 2"),
    ("sts", {"beta_noise": 0.5}, "beta_noise"),
    ("sts", {"target": 0.5}, "target"),
    ("noisy-rectifier", {"noise": "cauchy"}, "noise must be one of gaussian, logistic"),
    ("noisy-rectifier", {"std": -1.0}, "std"),
    ("noisy-rectifier", {"target_rate": 1.0}, "target_rate"),
    ("spsa", {"c": 0}, "c must be a finite number > 0"),
    ("finite-difference", {"eps": -0.1}, "eps must be a finite number > 0"),
    ("reinforce-ma", {"decay": 1.0}, "decay must be in [0, 1)"),
    ("reinforce-optimal", {"decay": 1.0}, "decay must be in [0, 1)"),
    ("sigmoid-noise", {"std": -0.5}, "std"),
    ("exact", {"max_units": 31}, "max_units"),
    ("reinforce-loo", {"K": 2.5}, "K must be an integer"),
    ("reinforce-loo", {"K": 1e18}, "K must be at least 2 and at most 1,048,576"),  # passed, then failed at run time
    ("gumbel-rao", {"K": 10**18}, "K must be at least 1 and at most 1,048,576"),
    ("gumbel-softmax", {"tau": 0.0}, "tau must be a finite number > 0"),
    ("st-gumbel", {"tau": -1.0}, "tau must be a finite number > 0"),
    ("gumbel-rao", {"K": 0}, "K must be at least 1"),
    ("gapped-st", {"gap": -1.0}, "gap must be a finite number >= 0"),
    ("reinmax", {"tau": float("nan")}, "tau must be a finite number"),  # the registry's check, before the class's
    ("slope-annealed-st", {"max_slope": 0.5}, "max_slope must be finite and >= slope"),
    ("rebar", {"temperature": 0.0}, "temperature must be a finite number > 0"),
    ("relax", {"temperature": -1.0}, "temperature must be a finite number > 0"),
    ("relax", {"hidden": 0}, "hidden must be at least 1"),
    ("nvil", {"hidden": 0}, "hidden must be at least 1"),
    ("nvil", {"decay": 1.0}, "decay must be in [0, 1)"),
]


@pytest.mark.parametrize("name, params, fragment", BAD_PARAMETERS,
                         ids=[spec_id((n, p)) for n, p, _ in BAD_PARAMETERS])
def test_bad_parameters_name_the_parameter(name, params, fragment):
    with pytest.raises(RegistryError) as info:
        build_estimator(name, params)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert fragment in message and name in message
    assert "\n" not in message


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(RegistryError, match=r"has no parameter 'k': valid: K"):
        build_estimator("reinforce-loo", {"k": 3})


@pytest.mark.parametrize("typo, match", [("reinforse", "reinforce"), ("straight-thru", "straight-through"),
                                         ("reinforce-optimum", "reinforce-optimal")])
def test_unknown_estimator_suggests_close_matches(typo, match):
    with pytest.raises(RegistryError) as info:
        build_estimator(typo)
    hint = str(info.value).split("valid:")[0]
    assert "did you mean" in hint and match in hint


def test_registry_rejects_bad_names_and_duplicates():
    with pytest.raises(ValueError, match="kebab-case"):
        ESTIMATORS.register("Bad_Name")

    class Impostor(estimators.Estimator):
        pass

    with pytest.raises(ValueError, match="already registered"):
        ESTIMATORS.register("reinforce")(Impostor)
    assert ESTIMATORS.entry("reinforce").cls is not Impostor


# =============================================================================================
# (g) STS Beta noise, noisy rectifier (Proposition 1), firing-rate control
# =============================================================================================

def test_sts_beta_parameters_put_the_mode_at_the_target():
    est = build_estimator("sts", {"beta_noise": 40.1})
    alpha, beta = est.beta_alpha, 40.1
    assert (alpha - 1) / (alpha + beta - 2) == pytest.approx(0.1, rel=1e-12)
    assert 1 / (1 + math.exp(-est.beta_scale * 0.1)) == pytest.approx(0.1, rel=1e-12)
    for b in (1.1, 2.6, 5.1, 160.1):  # the paper's grid
        other = build_estimator("sts", {"beta_noise": b, "target": 0.2})
        a = other.beta_alpha
        assert (a - 1) / (a + b - 2) == pytest.approx(0.2, rel=1e-12)


class OnesNoise(Noise):
    """Real Beta draws, but every Bernoulli bit is 1, so h = sqrt(sigm(a + scale * n)) shows n."""

    def bernoulli(self, probs, shape=None):
        return torch.ones(probs.shape if shape is None else shape, dtype=probs.dtype)


def _sts_noise(est, logits):
    h = est.sample(logits)
    return (torch.logit(h**2) - logits) / est.beta_scale


def test_sts_beta_noise_eval_uses_the_mean_and_training_draws_beta():
    est = build_estimator("sts", {"beta_noise": 40.1})
    with est.drawing_from(OnesNoise(torch.Generator().manual_seed(0))):
        alpha, beta = est.beta_alpha, 40.1
        logits = torch.zeros(4000, 5, dtype=F64)
        est.eval()
        first, second = _sts_noise(est, logits), _sts_noise(est, logits)
        torch.testing.assert_close(first, torch.full_like(first, alpha / (alpha + beta)), rtol=0, atol=1e-10)
        assert torch.equal(first, second)
        est.train()
        first, second = _sts_noise(est, logits), _sts_noise(est, logits)
        assert not torch.equal(first, second)
        # the recovered noise is Beta(alpha, beta): KS test, false alarm 0.1% at a random seed
        ks = scipy.stats.kstest(first.flatten().numpy(), scipy.stats.beta(alpha, beta).cdf)
        assert ks.pvalue > 1e-3


def test_sts_beta_noise_is_seeded():
    logits = torch.zeros(50, 3, dtype=F64)

    def sample(seed: int) -> torch.Tensor:
        with make("sts", seed=seed, beta_noise=40.1) as est:
            return est.sample(logits)

    a, b, c = sample(7), sample(7), sample(8)
    assert torch.equal(a, b) and not torch.equal(a, c)


A_GRID = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=F64)


def test_noisy_rectifier_logistic_proposition_1():
    # P(h > 0) = sigm(a) (1a) and E[h] = softplus(a) (1b); tolerance 5 standard errors per
    # coordinate: two-sided false-alarm rate 6e-7 each, ~6e-6 over the 10 comparisons.
    n = 20_000
    with make("noisy-rectifier", seed=0, noise="logistic", std=1.0) as est:
        h = est.sample(A_GRID.expand(n, -1))
    fired = (h > 0).to(F64)
    p = torch.sigmoid(A_GRID)
    assert ((fired.mean(0) - p).abs() < 5 * (p * (1 - p) / n).sqrt()).all()
    softplus = torch.nn.functional.softplus(A_GRID)
    assert ((h.mean(0) - softplus).abs() < 5 * h.std(0) / math.sqrt(n)).all()


def test_noisy_rectifier_gaussian_fires_with_normal_cdf():
    # the default noise: P(a + std z > 0) = Phi(a / std); 5 standard errors as above
    n, std = 20_000, 1.0
    with make("noisy-rectifier", seed=1, std=std) as est:
        h = est.sample(A_GRID.expand(n, -1))
    p = torch.from_numpy(scipy.stats.norm.cdf(A_GRID.numpy() / std))
    assert (((h > 0).to(F64).mean(0) - p).abs() < 5 * (p * (1 - p) / n).sqrt()).all()


@pytest.mark.parametrize("target, start", [(0.3, -3.0), (0.05, 1.0)], ids=["raise-rate", "lower-rate"])
def test_firing_rate_control_moves_rate_to_target(target, start):
    with make("noisy-rectifier", seed=0, target_rate=target) as est:
        logits = torch.full((100, 8), start)
        initial = float((est.sample(logits) > 0).float().mean())
        rates = [float((est.sample(logits) > 0).float().mean()) for _ in range(1500)]
        settled = float(np.mean(rates[-500:]))
        # the controller overshoots and settles within ~1000 steps; after that the rate tracks the target
        assert abs(initial - target) > 0.2
        assert abs(settled - target) < 0.01
        assert (est.bias_shift > 0).all() if target > initial else (est.bias_shift < 0).all()
        with est.frozen():
            shift = est.bias_shift.clone()
            est.sample(logits)
        assert torch.equal(shift, est.bias_shift)


def test_firing_rate_control_update_rule_by_hand():
    # per call: rate = fraction of h > 0 per unit over the batch; firing_rate <- decay * firing_rate
    # + (1 - decay) * rate (starting at the target); bias_shift += step * (target - firing_rate)
    target, decay, step, std = 0.2, 0.9, 0.5, 1.0
    est = build_estimator("noisy-rectifier", {"target_rate": target, "rate_decay": decay,
                                              "bias_step": step, "std": std})
    noise = RecordingNoise(6)
    with est.drawing_from(noise):
        logits = random_logits(50, 3)
        firing = torch.full((3,), target, dtype=F64)
        shift = torch.zeros(3, dtype=F64)
        for call in range(3):
            h = est.sample(logits)
            expected_h = (logits + shift + std * noise.draws[call][1]).clamp_min(0)
            torch.testing.assert_close(h, expected_h, rtol=0, atol=1e-12)
            firing = decay * firing + (1 - decay) * (expected_h > 0).to(F64).mean(0)
            shift = shift + step * (target - firing)
            torch.testing.assert_close(est.firing_rate, firing, rtol=0, atol=1e-12)
            torch.testing.assert_close(est.bias_shift, shift, rtol=0, atol=1e-12)


# =============================================================================================
# (h) extra batch dimensions
# =============================================================================================

@pytest.mark.parametrize("spec", INSTANCES, ids=INSTANCE_IDS)
def test_extra_batch_dims(spec):
    units = 4
    problem = problems.build_problem("bernoulli-quadratic", {"d": units}).to(F64)
    logits = random_logits(2, 5, units, seed=4)
    with make(*spec[:1], seed=9, **spec[1]) as est:
        value, grad = estimate(est, logits, problem.loss)
    assert value.shape == (2, 5) and grad.shape == (2, 5, units)
    # the same draws on a flat (10, units) batch give the same rows
    with make(*spec[:1], seed=9, **spec[1]) as est:
        flat_value, flat_grad = estimate(est, logits.reshape(10, units), problem.loss)
    torch.testing.assert_close(value, flat_value.reshape(2, 5))
    torch.testing.assert_close(grad, flat_grad.reshape(2, 5, units))
    # each surrogate entry depends on its own row of logits only
    x = logits.clone().requires_grad_(True)
    with make(*spec[:1], seed=9, **spec[1]) as est:
        surrogate = est(x, problem.loss)
    (row_grad,) = torch.autograd.grad(surrogate[1, 2], x, allow_unused=True)
    if row_grad is None:
        row_grad = torch.zeros_like(x)
    mask = torch.zeros(2, 5, 1, dtype=torch.bool)
    mask[1, 2] = True
    assert float(row_grad.masked_fill(mask, 0).abs().max()) == 0.0
    torch.testing.assert_close(row_grad[1, 2], grad[1, 2])
