"""Exact moments of continuous-noise estimators by quadrature (bench/quadrature.py).

(a) one case per law with a closed form, to 1e-10: ARM (uniform), the noisy rectifier (normal and
logistic), Gumbel-softmax over two categories (Gumbel: the logit difference is logistic, and the
mean slope is the density of a sum of two logistics); (b) every built-in estimator with continuous
noise agrees with its own Monte Carlo moments at fixed seeds (the harness's exact-vs-Monte-Carlo
check, flagged below p = 1e-3); (c) what is refused, and why.
"""
from __future__ import annotations

import math

import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

import estimators
import problems
from bench import harness, quadrature
from estimators.base import Estimator, NoiseLaw, attach_gradient

F64 = torch.float64


def exact(name: str, params: dict, problem: str, problem_params: dict):
    prob = problems.build_problem(problem, problem_params)
    moments, reason = quadrature.integrate_exact(estimators.build_estimator(name, params), prob, prob.reference())
    assert moments is not None, reason
    return moments, reason


# -- (a) closed forms, one per law -------------------------------------------------------------
@pytest.mark.parametrize("a", [0.75, -1.25])  # exact in the problem's float32 logits
def test_arm_on_one_unit_matches_its_piecewise_polynomial_closed_form(a):
    # L(h) = (h - t)^2, so L(1) - L(0) = 1 - 2t and g = +-(1 - 2t)(u - 1/2) outside [sigm(-|a|), sigm(|a|)]
    t = 0.45
    moments, reason = exact("arm", {}, "bernoulli-target", {"d": 1, "t": t, "logit": a})
    p = scipy.special.expit(a)
    second = (1 - 2 * t) ** 2 * 2 * (0.5**3 - (scipy.special.expit(abs(a)) - 0.5) ** 3) / 3
    mean = (1 - 2 * t) * p * (1 - p)
    assert float(moments.mean[0]) == pytest.approx(mean, abs=1e-10)
    assert float(moments.variance[0]) == pytest.approx(second - mean**2, abs=1e-10)
    assert "uniform" in reason and "tolerance 1e-08" in reason


@pytest.mark.parametrize("a", [0.375, -0.875])
def test_gaussian_noisy_rectifier_matches_its_closed_form(a):
    # g = 2 (a + z - t) 1[z > -a], z ~ N(0, 1): the kink at z = -a is a breakpoint of the rule
    t = 0.45
    moments, _ = exact("noisy-rectifier", {"std": 1.0}, "bernoulli-target", {"d": 1, "t": t, "logit": a})
    Phi, phi, b = scipy.stats.norm.cdf(a), scipy.stats.norm.pdf(a), a - t
    mean = 2 * (b * Phi + phi)
    second = 4 * (b**2 * Phi + 2 * b * phi + Phi - a * phi)
    assert float(moments.mean[0]) == pytest.approx(mean, abs=1e-10)
    assert float(moments.variance[0]) == pytest.approx(second - mean**2, abs=1e-10)


def test_logistic_noisy_rectifier_matches_proposition_1():
    # E[max(0, a + L)] = softplus(a) (Prop. 1), so E[g] = E[2 (h - t) 1[h > 0]] = 2 (softplus(a) - t sigm(a));
    # its second moment against scipy's logistic expectation
    a, t = 0.625, 0.45
    moments, _ = exact("noisy-rectifier", {"std": 1.0, "noise": "logistic"}, "bernoulli-target",
                       {"d": 1, "t": t, "logit": a})
    mean = 2 * (math.log1p(math.exp(a)) - t * scipy.special.expit(a))
    second = scipy.stats.logistic.expect(lambda x: 4 * (a + x - t) ** 2, lb=-a, epsabs=1e-13, epsrel=1e-13)
    assert float(moments.mean[0]) == pytest.approx(mean, abs=1e-10)
    assert float(moments.variance[0]) == pytest.approx(second - mean**2, rel=1e-9)  # within the 1e-8 tolerance


@pytest.mark.parametrize("a", [0.5, -1.5])
def test_sts_with_beta_noise_matches_its_one_dimensional_integral(a):
    # h = b r, r = sqrt(sigm(a + s n)), b ~ Bernoulli(r), n ~ Beta(alpha, beta): E[g | n] = r 2 (r - t) dr/da
    # and E[g^2 | n] = r (2 (r - t) dr/da)^2, integrated against scipy's Beta density (Gauss-Jacobi here)
    t = 0.45
    estimator = estimators.build_estimator("sts", {"beta_noise": 3.0, "target": 0.1})
    moments, reason = exact("sts", {"beta_noise": 3.0, "target": 0.1}, "bernoulli-target", {"d": 1, "t": t, "logit": a})
    alpha, beta, s = estimator.beta_alpha, estimator.beta_noise, estimator.beta_scale

    def given(x: float, power: int) -> float:
        p = scipy.special.expit(a + s * x)
        r = math.sqrt(p)
        return r * (2 * (r - t) * r * (1 - p) / 2) ** power

    def expect(power: int) -> float:
        return scipy.integrate.quad(lambda x: given(x, power) * scipy.stats.beta.pdf(x, alpha, beta), 0, 1,
                                    epsabs=1e-14, epsrel=1e-13)[0]

    mean = expect(1)
    assert float(moments.mean[0]) == pytest.approx(mean, abs=1e-10)
    assert float(moments.variance[0]) == pytest.approx(expect(2) - mean**2, abs=1e-10)
    assert "(beta)" in reason


def logistic_sum_density(x: float) -> float:
    """Density of the sum of two independent standard logistics at x."""
    return math.exp(x) * ((x - 2) * math.exp(x) + x + 2) / math.expm1(x) ** 3


@pytest.mark.parametrize("a", [0.8125, -0.5])
def test_gumbel_softmax_over_two_categories_matches_the_logistic_convolution(a):
    # polynomial-programming(p=1, t=0, K=2, units=1): L = z = h_1, linear in the relaxed h. With
    # tau = 1, h_1 = sigm(a + G_1 - G_0) and G_1 - G_0 is logistic, so E[dh_1/da_1] = E[sigm'(a + L)]
    # is the density of L + L' at -a; the estimate's two coordinates are -+ the same.
    moments, reason = exact("gumbel-softmax", {"tau": 1.0}, "polynomial-programming",
                            {"p": 1.0, "units": 1, "t": 0.0, "K": 2, "logit": a})
    mean = logistic_sum_density(a)
    second = scipy.stats.logistic.expect(lambda x: (scipy.special.expit(a + x) * scipy.special.expit(-a - x)) ** 2,
                                         epsabs=1e-14, epsrel=1e-13)
    assert moments.mean.tolist() == pytest.approx([-mean, mean], abs=1e-10)
    assert moments.variance.tolist() == pytest.approx([second - mean**2] * 2, abs=1e-10)
    assert "gumbel" in reason and "2^1 discrete outcomes" in reason  # the argmax enumerated


def test_gumbel_rao_copies_keep_the_mean_and_shrink_the_conditional_variance():
    # Gumbel-Rao's mean is ST-Gumbel's for every K; its variance is Var E[phi | h] + E Var[phi | h] / K
    params = {"d": 2, "t": 0.45, "logit": 0.3}
    st, _ = exact("st-gumbel", {"tau": 0.5}, "bernoulli-target", params)
    one, _ = exact("gumbel-rao", {"tau": 0.5, "K": 1}, "bernoulli-target", params)
    four, reason = exact("gumbel-rao", {"tau": 0.5, "K": 4}, "bernoulli-target", params)
    many, _ = exact("gumbel-rao", {"tau": 0.5, "K": 1000}, "bernoulli-target", params)
    assert torch.allclose(one.mean, st.mean, atol=1e-12) and torch.allclose(one.variance, st.variance, atol=1e-12)
    assert torch.allclose(four.mean, st.mean, atol=1e-12)
    between = many.variance - (one.variance - many.variance) / 999  # K -> infinity limit
    assert torch.allclose(four.variance, between + (one.variance - between) / 4, atol=1e-12)
    assert "4 averaged copies" in reason


# -- (b) every integrated estimator against its own Monte Carlo moments -------------------------
BINARY = {"d": 2, "t": 0.45, "logit": 0.3}
CONTINUOUS = [
    ("arm", {}), ("spsa", {}), ("finite-difference", {}), ("noisy-rectifier", {}),
    ("noisy-rectifier", {"noise": "logistic", "std": 0.5}), ("sigmoid-noise", {}), ("gaussian-dropout", {}),
    ("gumbel-softmax", {}), ("st-gumbel", {"tau": 0.5}), ("gumbel-rao", {}), ("arsm", {}), ("rebar", {}),
    ("relax", {}), ("sts", {"beta_noise": 3.0}),
]


def test_every_builtin_continuous_estimator_is_covered():
    declared = {name for name, _ in CONTINUOUS}
    for entry in estimators.ESTIMATORS.entries():
        if entry.source == "built-in" and estimators.build_estimator(entry.name).randomness == "continuous":
            assert entry.name in declared, entry.name
    assert "sts" in declared  # continuous with its Beta noise on


@pytest.mark.parametrize("name, params", CONTINUOUS, ids=[f"{n}{p or ''}" for n, p in CONTINUOUS])
def test_integrated_moments_agree_with_monte_carlo(name, params):
    # REBAR (temperature and scale adapted for 256 estimates, then frozen) on two units: 4 logistic
    # dimensions that every coordinate depends on. RELAX unadapted (its network starts at 0): once
    # trained, tanh of the unbounded noise meets the ends of u = sigm(L) as a small power of 1 - u,
    # which no rule within 2^20 evaluations resolves to 1e-8 (its runs then say so; see the README)
    warmup = 0 if name == "relax" else 256
    result = harness.run(harness.make_config(name, params, "bernoulli-target", BINARY, seed=3, samples=20_000,
                                             warmup=warmup))
    assert result.status == "finished", result.error
    got = {m.name: m.value for m in result.metrics if m.scope == "all" and m.step is None}
    assert result.notes["exact_moments"].startswith("computed in float64 by quadrature"), result.notes["exact_moments"]
    assert result.notes["exact_check"].startswith("agrees: "), result.notes["exact_check"]
    assert {"exact_bias_norm", "exact_variance"} <= set(got)
    assert got["exact_variance"] == pytest.approx(got["variance"], rel=0.1)  # same estimator, not only p >= 1e-3


@pytest.mark.parametrize("name", ["gumbel-softmax", "st-gumbel", "gumbel-rao"])
def test_the_categorical_gumbel_family_agrees_with_monte_carlo(name):
    # three units: each coordinate integrates its own unit's Gumbels and enumerates only the argmax
    # draws it changes with (Gumbel-Rao: its unit's sample and its copies', 3^2, not all 3^6)
    result = harness.run(harness.make_config(name, {}, "categorical-target", {"units": 3, "K": 3, "logit": 0.4},
                                             seed=3, samples=20_000))
    assert result.status == "finished", result.error
    assert result.notes["exact_moments"].startswith("computed in float64 by quadrature"), result.notes["exact_moments"]
    assert result.notes["exact_check"].startswith("agrees: "), result.notes["exact_check"]
    assert "integrated in 3 group(s)" in result.notes["exact_moments"]


# -- (c) refusals ------------------------------------------------------------------------------
class _Undeclared(Estimator):
    """A uniform-noise estimator that declares no law."""

    randomness = "continuous"

    def forward(self, logits, loss_fn):
        u = self.rng.uniform(logits.shape, logits.detach())
        loss = loss_fn((u < torch.sigmoid(logits.detach())).to(logits.dtype))
        return attach_gradient(loss, logits, loss.detach().unsqueeze(-1) * (u - 0.5))


class _Misdeclared(_Undeclared):
    def noise_laws(self, logits, categorical=False):
        return (NoiseLaw("normal"),)


@pytest.mark.parametrize("estimator, reason", [
    (_Undeclared(), "not computed: _Undeclared does not declare the law of its continuous noise"),
    (_Misdeclared(), "not computed: the estimator drew uniform noise where it declares normal"),
])
def test_undeclared_or_wrongly_declared_noise_is_refused(estimator, reason):
    prob = problems.build_problem("bernoulli-target", BINARY)
    assert quadrature.integrate_exact(estimator, prob, prob.reference()) == (None, reason)


def test_over_the_budget_no_exact_moments_and_the_reason(monkeypatch):
    # ARM's coordinate i varies with u_i (3 pieces) and is constant on the pieces of the other two:
    # its first rule costs 3 x 2 nodes x 3^2 pieces = 54 evaluations, over a third of 150
    monkeypatch.setattr(quadrature, "MAX_QUADRATURE_EVALUATIONS", 150)
    prob = problems.build_problem("bernoulli-target", {"d": 3, "t": 0.45, "logit": 0.3})
    moments, reason = quadrature.integrate_exact(estimators.build_estimator("arm"), prob, prob.reference())
    assert moments is None
    assert reason == ("not computed: over 1 varying continuous dimension(s) and 2 constant on each piece x 2^0 "
                      "discrete outcomes, more than 50 evaluations are needed for two rules to compare")


# -- (d) the shortcuts agree with the plain product rule ---------------------------------------
QUADRATIC = {"d": 3, "data_seed": 1}


def test_pieces_where_the_estimate_is_constant_take_one_node_each(monkeypatch):
    # SPSA is constant on every piece of every u_j: one node per piece (the piece's mass) gives the
    # moments that the plain product rule over all three dimensions gives
    shortcut, reason = exact("spsa", {}, "bernoulli-quadratic", QUADRATIC)
    assert "3 constant on each piece (one node per piece)" in reason
    found = quadrature.dependencies

    def every_dimension_varies(integrand, layout):
        depends, _, coupled, steers = found(integrand, layout)
        return depends, depends, coupled, steers

    monkeypatch.setattr(quadrature, "dependencies", every_dimension_varies)
    plain, reason = exact("spsa", {}, "bernoulli-quadratic", QUADRATIC)
    assert "constant on each piece" not in reason
    assert torch.allclose(shortcut.mean, plain.mean, rtol=0, atol=1e-13)
    assert torch.allclose(shortcut.variance, plain.variance, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["gumbel-softmax", "noisy-rectifier"])
def test_an_estimate_additive_given_its_own_unit_is_integrated_one_unit_at_a_time(monkeypatch, name):
    # on a quadratic loss a relaxation's coordinate i is s(x_i) (c + sum_j c_j h(x_j)): given x_i a sum
    # over the other units, so their integrals are taken one at a time; the plain product rule agrees
    split, reason = exact(name, {}, "bernoulli-quadratic", QUADRATIC)
    assert "conditionally on 1 dimension(s), additive over 2 independent components" in reason
    monkeypatch.setattr(quadrature, "_split", lambda group, interact, layout: None)
    plain, reason = exact(name, {}, "bernoulli-quadratic", QUADRATIC)
    assert "additive" not in reason
    scale = float((plain.mean.abs() + plain.variance.sqrt()).max())
    assert float((split.mean - plain.mean).abs().max()) < 2e-8 * scale  # each within its 1e-8 tolerance
    assert float((split.variance - plain.variance).abs().max()) < 2e-8 * scale**2


@pytest.mark.parametrize("name, problem, params", [
    ("gumbel-softmax", "bernoulli-quadratic", QUADRATIC), ("noisy-rectifier", "bernoulli-quadratic", QUADRATIC),
    ("st-gumbel", "bernoulli-blackbox", {"d": 3}), ("spsa", "bernoulli-blackbox", {"d": 3}),
    ("rebar", "bernoulli-target", {"d": 3, "t": 0.45, "logit": 0.5, "spread": 2.0}),
])
def test_the_shortcuts_agree_with_monte_carlo(name, problem, params):
    warmup = 256 if name == "rebar" else 0
    result = harness.run(harness.make_config(name, {}, problem, params, seed=5, samples=20_000, warmup=warmup))
    assert result.status == "finished", result.error
    assert result.notes["exact_moments"].startswith("computed in float64 by quadrature"), result.notes["exact_moments"]
    assert result.notes["exact_check"].startswith("agrees: "), result.notes["exact_check"]


def test_arsm_over_three_categories_is_refused_with_the_reason():
    prob = problems.build_problem("categorical-target", {"units": 1, "K": 3})
    moments, reason = quadrature.integrate_exact(estimators.build_estimator("arsm"), prob, prob.reference())
    assert moments is None and "no product rule follows" in reason


def test_composite_rules_integrate_each_law_to_one():
    # total weight of the 16-node composite rule with breakpoints, per law (normal: to its 2e-19 tails)
    for kind, breaks in [("uniform", [0.3, 0.9]), ("logistic", [-1.0, 2.0]), ("normal", [-0.5, 1.5])]:
        b = torch.tensor(breaks, dtype=F64).expand(1, 1, 2)
        pieces = 3 + (len(quadrature.NORMAL_PIECES) if kind == "normal" else 0)
        index = torch.arange(pieces * 16).reshape(1, -1)
        x, w = quadrature.rule_nodes(kind, b.expand(1, index.shape[1], 2), index, torch.tensor(16))
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-13), kind
