"""Mixture-of-experts routers: the moe-router problem's exact gradient against formulas written out by
hand, the router estimators by exact replay and enumeration, unbiasedness claims by exact moments and
z-tests, the top-1 case reducing to the categorical estimators, skipped pairs with their reasons."""
from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

import estimators
import problems
from bench.enumeration import enumerate_exact
from conftest import MNIST_DATA_ROOT, needs_mnist
from bench.harness import make_config, run
from estimators import build_estimator
from estimators.base import Noise, ReplayNoise
from estimators.registry import RegistryError
from problems.base import CategoricalProblem

ROUTER_ESTIMATORS = [e.name for e in estimators.ESTIMATORS.entries() if e.cls.variables == "router"]


def router_problem(**params) -> problems.Problem:
    return problems.build_problem("moe-router", params)


def hand_objective(problem, W: torch.Tensor) -> torch.Tensor:
    """sum_n E[L_n] written out: every ordered routing's probability p_a (top-1) or
    p_a p_b / (1 - p_a) (top-2), its weights and the loss ||head(y) - t||^2, in plain loops."""
    x, F, t = problem.x.double(), problem.outputs.double(), problem.target.double()
    total = torch.zeros((), dtype=torch.float64)
    for n in range(x.shape[0]):
        p = torch.softmax(x[n] @ W, -1)
        E = p.shape[0]
        orders = [(a,) for a in range(E)] if problem.top_k == 1 else \
            [(a, b) for a in range(E) for b in range(E) if a != b]
        if problem.routing == "topk":
            orders = [tuple(int(i) for i in p.detach().topk(problem.top_k).indices)]
        for order in orders:
            if problem.routing == "topk":
                prob = torch.ones((), dtype=torch.float64)
            else:
                prob = p[order[0]] if len(order) == 1 else p[order[0]] * p[order[1]] / (1 - p[order[0]])
            kept = torch.stack([p[e] for e in order])
            w = kept if problem.weights == "softmax" else kept / kept.sum()
            y = sum(w[j] * F[n, e] for j, e in enumerate(order))
            out = torch.tanh(y) if problem.head == "tanh" else y
            total = total + prob * ((out - t[n]) ** 2).sum()
    return total


LAYERS = [dict(experts=3, top_k=1), dict(experts=4, top_k=2), dict(experts=3, top_k=2, weights="renormalised"),
          dict(experts=4, top_k=1, head="linear", inputs=3), dict(experts=4, top_k=2, routing="topk"),
          dict(experts=3, top_k=1, routing="topk", weights="renormalised")]


@pytest.mark.parametrize("params", LAYERS, ids=[",".join(f"{k}={v}" for k, v in p.items()) for p in LAYERS])
def test_exact_gradient_and_expected_loss_by_hand(params):
    problem = router_problem(**params)
    W = problem.router.double().clone().requires_grad_(True)
    objective = hand_objective(problem, W)
    (grad,) = torch.autograd.grad(objective, W)
    assert problem.expected_loss() == pytest.approx(float(objective.detach()), rel=1e-12)
    torch.testing.assert_close(problem.exact_gradient(), grad.reshape(-1), rtol=1e-10, atol=1e-12)
    ref = problem.reference()
    assert ref.exact and ref.gradient.dtype == torch.float64 and ref.gradient.shape == (problem.dim,)


def test_exact_gradient_matches_finite_differences():
    problem = router_problem(experts=4, top_k=2, weights="renormalised")
    W = problem.router.double()
    g = problem.exact_gradient().reshape(W.shape)
    h = 1e-6
    for i, j in [(0, 0), (1, 3), (2, 1)]:
        up, down = W.clone(), W.clone()
        up[i, j] += h
        down[i, j] -= h
        numeric = (hand_objective(problem, up) - hand_objective(problem, down)) / (2 * h)
        assert float(g[i, j]) == pytest.approx(float(numeric), rel=1e-6, abs=1e-9)


def test_problem_shape_units_and_reproducibility():
    a, b = router_problem(experts=5, d=4, inputs=3), router_problem(experts=5, d=4, inputs=3)
    assert a.dim == 20 and a.units == 3 and a.variables == "router" and a.trains_model is False
    torch.testing.assert_close(a.exact_gradient(), b.exact_gradient(), rtol=0, atol=0)
    c = router_problem(experts=5, d=4, inputs=3, data_seed=1)
    assert not torch.allclose(a.exact_gradient(), c.exact_gradient())
    est = build_estimator("reinforce-router")
    with est.drawing_from(Noise(torch.Generator().manual_seed(0))):
        assert a.sample_gradients(est, 7).shape == (7, 20)


@pytest.mark.parametrize("params, fragment", [
    ({"experts": 1}, "experts must be"), ({"top_k": 4}, "top_k must be below experts"),
    ({"routing": "noisy"}, "routing must be one of"), ({"weights": "sum"}, "weights must be one of"),
    ({"head": "relu"}, "head must be one of"), ({"inputs": 0}, "inputs must be"),
    ({"experts": 12, "top_k": 6}, "ordered routings per input"),
])
def test_bad_parameters_are_one_line_errors(params, fragment):
    with pytest.raises(RegistryError, match=fragment):
        router_problem(**params)


# -- the estimators by replay --------------------------------------------------------------------------
def replayed(problem, name: str, codes: list[list[int]], **params) -> torch.Tensor:
    """Estimates (rows, dim) of ``name`` with the discrete draws of each row given (ReplayNoise)."""
    estimator = build_estimator(name, params)
    noise = ReplayNoise(torch.tensor(codes, dtype=torch.float64))
    with estimator.drawing_from(noise), estimator.frozen():
        return problem.sample_gradients(estimator, len(codes)).double()


def by_hand(problem, value) -> torch.Tensor:
    """d/dW of sum_n value(n, p_n, logits_n) in float64: what an estimator's surrogate should differentiate to."""
    W = problem.router.double().clone().requires_grad_(True)
    x = problem.x.double()
    total = sum(value(n, torch.softmax(x[n] @ W, -1)) for n in range(x.shape[0]))
    (grad,) = torch.autograd.grad(total, W)
    return grad.reshape(-1)


def loss_of(problem, n: int, y: torch.Tensor) -> torch.Tensor:
    out = torch.tanh(y) if problem.head == "tanh" else y
    return ((out - problem.target.double()[n]) ** 2).sum()


def test_topk_router_replay_is_the_kept_weights_derivative():
    problem = router_problem(experts=4, top_k=1, inputs=2).double()
    F = problem.outputs
    codes = [2, 0]  # input 0 routed to expert 2, input 1 to expert 0
    expected = by_hand(problem, lambda n, p: loss_of(problem, n, p[codes[n]] * F[n, codes[n]]))
    torch.testing.assert_close(replayed(problem, "topk-router", [codes])[0], expected, rtol=1e-12, atol=1e-14)


def test_reinforce_router_replay_adds_the_score_term():
    problem = router_problem(experts=3, top_k=2, inputs=1, weights="renormalised").double()
    F, a, b = problem.outputs, 1, 2
    p = problem.routing_probabilities()[0]
    with torch.no_grad():
        w = torch.stack([p[a], p[b]]) / (p[a] + p[b])
        L = float(loss_of(problem, 0, w[0] * F[0, a] + w[1] * F[0, b]))

    def value(n, q):
        kept = torch.stack([q[a], q[b]])
        weights = kept / kept.sum()
        log_prob = torch.log(q[a]) + torch.log(q[b] / (1 - q[a]))
        return loss_of(problem, n, weights[0] * F[n, a] + weights[1] * F[n, b]) + L * log_prob

    torch.testing.assert_close(replayed(problem, "reinforce-router", [[a, b]])[0], by_hand(problem, value),
                               rtol=1e-12, atol=1e-14)


def test_densemixer_replay_is_the_dense_mixtures_gradient_at_the_sparse_output():
    problem = router_problem(experts=4, top_k=1, inputs=1).double()
    F, z = problem.outputs, 3
    p0 = problem.routing_probabilities()[0]
    with torch.no_grad():
        y_sparse = p0[z] * F[0, z]
        out = torch.tanh(y_sparse)
        dL_dy = 2 * (out - problem.target.double()[0]) * (1 - out**2)

    def value(n, q):  # <dL/dy at the sparse output, sum_e q_e f_e>: the dense mixture's router gradient
        return (dL_dy * (q.unsqueeze(-1) * F[n]).sum(0)).sum()

    torch.testing.assert_close(replayed(problem, "densemixer", [[z]])[0], by_hand(problem, value),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, coin, low, scale", [("sparsemixer", 0.5, 0.5, 2.0),
                                                    ("sparsemixer-v2", 0.25, 0.3333, 1.0)])
def test_sparsemixer_replay_follows_the_reference_midpoint_rule(name, coin, low, scale):
    """jitter_eps=10 masks nothing; expert 0 (not the argmax here) drawn, the coin tails: the forward
    multiplier is low * p_0 and the gradient scale * g dp_0 (sparsemixer.py / sparsemixer_v2.py)."""
    problem = router_problem(experts=3, top_k=1, inputs=1, data_seed=3).double()
    p0 = problem.routing_probabilities()[0]
    assert int(p0.argmax()) != 0
    F = problem.outputs
    with torch.no_grad():
        out = torch.tanh(low * p0[0] * F[0, 0])
        g = float((2 * (out - problem.target.double()[0]) * (1 - out**2) * F[0, 0]).sum())
    expected = by_hand(problem, lambda n, q: scale * g * q[0])
    torch.testing.assert_close(replayed(problem, name, [[0, 0]], jitter_eps=10.0)[0], expected,
                               rtol=1e-12, atol=1e-14)
    heads = replayed(problem, name, [[0, 1]], jitter_eps=10.0)[0]  # the coin says full: multiplier p_0
    with torch.no_grad():
        out = torch.tanh(p0[0] * F[0, 0])
        g = float((2 * (out - problem.target.double()[0]) * (1 - out**2) * F[0, 0]).sum())
    torch.testing.assert_close(heads, by_hand(problem, lambda n, q: scale * g * q[0]), rtol=1e-12, atol=1e-14)


def test_sparsemixer_jitter_mask_keeps_far_experts_out():
    """With the reference's jitter_eps = 0.1 an expert whose logit is more than 20 % (relative) below the
    largest is never drawn: on this point only the argmax survives, so the draw is certain and p~ is
    one-hot, and the estimate is exactly zero."""
    problem = router_problem(experts=4, top_k=1, inputs=2)
    exact, how = enumerate_exact(build_estimator("sparsemixer"), problem, problem.reference())
    assert exact is not None, how
    assert float(exact.mean.abs().max()) == 0.0 and float(exact.variance.max()) == 0.0


def test_reinmax_router_is_exact_when_the_loss_is_quadratic_in_the_choice():
    """head='linear': L is quadratic in the one-hot choice, where ReinMax (tau = 1) is exact; 'tanh': biased."""
    for head, biased in (("linear", False), ("tanh", True)):
        problem = router_problem(experts=4, top_k=1, inputs=2, head=head)
        exact, how = enumerate_exact(build_estimator("reinmax-router"), problem, problem.reference())
        assert exact is not None, how
        bias = float((exact.mean - problem.reference().gradient).norm())
        assert (bias > 1e-3) if biased else (bias < 1e-12)


def test_default_moe_fills_missing_experts_with_their_moving_average():
    problem = router_problem(experts=3, top_k=1, inputs=2).double()
    estimator = build_estimator("default-moe", {"decay": 0.5})
    noise = ReplayNoise(torch.tensor([[1, 1]], dtype=torch.float64))  # both inputs to expert 1
    with estimator.drawing_from(noise):
        problem.sample_gradients(estimator, 1)
    F = problem.outputs
    expected = torch.zeros(3, F.shape[-1], dtype=torch.float64)
    expected[1] = 0.5 * (F[0, 1] + F[1, 1]) / 2  # 0.5 * 0 + 0.5 * mean of the routed outputs
    torch.testing.assert_close(estimator.defaults, expected, rtol=1e-12, atol=0)
    defaults = estimator.defaults.clone()
    codes = [0, 2]

    def value(n, q):
        filled = sum(q[e] * defaults[e] for e in range(3) if e != codes[n])
        return loss_of(problem, n, q[codes[n]] * F[n, codes[n]] + filled)

    torch.testing.assert_close(replayed_with(problem, estimator, [codes]), by_hand(problem, value),
                               rtol=1e-12, atol=1e-14)


def replayed_with(problem, estimator, codes):
    noise = ReplayNoise(torch.tensor(codes, dtype=torch.float64))
    with estimator.drawing_from(noise), estimator.frozen():
        return problem.sample_gradients(estimator, len(codes)).double()[0]


# -- unbiasedness, exactly and by z-tests -------------------------------------------------------------
UNBIASED_LAYERS = [dict(experts=4, top_k=1), dict(experts=4, top_k=2, weights="renormalised", inputs=3)]


@pytest.mark.parametrize("params", UNBIASED_LAYERS, ids=["top1", "top2-renormalised"])
@pytest.mark.parametrize("name", [n for n in ROUTER_ESTIMATORS if build_estimator(n).unbiased])
def test_unbiased_router_estimators_have_zero_exact_bias(name, params):
    problem = router_problem(**params)
    exact, how = enumerate_exact(build_estimator(name), problem, problem.reference())
    assert exact is not None, how
    assert float((exact.mean - problem.reference().gradient).norm()) < 1e-12


@pytest.mark.parametrize("name", [n for n in ROUTER_ESTIMATORS if build_estimator(n).unbiased])
def test_unbiased_router_estimators_pass_the_z_test(name):
    """Through the harness, 100k estimates at seed 0: the Bonferroni z-test over the 12 coordinates
    has a false-alarm rate of at most 1e-3 (the threshold), and the exact bias is zero."""
    metrics = {m.name: m for m in run(make_config(name, {}, "moe-router", {"top_k": 2}, seed=0, samples=100_000,
                                                   warmup=2_000)).metrics if m.scope == "all"}
    assert metrics["unbiased_pvalue"].value > 1e-3
    assert metrics["exact_bias_norm"].value < 1e-12
    assert metrics["expert_evals"].value == 4.0  # 2 inputs x 2 kept experts


def test_biased_router_estimators_are_detected():
    """Each biased estimator's exact bias on the default point is far from rounding (the numbers the
    README's table shows), and a z-test on 100k estimates rejects the conventional router."""
    problem = router_problem(experts=4, top_k=1)
    truth = problem.reference().gradient
    for name in ROUTER_ESTIMATORS:
        estimator = build_estimator(name)
        if estimator.unbiased:
            continue
        assert estimator.unbiased is False
        exact, how = enumerate_exact(estimator, problem, problem.reference())
        assert exact is not None, how
        assert float((exact.mean - truth).norm()) > 1e-3, name
    metrics = {m.name: m for m in run(make_config("topk-router", {}, "moe-router", {}, seed=0, samples=100_000,
                                                   warmup=0)).metrics if m.scope == "all"}
    assert metrics["unbiased_pvalue"].value < 1e-6


# -- top-1 reduces to the categorical estimators -------------------------------------------------------
class _ChoiceProblem(CategoricalProblem):
    """The router's one input as a categorical unit: L(h) = ||head(sum_e h_e f_e) - t||^2 at the router's
    logits (top-1 with renormalised weights: the chosen expert has weight 1)."""

    def __init__(self, router):
        super().__init__()
        self.router_problem = router
        self.register_buffer("logits", router.logits(router.router).reshape(1, -1))

    def loss(self, h):
        y = (h.squeeze(-2).unsqueeze(-1) * self.router_problem.outputs[0].to(h.dtype)).sum(-2)
        return self.router_problem.loss(y.unsqueeze(-2)).squeeze(-1)


@pytest.mark.parametrize("router_name, categorical_name", [("reinforce-router", "reinforce"),
                                                           ("reinmax-router", "reinmax"),
                                                           ("st-router", "straight-through")])
def test_top1_routing_is_the_categorical_estimator_on_the_choice(router_name, categorical_name):
    problem = router_problem(experts=4, top_k=1, inputs=1, weights="renormalised").double()
    choice = _ChoiceProblem(problem).double()
    truth_logits = choice.exact_gradient().reshape(1, -1)
    x = problem.x.double()
    torch.testing.assert_close(problem.exact_gradient().reshape(problem.d, -1), x.T @ truth_logits,
                               rtol=1e-10, atol=1e-13)
    for code in range(4):
        codes = torch.tensor([[code]], dtype=torch.float64)
        router_estimate = replayed(problem, router_name, [[code]])
        categorical = build_estimator(categorical_name)
        with categorical.drawing_from(ReplayNoise(codes)), categorical.frozen():
            logit_estimate = choice.sample_gradients(categorical, 1).double()
        torch.testing.assert_close(router_estimate.reshape(problem.d, -1), x.T @ logit_estimate,
                                   rtol=1e-10, atol=1e-13)


# -- pairs that do not apply ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, params, fragment", [
    ("sparsemixer", {"routing": "topk"}, "samples its routing"),
    ("reinforce-router", {"routing": "topk"}, "samples its routing"),
    ("sparsemixer-v2", {"top_k": 2}, "top-1 only"),
    ("reinmax-router", {"top_k": 2}, "top-1 only"),
    ("sparsemixer", {"weights": "renormalised"}, "weights='softmax' only"),
    ("reinforce", {}, "serves binary and categorical units only"),
])
def test_pairs_that_do_not_apply_are_skipped_with_the_reason(name, params, fragment):
    result = run(make_config(name, {}, "moe-router", params, seed=0, samples=100, warmup=0))
    assert result.status == "skipped" and fragment in result.error


def test_router_estimators_on_unit_problems_are_skipped():
    result = run(make_config("densemixer", {}, "bernoulli-target", {}, seed=0, samples=100, warmup=0))
    assert result.status == "skipped" and "router units only" in result.error


def test_traits_show_the_cost_and_the_forward():
    traits = {name: build_estimator(name).traits().as_dict() for name in ROUTER_ESTIMATORS}
    assert all(t["family"] == "router" for t in traits.values())
    assert traits["densemixer"]["expert_evals"] == "E" and traits["topk-router"]["expert_evals"] == "k"
    assert traits["default-moe"]["forward_differs"] and traits["sparsemixer"]["forward_differs"]
    assert not traits["densemixer"]["forward_differs"] and not traits["topk-router"]["forward_differs"]
    problem = router_problem(experts=8, top_k=2, inputs=3)
    assert problem.evaluations_per_estimate(build_estimator("densemixer")) == 24
    assert problem.evaluations_per_estimate(build_estimator("topk-router")) == 6
    assert set(ROUTER_ESTIMATORS).isdisjoint(estimators.unit_estimator_names())


def test_the_layer_counts_the_experts_it_is_asked_for():
    problem = router_problem(experts=4, top_k=1, inputs=2)
    for name, per_input in (("densemixer", 4), ("topk-router", 1), ("default-moe", 1)):
        counter = [0]
        layer = problem.layer(counter)
        estimator = build_estimator(name)
        logits = problem.logits(problem.router).expand(5, -1, -1)
        with estimator.drawing_from(Noise(torch.Generator().manual_seed(1))):
            estimator(logits, problem.loss, router=layer)
        assert counter[0] == 5 * 2 * per_input


# -- training and the experiment -----------------------------------------------------------------------
@needs_mnist
def test_moe_mnist_records_errors_balance_and_the_experts_it_evaluated(monkeypatch):
    monkeypatch.setenv("STOCHGRAD_BENCH_DATA", str(MNIST_DATA_ROOT))
    for name, per_example in (("topk-router", 1.0), ("densemixer", 4.0)):
        problem = problems.build_problem("moe-mnist", {"epochs": 2, "train_subset": 300, "eval_subset": 100})
        estimator = build_estimator(name)
        with estimator.drawing_from(Noise(torch.Generator().manual_seed(0))):
            records = list(problem.fit(estimator, seed=0))
        by_name = {}
        for record in records:
            by_name.setdefault(record.name, []).append(record)
        assert {"train_loss", "valid_error", "test_error", "load_imbalance", "expert_evals", "step_time_s"} <= set(by_name)
        assert [r.epoch for r in by_name["test_error"]] == [1, 2]
        assert all(r.value == per_example for r in by_name["expert_evals"])
        assert by_name["flops_per_example"][0].value == 784 * 4 + per_example * (784 * 32 + 32 * 10)
        assert all(1.0 <= r.value <= 4.0 for r in by_name["load_imbalance"])
        assert all(0.0 <= r.value <= 100.0 for r in by_name["test_error"])
        model = problem.trained_model
        x = torch.rand(7, 784)
        out, index = model.inference(x, 1, "softmax")
        p = torch.softmax(model.logits(x), -1)
        manual = torch.stack([p[i, index[i, 0]] * model.expert(int(index[i, 0]), x[i:i + 1])[0] for i in range(7)])
        torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-6)


def test_moe_mnist_skips_sampling_estimators_on_topk_routing():
    problem = problems.build_problem("moe-mnist", {"routing": "topk"})
    with pytest.raises(ValueError, match="samples its routing"):
        problem.check_estimator(build_estimator("sparsemixer"))
    problem.check_estimator(build_estimator("densemixer"))


def test_the_experiment_plans_the_pairs_that_apply():
    from experiments import build_experiment

    experiment = build_experiment("moe-routers")
    planned = experiment.runs(quick=False, seeds=[0, 1, 2], device="cpu")
    gradient = [p for p in planned if p.config.problem == "moe-router"]
    training = [p for p in planned if p.config.problem == "moe-mnist"]
    assert len(gradient) == 9 + 6 + 4 and {p.config.seed for p in gradient} == {0}
    assert len(training) == (9 + 4) * 3
    assert len({p.config.key for p in planned}) == len(planned)
    quick = experiment.runs(quick=True, seeds=[0], device="cpu")
    assert all(p.config.problem_params.get("train_subset") == 500 for p in quick if p.config.problem == "moe-mnist")


def test_the_experiment_terminal_and_report_tables_are_equal(tmp_path):
    """``reproduce moe-routers`` prints the report section's tables (one tables() object): equal
    content, unfinished runs named in both."""
    from analysis.frames import load_results
    from bench.harness import RunResult
    from bench.metrics import Metric
    from bench.store import Store
    from experiments import build_experiment
    from experiments.base import planned_results

    experiment = build_experiment("moe-routers")
    planned = experiment.runs(quick=True, seeds=[0, 1], device="cpu")
    with Store(tmp_path / "m.db") as store:
        for i, p in enumerate(planned):
            if p.config.problem == "moe-router":
                metrics = [Metric("exact_bias_norm", 0.01 * i), Metric("exact_variance", 0.5 + i),
                           Metric("exact_cosine", 0.9), Metric("expert_evals", 2.0),
                           Metric("time_per_estimate_s", 1e-5)]
            else:
                metrics = [Metric(name, value + p.config.seed, epoch=1) for name, value in
                           (("test_error", 10.0), ("load_imbalance", 1.5), ("step_time_s", 0.01),
                            ("flops_per_example", 5e4), ("expert_evals", 1.0))]
            status = "failed" if i == len(planned) - 1 else "finished"
            store.save(RunResult(p.config, status, metrics if status == "finished" else [], {},
                                 "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:01+00:00", 1.0,
                                 "out of memory" if status == "failed" else None), {"torch": "test"}, "abc", "cpu")
        text = experiment.table(store, planned, True, 100)
        terminal = experiment.tables(planned_results(store, planned), planned)
    (section,) = experiment.sections(load_results(tmp_path / "m.db"))
    assert len(terminal) == len(section.tables) == 4  # three gradient layers and the training table
    for ours, report in zip(terminal, section.tables):
        assert ours.title == report.title and ours.caption == report.caption and ours.frame.equals(report.frame)
        assert report.to_text(100) in text
    assert max(map(len, text.splitlines())) <= 100
    training = terminal[-1].frame.set_index("run")
    last = planned[-1]
    assert training.at[last.label, "runs"] == "1/2"  # its seed 1 failed
    assert f"{last.label} seed 1 failed: out of memory" in terminal[-1].caption
    assert training.at["topk-router [mnist sampled]", "test err %"] == "10.5 ± 0.71"  # 10 and 11 over seeds
