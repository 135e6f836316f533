"""Deep sigmoid belief nets: estimators through stacked layers, per-layer unbiasedness, the bias
of straight-through against depth, exact values by replay, the estimated reference, training.

The problem contract (shapes, dtypes, devices, exact gradient vs enumeration and vs autograd of
the enumerated expected loss, reproducible data) runs in tests/test_problems.py
(``TestSigmoidBeliefNet``). Statistical tests run at fixed seeds, so they are deterministic; each
states the false-alarm rate it would have at a random seed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import problems
from bench.harness import exact_estimator_moments, make_config, run
from estimators import ESTIMATORS, Estimator, build_estimator, unit_estimator_names
from estimators.base import Noise, ReplayNoise, all_configurations, attach_gradient
from estimators.registry import RegistryError
from problems.sigmoid_belief_net import _REFERENCE_CACHE, SigmoidBeliefNet

F64 = torch.float64


def sbn(**params) -> SigmoidBeliefNet:
    return problems.build_problem("sigmoid-belief-net", params)


def seeded(estimator, seed: int = 0):
    """``with seeded(estimator, seed) as est:`` -- est draws from a generator seeded with ``seed``."""
    return estimator.drawing_from(Noise(torch.Generator().manual_seed(seed)))


def spec_id(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def nested_evaluations(estimator, widths) -> int:
    return math.prod(estimator.loss_evaluations(w) for w in widths)


# =============================================================================================
# parameters
# =============================================================================================

@pytest.mark.parametrize("params, widths", [
    ({}, (4, 3, 2)),
    ({"widths": "8-6-4"}, (8, 6, 4)),
    ({"widths": 5}, (5,)),
    ({"depth": 3, "width": 4}, (4, 4, 4)),
    ({"depth": 1, "width": 7}, (7,)),
], ids=["default", "widths-8-6-4", "widths-int", "depth-3-width-4", "depth-1"])
def test_widths_from_either_spelling(params, widths):
    problem = sbn(**params)
    assert problem.widths == widths
    assert problem.depth == len(widths) and problem.units == sum(widths)


def test_spec_strings_reach_the_problem():
    from bench.specs import parse_spec

    name, params = parse_spec("sigmoid-belief-net(widths=8-6-4,loss=target,hidden_weight=0.5)")
    problem = problems.build_problem(name, params)
    assert problem.widths == (8, 6, 4) and problem.loss_kind == "target" and problem.hidden_weight == 0.5


@pytest.mark.parametrize("name, params, fragment", [
    ("sigmoid-belief-net", {"widths": "8--4"}, "widths must be empty (the default sizes) or layer sizes >= 1"),
    ("sigmoid-belief-net", {"widths": "4-0-2"}, "layer sizes >= 1 joined by '-', like '8-6-4', got '4-0-2'"),
    ("sigmoid-belief-net", {"widths": "4-x"}, "layer sizes >= 1 joined by '-'"),
    ("sigmoid-belief-net", {"widths": "4-4", "depth": 2}, "give either widths or depth and width"),
    ("sigmoid-belief-net", {"depth": 3}, "give depth and width together"),
    ("sigmoid-belief-net", {"width": 3}, "give depth and width together"),
    ("sigmoid-belief-net", {"depth": -1, "width": 3}, "depth must be 0 (from widths) or at least 1"),
    ("sigmoid-belief-net", {"loss": "hinge"}, "loss must be one of mlp, target"),
    ("sigmoid-belief-net", {"hidden_weight": float("nan")}, "hidden_weight must be a finite number"),
    ("sigmoid-belief-net", {"depth": 3, "width": 8, "reference_method": "exact"}, "too many to enumerate"),
    ("sigmoid-belief-net", {"reference_method": "guess"}, "reference_method must be one of"),
    ("sigmoid-belief-net", {"reference_samples": 10}, "reference_samples must be at least 64"),
    ("sigmoid-belief-net-training", {"steps": 0}, "steps must be at least 1"),
    ("sigmoid-belief-net-training", {"batch": 0}, "batch must be at least 1"),
    ("sigmoid-belief-net-training", {"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam"),
    ("sigmoid-belief-net-training", {"lr": 0.0}, "lr must be a finite number > 0"),
    ("sigmoid-belief-net-training", {"ema_decay": 1.0}, "ema_decay must be in [0, 1)"),
    ("sigmoid-belief-net-training", {"widths": "3--3"}, "got '3--3'"),
    ("sigmoid-belief-net", {"depth": 100_000, "width": 1}, "at most 1000 (an integer), got 100000"),  # hung in validation
    ("sigmoid-belief-net", {"widths": "-".join(["1"] * 1001)}, "widths must name at most 1000 layers"),
], ids=["empty-layer", "zero-layer", "not-numbers", "widths-and-depth", "depth-without-width",
        "width-without-depth", "negative-depth", "unknown-loss", "nan-hidden-weight", "exact-too-large",
        "unknown-reference-method", "too-few-reference-samples", "training-steps-0", "training-batch-0",
        "training-optimizer", "training-lr-0", "training-ema-1", "training-empty-layer", "depth-too-large",
        "widths-too-many"])
def test_bad_parameters(name, params, fragment):
    with pytest.raises(RegistryError) as info:
        problems.build_problem(name, params)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_exact_gradient_refuses_nets_too_large_to_enumerate():
    problem = sbn(depth=3, width=7)  # 21 units
    with pytest.raises(ValueError, match="21 stochastic units .* too many to enumerate"):
        problem.exact_gradient()
    with pytest.raises(ValueError, match="too many to enumerate"):
        problem.expected_loss()


def test_data_seed_draws_the_net_and_deeper_nets_extend_shallower_ones():
    a, b = sbn(widths="4-3", data_seed=0), sbn(widths="4-3", data_seed=1)
    assert not torch.equal(a.weight2, b.weight2)
    deeper = sbn(widths="4-3-2", data_seed=0)
    assert torch.equal(a.bias1, deeper.bias1) and torch.equal(a.weight2, deeper.weight2)
    # the loss choice does not change the net
    assert torch.equal(sbn(widths="4-3", loss="target").weight2, a.weight2)


# =============================================================================================
# estimators through depth: every registered one composes through the contract
# =============================================================================================

ALL_ESTIMATORS = unit_estimator_names()


class CountingObserver:
    """Counts the rows of h given to the final layer's loss (complete net evaluations)."""

    def __init__(self):
        self.rows = 0
        self.last_h = None

    def __call__(self, loss_fn):
        def observed(h):
            self.rows += h.numel() // h.shape[-1]
            self.last_h = h.detach()
            return loss_fn(h)
        return observed


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
def test_every_estimator_runs_at_every_layer_and_evaluates_the_net_as_it_declares(name):
    problem = sbn(widths="3-2-2", hidden_weight=0.5)
    with seeded(build_estimator(name)) as estimator:
        observer = CountingObserver()
        n = 6
        grads = problem.sample_gradients(estimator, n, observer)
    assert grads.shape == (n, problem.dim) and grads.dtype == problem.dtype
    assert torch.isfinite(grads).all()
    # an estimator with k evaluations per layer evaluates the downstream net k times per layer
    assert observer.rows == n * nested_evaluations(estimator, problem.widths)
    # the estimate reaches every layer's parameters
    for scope in ("layer1", "layer2", "layer3"):
        assert grads[:, problem.scopes()[scope]].abs().sum() > 0, scope


def test_per_unit_state_stays_per_layer_and_noise_is_shared():
    problem = sbn(widths="3-2-4")
    with seeded(build_estimator("reinforce-optimal")) as estimator:
        problem.sample_gradients(estimator, 50)
        for index, width in enumerate(problem.widths):
            layer = estimator.layer(index)
            assert layer.numerator.shape == (width,) and layer.denominator.shape == (width,)
            assert layer.rng is estimator.rng
        with estimator.frozen():
            assert all(estimator.layer(i).update_state is False for i in range(3))


# =============================================================================================
# exact values by replay: one configuration through a 2-layer net, derived by hand
# =============================================================================================

def _hand_case():
    problem = sbn(widths="2-2", loss="target", hidden_weight=0.5, data_seed=4).to(F64)
    b0, W, b1 = problem.bias1.tolist(), problem.weight2.tolist(), problem.bias2.tolist()
    t1, t2 = problem.target1.tolist(), problem.target2.tolist()
    h1, h2 = [1.0, 0.0], [0.0, 1.0]
    return problem, (b0, W, b1, t1, t2, h1, h2), torch.tensor([h1 + h2], dtype=F64)


def _sigm(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("name", ["reinforce", "straight-through"])
def test_two_layer_gradient_by_replay_matches_hand_derivation(name):
    problem, (b0, W, b1, t1, t2, h1, h2), bits = _hand_case()
    hidden = 0.5
    a2 = [W[i][0] * h1[0] + W[i][1] * h1[1] + b1[i] for i in range(2)]
    f1 = sum((h1[i] - t1[i]) ** 2 for i in range(2))
    f2 = sum((h2[i] - t2[i]) ** 2 for i in range(2))
    if name == "reinforce":
        # layer 2's learning signal is its downstream loss f2; layer 1's is f2 + hidden * f1
        g_a2 = [(h2[i] - _sigm(a2[i])) * f2 for i in range(2)]
        g_b0 = [(h1[i] - _sigm(b0[i])) * (f2 + hidden * f1) for i in range(2)]
    else:
        # dL/da := dL/dh at both layers; layer 1's dL/dh flows through W and its own term
        g_a2 = [2 * (h2[i] - t2[i]) for i in range(2)]
        g_b0 = [hidden * 2 * (h1[j] - t1[j]) + sum(W[i][j] * g_a2[i] for i in range(2)) for j in range(2)]
    g_W = [g_a2[i] * h1[j] for i in range(2) for j in range(2)]
    by_hand = torch.tensor(g_b0 + g_W + g_a2, dtype=F64)  # order: b_0, W_1 (row-major), b_1

    estimator = build_estimator(name).to(F64)
    replay = ReplayNoise(bits)
    with estimator.drawing_from(replay):
        observer = CountingObserver()
        grads = problem.sample_gradients(estimator, 1, observer)
        assert replay.offset == 4  # layer 1's two bits, then layer 2's
    torch.testing.assert_close(observer.last_h, torch.tensor([h2], dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(grads[0], by_hand, rtol=0, atol=1e-12)


def test_nested_exact_estimator_is_the_exact_gradient():
    # 'exact' at every layer enumerates each layer given the one below: sum over all 2^units
    problem = sbn(widths="3-2-2", hidden_weight=0.5).to(F64)
    grads = problem.sample_gradients(build_estimator("exact").to(F64), 3)
    for row in grads:
        torch.testing.assert_close(row, problem.exact_gradient(), rtol=0, atol=1e-12)


# =============================================================================================
# unbiased estimators: z-tests per layer at a fixed seed
# =============================================================================================
# For each layer scope, scipy's one-sample t-test per coordinate, Bonferroni-corrected over the
# scope's coordinates: at a random seed an unbiased estimator fails `p > 1e-3` with probability at
# most 0.1% per layer (0.3% per test case here).

UNBIASED = [name for name in ALL_ESTIMATORS if build_estimator(name).unbiased]
Z_TEST_NETS = [{"widths": "3-2-2", "hidden_weight": 0.5}, {"depth": 3, "width": 2, "loss": "target"}]


@pytest.mark.parametrize("params", Z_TEST_NETS, ids=[spec_id(p) for p in Z_TEST_NETS])
@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_estimators_pass_per_layer_z_tests(name, params):
    problem = sbn(**params).to(F64)
    truth = problem.exact_gradient()
    estimator = build_estimator(name).to(F64)
    if estimator.stateful:
        with seeded(estimator, 1):
            problem.sample_gradients(estimator, 2_000)  # adapt the running baselines, then freeze
    if estimator.randomness == "none":
        with seeded(estimator, 0), estimator.frozen():
            grads = problem.sample_gradients(estimator, 4)
        torch.testing.assert_close(grads, truth.expand_as(grads), rtol=0, atol=1e-10)
        return
    n = max(4_000, 30_000 // nested_evaluations(estimator, problem.widths))
    with seeded(estimator, 0), estimator.frozen():
        grads = problem.sample_gradients(estimator, n).numpy()
    pvalues = scipy.stats.ttest_1samp(grads, truth.numpy(), axis=0).pvalue
    for layer in range(1, problem.depth + 1):
        where = problem.scopes()[f"layer{layer}"]
        p = min(1.0, (where.stop - where.start) * float(np.min(pvalues[where])))
        assert p > 1e-3, f"layer{layer}: Bonferroni p = {p:.2e}"


# =============================================================================================
# straight-through's bias grows with depth (exact, by replaying every outcome)
# =============================================================================================

def _exact_mean(problem, name):
    problem = problem.to(F64)
    estimator = build_estimator(name).to(F64)
    replay = ReplayNoise(all_configurations(problem.units, F64))
    with estimator.drawing_from(replay):
        grads = problem.sample_gradients(estimator, 2**problem.units)
    return (replay.log_prob.exp().unsqueeze(1) * grads).sum(0)


def test_straight_through_bias_grows_with_depth():
    # Width-3 nets of depth 1..5 sharing their first layers (mlp loss on the last layer). The
    # bias on b_0 (the first layer, present at every depth) compounds as dL/dh is passed through
    # each binary layer as if it were the identity; exact in float64 over all 2^units outcomes.
    first_layer_bias, total_bias = [], []
    for depth in range(1, 6):
        problem = sbn(depth=depth, width=3)
        reference = problem.reference()
        truth = reference.gradient
        mean = _exact_mean(problem, "straight-through")
        where = problem.scopes()["layer1"]
        first_layer_bias.append(float(torch.linalg.vector_norm((mean - truth)[where])))
        metrics, reason = exact_estimator_moments(build_estimator("straight-through"), problem, reference)
        assert metrics, reason
        exact_bias = {m.name: m.value for m in metrics}["exact_bias_norm"]
        assert exact_bias == pytest.approx(float(torch.linalg.vector_norm(mean - truth)), rel=1e-9)
        total_bias.append(exact_bias)
    assert all(b > a for a, b in zip(first_layer_bias, first_layer_bias[1:])), first_layer_bias
    assert all(b > a for a, b in zip(total_bias, total_bias[1:])), total_bias
    assert first_layer_bias[-1] > 5 * first_layer_bias[0]
    # and an unbiased estimator's exact mean is the truth at the deepest net
    torch.testing.assert_close(_exact_mean(sbn(depth=5, width=3), "reinforce"),
                               sbn(depth=5, width=3).exact_gradient(), rtol=0, atol=1e-12)


# =============================================================================================
# the estimated reference
# =============================================================================================

def test_sampled_reference_is_consistent_with_the_exact_one():
    # batch means over 64 batches: t with 63 degrees of freedom per coordinate, Bonferroni over
    # coordinates; false alarm <= 0.1% at a random seed.
    exact = sbn(widths="3-2-2", hidden_weight=0.5).reference()
    sampled = sbn(widths="3-2-2", hidden_weight=0.5, reference_method="sampled",
                  reference_samples=40_000).reference()
    assert exact.exact and not sampled.exact
    assert sampled.stderr.shape == exact.gradient.shape and sampled.stderr.dtype == F64
    assert (sampled.stderr > 0).all()
    t = ((sampled.gradient - exact.gradient) / sampled.stderr).abs().max().item()
    p = min(1.0, exact.gradient.numel() * 2 * scipy.stats.t.sf(t, 63))
    assert p > 1e-3
    # and it is informative: its error is small against the gradient itself
    assert float(sampled.stderr.max()) < 0.1 * float(exact.gradient.abs().max())


def test_large_net_reference_is_estimated_seeded_and_cached():
    params = {"depth": 3, "width": 8, "reference_samples": 6_400}
    problem = sbn(**params)
    assert problem.units == 24
    _REFERENCE_CACHE.clear()
    reference = problem.reference()
    assert not reference.exact
    assert reference.gradient.shape == reference.stderr.shape == (problem.dim,)
    assert torch.isfinite(reference.gradient).all() and (reference.stderr > 0).all()
    assert len(_REFERENCE_CACHE) == 1
    again = sbn(**params).reference()  # another instance with the same data: from the cache
    assert len(_REFERENCE_CACHE) == 1 and torch.equal(again.gradient, reference.gradient)
    _REFERENCE_CACHE.clear()
    assert torch.equal(sbn(**params).reference().gradient, reference.gradient)  # recomputed: seeded
    other = sbn(**{**params, "data_seed": 1}).reference()
    assert not torch.equal(other.gradient, reference.gradient)


def test_harness_marks_the_large_net_reference_as_estimated():
    params = {"depth": 3, "width": 8, "reference_samples": 6_400}
    result = run(make_config("reinforce", {}, "sigmoid-belief-net", params, seed=0, samples=2_000, warmup=0))
    assert result.status == "finished", result.error
    assert result.notes["reference"] == "estimated"
    metrics = {m.name: m for m in result.metrics if m.scope == "all"}
    assert "exact_bias_norm" not in metrics
    assert metrics["unbiased_pvalue"].value > 1e-3  # false alarm <= 0.1% at a random seed


# =============================================================================================
# training: loss curve and trajectory variance
# =============================================================================================

def _records(problem, estimator, seed=0):
    """Train with ``estimator`` drawing from noise seed 0; ``seed`` is the problem's."""
    ticks = []
    with seeded(estimator):
        records = list(problem.fit(estimator, seed, ticks.append))
    assert sum(ticks) == problem.progress_total() == problem.steps
    return records


def test_training_lowers_the_exact_loss_and_yields_the_documented_records():
    problem = problems.build_problem("sigmoid-belief-net-training",
                                     {"widths": "3-2-2", "steps": 80, "log_every": 40, "batch": 16})
    assert problem.trains_model and problem.dim == 0
    records = _records(problem, build_estimator("reinforce-loo"))
    assert {r.name for r in records} == {"train_loss", "trajectory_variance"}
    losses = [r for r in records if r.name == "train_loss"]
    assert [r.step for r in losses] == [0, 40, 80]
    assert all(r.stderr is None and r.scope == "all" and r.epoch is None for r in losses)  # exact
    assert losses[-1].value < losses[0].value - 0.05, [r.value for r in losses]
    variance = [r for r in records if r.name == "trajectory_variance"]
    scopes = {"all", *sbn(widths="3-2-2").scopes()}
    assert {(r.step, r.scope) for r in variance} == {(s, scope) for s in (40, 80) for scope in scopes}
    by_key = {(r.step, r.scope): r.value for r in variance}
    for step in (40, 80):
        assert by_key[step, "all"] > 0
        assert by_key[step, "all"] == pytest.approx(sum(by_key[step, f"layer{l}"] for l in (1, 2, 3)), rel=1e-9)
        assert by_key[step, "layer2"] == pytest.approx(by_key[step, "layer2.weight"] + by_key[step, "layer2.bias"],
                                                       rel=1e-9)


def test_trajectory_variance_is_the_bias_corrected_ema_formula_and_includes_drift():
    # 'exact' is deterministic (zero fixed-parameter variance), so any trajectory variance is
    # parameter drift. With seed == data_seed training starts at the gradient problem's point.
    decay, lr = 0.5, 3.0
    problem = problems.build_problem("sigmoid-belief-net-training", {
        "widths": "2-2", "data_seed": 3, "steps": 2, "log_every": 1, "optimizer": "sgd", "lr": lr,
        "ema_decay": decay}).to(F64)
    records = _records(problem, build_estimator("exact").to(F64), seed=3)
    at = {(r.name, r.step, r.scope): r.value for r in records}
    point = sbn(widths="2-2", data_seed=3).to(F64)
    g1 = point.exact_gradient()
    assert at["train_loss", 0, "all"] == pytest.approx(point.expected_loss(), abs=1e-12)
    offset = 0
    for tensor in point.parameter_tensors():  # one SGD step, by hand
        tensor -= lr * g1[offset:offset + tensor.numel()].view_as(tensor)
        offset += tensor.numel()
    g2 = point.exact_gradient()
    assert at["train_loss", 1, "all"] == pytest.approx(point.expected_loss(), abs=1e-12)
    assert at["trajectory_variance", 1, "all"] == pytest.approx(0.0, abs=1e-15)
    first = ((1 - decay) * (decay * g1 + g2)) / (1 - decay**2)
    second = ((1 - decay) * (decay * g1**2 + g2**2)) / (1 - decay**2)
    expected = float((second - first**2).sum())
    assert expected > 1e-6  # drift alone makes it positive
    assert at["trajectory_variance", 2, "all"] == pytest.approx(expected, rel=1e-9)


def test_training_beyond_enumeration_reports_a_monte_carlo_loss_with_stderr():
    problem = problems.build_problem("sigmoid-belief-net-training",
                                     {"depth": 3, "width": 8, "steps": 4, "log_every": 2, "eval_samples": 500})
    losses = [r for r in _records(problem, build_estimator("reinforce")) if r.name == "train_loss"]
    assert [r.step for r in losses] == [0, 2, 4]
    assert all(r.stderr is not None and 0 < r.stderr < 1 and math.isfinite(r.value) for r in losses)


class LearnedConstantBaseline(Estimator):
    """REINFORCE with a trainable scalar baseline c per layer, trained on (L - c)^2 (test double)."""

    unbiased = True
    needs_loss_backprop = False
    has_parameters = True
    adaptation_lr = 0.1

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Parameter(torch.zeros(()))
        self.grad_at_entry: list = []

    def forward(self, logits, loss_fn):
        self.grad_at_entry.append(None if self.c.grad is None else float(self.c.grad))
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        if self.update_state:
            (grad,) = torch.autograd.grad(((loss.detach() - self.c) ** 2).mean(), self.c)
            self.c.grad = grad if self.c.grad is None else self.c.grad + grad
        grad = (h - probs) * (loss.detach() - self.c.detach()).unsqueeze(-1)
        return attach_gradient(loss, logits, grad)


def test_estimator_parameters_are_trained_alongside_per_layer():
    problem = problems.build_problem("sigmoid-belief-net-training",
                                     {"widths": "3-2", "loss": "target", "steps": 1, "log_every": 1})
    estimator = LearnedConstantBaseline()
    _records(problem, estimator)
    layers = [estimator.layer(0), estimator.layer(1)]
    assert layers[1] is not layers[0]
    # Adam's first step moves by lr * sign(grad); the target loss is positive, so c goes up
    for layer in layers:
        assert float(layer.c.detach()) == pytest.approx(LearnedConstantBaseline.adaptation_lr, rel=1e-5)
    problem = problems.build_problem("sigmoid-belief-net-training", {  # layers' learning signals differ
        "widths": "3-2", "loss": "target", "hidden_weight": 1.0, "steps": 30, "log_every": 30})
    estimator = LearnedConstantBaseline()
    _records(problem, estimator)
    # grads were zeroed before every step: each layer saw an empty grad when it was called
    assert all(g in (None, 0.0) for layer in (estimator.layer(0), estimator.layer(1))
               for g in layer.grad_at_entry)
    assert float(estimator.layer(0).c.detach()) != float(estimator.layer(1).c.detach())  # trained per layer


def test_nested_evaluation_blow_up_is_skipped_with_the_reason():
    """k evaluations per layer nest to k^depth: the harness stores such a pair as skipped."""
    from bench import harness

    small = harness.run(harness.make_config("finite-difference", {}, "sigmoid-belief-net",
                                            {"widths": "2-2"}, 0, 64))
    assert small.status == "finished", small.error
    huge = harness.run(harness.make_config("finite-difference", {}, "sigmoid-belief-net",
                                           {"depth": 3, "width": 50}, 0, 64))
    assert huge.status == "skipped" and "nested evaluations" in huge.error and "5.05e+07" in huge.error
