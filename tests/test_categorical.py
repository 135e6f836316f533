"""Categorical units: the REINFORCE family's K-way score, exact enumeration over K^units, exact
moments by mixed-radix replay in the harness, the variables check, and the categorical problems
(categorical-target, its K = 2 agreement with bernoulli-target, ReinMax's polynomial programming)."""
from __future__ import annotations

import itertools
import math

import pytest
import scipy.stats
import torch

import estimators
import problems
from bench import enumeration, harness
from bench.runinfo import describe
from estimators.base import Estimator, Noise, ReplayNoise, attach_gradient

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY = ["reinforce", "reinforce-ma", "reinforce-optimal", "reinforce-loo", "exact"]


def run(estimator: str, problem: str, problem_params: dict, samples: int = 2000, seed: int = 0,
        estimator_params: dict | None = None, warmup: int = 64):
    config = harness.make_config(estimator, estimator_params or {}, problem, problem_params, seed, samples,
                                 warmup=warmup)
    return harness.run(config)


def metric(result, name: str, scope: str = "all") -> float:
    return next(m.value for m in result.metrics if m.name == name and m.scope == scope)


# -- a tiny case by hand: 2 units, K = 3, categorical-target(t=0.3, logit=0.75) ----------------------
T, LOGIT, K, UNITS = 0.3, 0.75, 3, 2  # a logit exact in float32, as the buffer is built
VALUES = [k / (K - 1) for k in range(K)]
COSTS = [(v - T) ** 2 for v in VALUES]  # the loss of one unit in category k
_Z = sum(math.exp(LOGIT * v) for v in VALUES)
P = [math.exp(LOGIT * v) / _Z for v in VALUES]
OUTCOMES = list(itertools.product(range(K), repeat=UNITS))  # (j1, j2), unit 1's category first


def tiny():
    return problems.build_problem("categorical-target", {"units": UNITS, "K": K, "t": T, "logit": LOGIT}).double()


def replay_all(estimator, problem, configs) -> tuple[torch.Tensor, torch.Tensor]:
    noise = ReplayNoise(torch.tensor(configs, dtype=torch.float64))
    with estimator.drawing_from(noise), estimator.frozen():
        g = problem.sample_gradients(estimator, len(configs))
    return g.view(len(configs), UNITS, K), noise.log_prob.exp()


def score_estimate(outcome, baseline) -> list[list[float]]:
    """(e_{j_i} - p)_k (L - baseline_ik) for one outcome, in plain Python."""
    loss = sum(COSTS[j] for j in outcome)
    return [[((j == k) - P[k]) * (loss - baseline[i][k]) for k in range(K)] for i, j in enumerate(outcome)]


def hand_moments(estimate) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and per-coordinate variance of estimate(outcome) over all outcomes, by hand."""
    prob = {o: math.prod(P[j] for j in o) for o in OUTCOMES}
    values = {o: torch.tensor(estimate(o), dtype=torch.float64) for o in OUTCOMES}
    mean = sum(prob[o] * values[o] for o in OUTCOMES)
    return mean, sum(prob[o] * (values[o] - mean) ** 2 for o in OUTCOMES)


def test_reinforce_categorical_estimates_by_replay_are_the_hand_values():
    estimates, weight = replay_all(estimators.build_estimator("reinforce").double(), tiny(), OUTCOMES)
    zero = [[0.0] * K] * UNITS
    torch.testing.assert_close(estimates, torch.tensor([score_estimate(o, zero) for o in OUTCOMES],
                                                       dtype=torch.float64), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(weight, torch.tensor([math.prod(P[j] for j in o) for o in OUTCOMES],
                                                    dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["reinforce", "reinforce-ma", "reinforce-optimal", "reinforce-loo"])
def test_exact_moments_by_replay_match_the_hand_computed_ones(name):
    """Frozen baselines set by hand (a scalar for -ma, one per unit and category for -optimal);
    the harness's enumeration over 3^2 (3^4 for reinforce-loo(K=2)) outcomes against plain-Python
    sums, to float64 rounding."""
    problem = tiny()
    est = estimators.build_estimator(name, {"K": 2} if name == "reinforce-loo" else {}).double()
    baseline = [[0.0] * K] * UNITS
    if name == "reinforce-ma":
        est.mean_loss.fill_(0.25)
        est.seen.fill_(True)
        baseline = [[0.25] * K] * UNITS
    elif name == "reinforce-optimal":
        baseline = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
        est.numerator = torch.tensor(baseline, dtype=torch.float64) * 2
        est.denominator = torch.full((UNITS, K), 2.0, dtype=torch.float64)
    if name == "reinforce-loo":
        pairs = list(itertools.product(OUTCOMES, repeat=2))
        prob = {pair: math.prod(P[j] for o in pair for j in o) for pair in pairs}

        def loo(pair):  # (e_a - e_b)(L_a - L_b) / 2 per unit
            a, b = pair
            la, lb = sum(COSTS[j] for j in a), sum(COSTS[j] for j in b)
            return [[((a[i] == k) - (b[i] == k)) * (la - lb) / 2 for k in range(K)] for i in range(UNITS)]

        values = {pair: torch.tensor(loo(pair), dtype=torch.float64) for pair in pairs}
        mean = sum(prob[q] * values[q] for q in pairs)
        variance = sum(prob[q] * (values[q] - mean) ** 2 for q in pairs)
        estimates, _ = replay_all(est, problem, [[*a, *b] for a, b in pairs])  # draw 1, then draw 2
        torch.testing.assert_close(estimates, torch.stack([values[q] for q in pairs]), rtol=1e-14, atol=1e-15)
    else:
        mean, variance = hand_moments(lambda o: score_estimate(o, baseline))
    exact, reason = enumeration.enumerate_exact(est, problem, problem.reference())
    assert reason == f"computed in float64 over 3^{4 if name == 'reinforce-loo' else 2} outcomes"
    torch.testing.assert_close(exact.mean, mean.reshape(-1), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(exact.variance, variance.reshape(-1), rtol=1e-13, atol=1e-15)
    # unbiased: the mean is the closed-form gradient p_k (c_k - <p, c>)
    truth = [[P[k] * (COSTS[k] - sum(p * c for p, c in zip(P, COSTS))) for k in range(K)]] * UNITS
    torch.testing.assert_close(exact.mean, torch.tensor(truth, dtype=torch.float64).reshape(-1),
                               rtol=1e-12, atol=1e-15)


def test_reinforce_optimal_categorical_baseline_is_per_unit_and_category():
    """observe() keeps E[(h_ik - p_ik)^2 L] and E[(h_ik - p_ik)^2] per unit and category (the batch
    means of the first call), and the next estimate uses their ratio."""
    problem = tiny()
    est = estimators.build_estimator("reinforce-optimal").double()
    noise = ReplayNoise(torch.tensor(OUTCOMES, dtype=torch.float64))
    with est.drawing_from(noise):
        problem.sample_gradients(est, len(OUTCOMES))
    onehot = torch.nn.functional.one_hot(torch.tensor(OUTCOMES), K).double()
    probs = torch.tensor(P, dtype=torch.float64)
    loss = problem.loss(onehot)
    weight = (onehot - probs) ** 2
    torch.testing.assert_close(est.numerator, (weight * loss[:, None, None]).mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(est.denominator, weight.mean(0), rtol=1e-14, atol=0)
    assert est.numerator.shape == (UNITS, K)


@pytest.mark.parametrize("name, params", [("reinforce", {}), ("reinforce-loo", {"K": 3})])
def test_categorical_reinforce_is_unbiased_z_test(name, params):
    """Per-coordinate one-sample t-tests of 20,000 estimates against the closed form, Bonferroni
    over the 12 coordinates: a correct estimator fails this at a fixed seed with probability 1e-3;
    the same test rejects a truth shifted by a tenth of its scale (power check)."""
    problem = problems.build_problem("categorical-target", {"units": 3, "K": 4, "t": 0.35, "logit": 1.3}).double()
    est = estimators.build_estimator(name, params).double()
    with est.drawing_from(Noise(torch.Generator().manual_seed(11))):
        g = problem.sample_gradients(est, 20_000).numpy()
    truth = problem.exact_gradient().numpy()
    assert scipy.stats.ttest_1samp(g, truth).pvalue.min() * g.shape[1] > 1e-3
    shifted = truth + 0.1 * abs(truth).max()
    assert scipy.stats.ttest_1samp(g, shifted).pvalue.min() * g.shape[1] < 1e-3


def test_binary_path_unchanged_by_the_categorical_keyword():
    """categorical=False (the default) draws Bernoulli bits: same estimates as before the change,
    i.e. (h - sigm(a)) L with h = 1[u < p] from the same generator."""
    problem = problems.build_problem("bernoulli-target", {"d": 3, "t": 0.3, "logit": -0.375}).double()
    est = estimators.build_estimator("reinforce").double()
    with est.drawing_from(Noise(torch.Generator().manual_seed(5))):
        g = problem.sample_gradients(est, 50)
    u = torch.rand((50, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    p = torch.sigmoid(torch.tensor(-0.375, dtype=torch.float64))
    h = (u < p).double()
    torch.testing.assert_close(g, (h - p) * ((h - 0.3) ** 2).sum(-1, keepdim=True), rtol=0, atol=0)


# -- exact enumeration over K^units ----------------------------------------------------------------
def test_exact_estimator_enumerates_categorical_configurations():
    problem = problems.build_problem("categorical-target", {"units": 3, "K": 4, "t": 0.2, "logit": -0.9}).double()
    logits = problem.logits.expand(2, 3, 4).clone().requires_grad_(True)
    surrogate = estimators.build_estimator("exact")(logits, problem.loss, categorical=True)
    assert surrogate.shape == (2,)
    torch.testing.assert_close(surrogate, torch.full((2,), problem.expected_loss(), dtype=torch.float64),
                               rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(surrogate.sum(), logits)
    torch.testing.assert_close(grad.reshape(2, -1), problem.exact_gradient().expand(2, -1), rtol=1e-12, atol=1e-15)


def test_exact_refuses_too_many_categorical_configurations():
    est = estimators.build_estimator("exact", {"max_units": 6})
    with pytest.raises(ValueError, match=r"3\^4 configurations exceeds max_units=6"):
        est(torch.zeros(1, 4, 3), lambda h: h.sum((-2, -1)), categorical=True)


# -- the harness: mixed-radix counting and enumeration, loss evaluations, variables ----------------
def test_counting_noise_counts_categorical_draws_with_their_arity():
    problem = problems.build_problem("categorical-target", {"units": 3, "K": 4})
    assert enumeration.count_arities(estimators.build_estimator("reinforce"), problem) == [4, 4, 4]
    assert enumeration.count_arities(estimators.build_estimator("reinforce-loo", {"K": 2}), problem) == [4] * 6
    assert enumeration.count_arities(estimators.build_estimator("exact"), problem) == []
    assert harness.count_bits(estimators.build_estimator("reinforce-loo", {"K": 2}), problem) == 6


def test_mixed_radix_digits_and_outcome_names():
    digits = enumeration.mixed_radix(torch.arange(12), torch.tensor([2, 3, 2]))
    assert digits.tolist() == [[a, b, c] for c in range(2) for b in range(3) for a in range(2)]
    assert enumeration.outcome_count([2] * 10) == "2^10"
    assert enumeration.outcome_count([3, 2, 3, 3]) == "2^1 x 3^3"
    assert enumeration.outcome_count([]) == "2^0"


def test_enumeration_budget_counts_outcomes_not_draws():
    problem = problems.build_problem("categorical-target", {"units": 4, "K": 3})
    est = estimators.build_estimator("reinforce-loo")  # 4 samples x 4 units: 3^16 > 2^20
    assert enumeration.enumerate_exact(est, problem, problem.reference()) == (
        None, "not computed: 3^16 outcomes exceed 2^20")


class _BatchMeanBaseline(Estimator):
    """A categorical REINFORCE whose baseline is the batch's mean loss: couples the examples."""

    variables = "categorical"

    def forward(self, logits, loss_fn, *, categorical=False):
        probs = torch.softmax(logits, -1).detach()
        h = self.rng.categorical(probs)
        loss = loss_fn(h)
        centred = (loss.detach() - loss.detach().mean())[..., None, None]
        return attach_gradient(loss, logits, (h - probs) * centred, event_dims=2)


def test_coupled_categorical_estimator_gets_no_exact_moments():
    problem = problems.build_problem("categorical-target", {"units": 2, "K": 3, "logit": 0.5})
    assert enumeration.enumerate_exact(_BatchMeanBaseline(), problem, problem.reference()) == (
        None, f"not computed: {enumeration.COUPLED}")


def test_loss_evaluations_count_examples_not_units_for_categorical_units():
    result = run("reinforce-loo", "categorical-target", {"units": 4, "K": 3}, samples=256)
    assert result.status == "finished", result.error
    assert metric(result, "loss_evals") == 4
    result = run("exact", "categorical-target", {"units": 2, "K": 3}, samples=64)
    assert metric(result, "loss_evals") == 9


def test_mismatched_pairs_are_skipped_with_a_reason_naming_both():
    result = run("muprop", "categorical-target", {"units": 2, "K": 3})
    assert result.status == "skipped"
    assert result.error == "muprop serves binary units only; categorical-target has categorical units"
    categorical_only = _BatchMeanBaseline()
    for problem in (problems.build_problem("bernoulli-target"), problems.build_problem("sigmoid-belief-net",
                                                                                        {"widths": "2-2"})):
        with pytest.raises(harness.Incompatible, match=rf"serves categorical units only; {problem.name} has binary"):
            harness.check_compatible(categorical_only, problem)
    for name in FAMILY:  # 'both' serves either
        harness.check_compatible(estimators.build_estimator(name), problems.build_problem("bernoulli-target"))
        harness.check_compatible(estimators.build_estimator(name), problems.build_problem("categorical-target"))


@pytest.mark.parametrize("name", FAMILY)
def test_family_declares_both_variables(name):
    assert estimators.build_estimator(name).traits().variables == "both"


# -- K = 2 is bernoulli-target ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["reinforce", "reinforce-loo", "exact"])
def test_two_categories_give_bernoulli_target_numbers_through_the_harness(name):
    """categorical-target(K=2) has logits (0, logit) per unit: category 1 is the bit. Its exact
    gradient is the binary one in the category-1 coordinates and minus it in the category-0 ones,
    and so is the exact mean of the estimate; each coordinate's exact variance is the binary
    unit's, so over the 2 x d coordinates the exact variance is twice the binary one and the exact
    bias norm sqrt(2) times it."""
    binary = run(name, "bernoulli-target", {"d": 3, "t": 0.3, "logit": -0.7}, samples=500)
    cat = run(name, "categorical-target", {"units": 3, "K": 2, "t": 0.3, "logit": -0.7}, samples=500)
    assert binary.status == cat.status == "finished"
    assert binary.notes["exact_moments"] == cat.notes["exact_moments"]  # 'computed ... over 2^d outcomes'
    for key, factor in (("exact_variance", 2.0), ("exact_bias_norm", math.sqrt(2))):
        assert metric(cat, key) == pytest.approx(factor * metric(binary, key), rel=1e-12, abs=1e-12)
    b_problem = problems.build_problem("bernoulli-target", {"d": 3, "t": 0.3, "logit": -0.7})
    c_problem = problems.build_problem("categorical-target", {"units": 3, "K": 2, "t": 0.3, "logit": -0.7})
    b_grad, c_grad = b_problem.reference().gradient, c_problem.reference().gradient.view(3, 2)
    torch.testing.assert_close(c_grad[:, 1], b_grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(c_grad[:, 0], -b_grad, rtol=1e-12, atol=1e-15)
    b_exact, _ = enumeration.enumerate_exact(estimators.build_estimator(name), b_problem, b_problem.reference())
    c_exact, _ = enumeration.enumerate_exact(estimators.build_estimator(name), c_problem, c_problem.reference())
    torch.testing.assert_close(c_exact.mean.view(3, 2), torch.stack([-b_exact.mean, b_exact.mean], 1),
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(c_exact.variance.view(3, 2), torch.stack([b_exact.variance] * 2, 1),
                               rtol=1e-12, atol=1e-15)
    assert b_problem.expected_loss() == pytest.approx(c_problem.expected_loss(), rel=1e-12)


def test_bench_run_all_prints_exact_bias_and_variance_on_categorical_target(cli):
    ran = cli("run", "--estimators", "all", "--problems", "categorical-target(units=4,K=3)", "--samples", "200",
              "--warmup", "64", "--columns", "exact_bias_norm,exact_variance", "--db", "r.db")
    assert ran.returncode == 0, ran.stderr
    rows = {line.split()[1]: line.split()[2:] for line in ran.stdout.splitlines()
            if line.split()[:1] and line.split()[0].isdigit() and len(line.split()) > 2}
    for name in ("reinforce", "reinforce-ma", "reinforce-optimal", "exact", "straight-through", "reinmax",
                 "gapped-st", "indecater"):
        assert name in rows and "-" not in rows[name][1:], (name, ran.stdout)
    # reinforce-loo's 4 samples x 4 units are 3^16 outcomes, beyond the 2^20 budget: said so
    assert "reinforce-loo on categorical-target: 3^16 outcomes exceed 2^20" in ran.stdout
    said = " ".join(ran.stdout.split())  # the binary-only estimators, skipped for one reason, share a line
    assert ("skipped, each serves binary units only; categorical-target has categorical units: arm, disarm, "
            "muprop, nvil") in said
    assert "failed" not in ran.stdout


# -- polynomial programming ------------------------------------------------------------------------
@pytest.mark.parametrize("p, initial, infimum", [(2.0, "0.2525", "0.2025"), (1.5, "0.35488", "0.30187"),
                                                 (3.0, "0.12875", "0.091125")])
def test_polynomial_programming_exact_losses(p, initial, infimum):
    """ReinMax sec. 6.1's numbers at t = 0.45 and 128 units, to the printed digits."""
    problem = problems.build_problem("polynomial-programming", {"p": p})
    assert problem.units == 128 and problem.dim == 256
    digits = len(initial.split(".")[1])
    assert f"{problem.expected_loss():.{digits}f}" == initial
    assert f"{problem.infimum():.{len(infimum.split('.')[1])}f}" == infimum
    assert problem.exact_gradient().shape == (256,)


def test_polynomial_programming_expected_loss_agrees_with_sampling():
    """20,000 sampled losses at logit 0.6 (p = 1.5, K = 3): z-test of the mean against the closed
    form (fails at a fixed seed with probability 1e-3 if the closed form is right)."""
    problem = problems.build_problem("polynomial-programming", {"p": 1.5, "units": 16, "K": 3, "logit": 0.6}).double()
    h = Noise(torch.Generator().manual_seed(2)).categorical(torch.softmax(problem.logits, -1), (20_000, 16, 3))
    losses = problem.loss(h).numpy()
    z = (losses.mean() - problem.expected_loss()) / scipy.stats.sem(losses)
    assert 2 * scipy.stats.norm.sf(abs(z)) > 1e-3


def test_polynomial_programming_training_records_the_exact_loss_and_improves():
    result = run("reinforce-loo", "polynomial-programming-training",
                 {"units": 16, "steps": 60, "lr": 0.05, "batch": 8, "log_every": 20})
    assert result.status == "finished", result.error
    curve = {m.step: m.value for m in result.metrics if m.name == "train_loss"}
    assert sorted(curve) == [0, 20, 40, 60]
    start = problems.build_problem("polynomial-programming-training", {"units": 16}).initial_logits(0)
    assert curve[0] == pytest.approx(problems.build_problem("polynomial-programming", {"units": 16})
                                     .closed_form(start)[1], rel=1e-6)
    assert curve[60] < curve[0] - 0.02 and curve[60] > 0.2025


def test_polynomial_programming_training_refuses_binary_estimators():
    result = run("muprop", "polynomial-programming-training", {"units": 4, "steps": 2})
    assert result.status == "skipped" and "has categorical units" in result.error


@pytest.mark.parametrize("name, params, fragment", [
    ("categorical-target", {"K": 1}, "K must be at least 2"),
    ("categorical-target", {"K": 10**18}, "K must be at least 2 and at most 1,048,576"),
    ("categorical-target", {"units": 0}, "units must be at least 1"),
    ("polynomial-programming", {"p": 0.5}, "p must be a number >= 1"),
    ("polynomial-programming", {"t": 2.0}, "t must be in [0, 1]"),
    ("polynomial-programming-training", {"lr": 0.0}, "lr must be a finite number > 0"),
])
def test_bad_parameters_are_one_line_errors(name, params, fragment):
    with pytest.raises(ValueError) as info:
        problems.build_problem(name, params)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_cli_refuses_a_bad_categorical_parameter_with_one_line(cli):
    ran = cli("run", "--estimators", "reinforce", "--problems", "categorical-target(K=1)", "--db", "r.db")
    assert ran.returncode == 2 and ran.stderr.startswith("error: ") and ran.stderr.count("\n") == 1
    assert "K must be at least 2" in ran.stderr
    assert "Traceback" not in ran.stderr


@pytest.mark.parametrize("spec, expected", [(("exact", {}), 3**4), (("indecater", {}), 1 * 3 * 4),
                                            (("arsm", {}), 3 * 2 // 2 + 1), (("reinforce-loo", {"K": 3}), 3),
                                            (("straight-through", {}), 1)],
                         ids=["exact", "indecater", "arsm", "reinforce-loo", "straight-through"])
def test_evaluations_per_estimate_count_the_categories(spec, expected):
    """The harness sizes chunks and the notes state evaluations from K (not the binary 2^units)."""
    problem = problems.build_problem("categorical-target", {"units": 4, "K": 3})
    estimator = estimators.build_estimator(*spec)
    assert problem.evaluations_per_estimate(estimator) == expected
    assert describe(estimator, problem, spec[0], "categorical-target")["estimator"]["loss_evaluations"] == expected


def test_sparsity_is_not_reported_for_categorical_units():
    """One-hot h is (K - 1) / K zeros for every estimator: no sparsity metric, unlike binary units."""
    categorical = run("reinforce", "categorical-target", {"units": 2, "K": 3}, samples=64)
    assert categorical.status == "finished"
    assert not [m for m in categorical.metrics if m.name == "sparsity"]
    binary = run("reinforce", "bernoulli-target", {"d": 2}, samples=64)
    assert [m for m in binary.metrics if m.name == "sparsity"]
