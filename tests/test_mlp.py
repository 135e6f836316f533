"""The MLP regulariser problems (problems/mlp.py): the ``mlp-probe`` gradient problem and the
``mnist-mlp`` training problem with gradient checkpoints.

Exact values where the sample can be replayed (per-sample bias gradients of reinforce and the
sigmoid by hand, the harness's exact moments by enumeration); z-tests with fixed seeds and a
Bonferroni-corrected 1e-3 error rate for the unit-flip reference; training properties on a small
synthetic data set (no MNIST needed); the quick mode on MNIST, skipped without it.
"""
from __future__ import annotations


import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import estimators
import problems
from bench.harness import make_config, run
from bench.store import Store
from estimators.base import Noise, ReplayNoise, all_configurations
from problems.base import Checkpoint
from problems.mlp import MlpProbe, hidden_bias_gradients
from tests.conftest import MNIST_DATA_ROOT, REPO_ROOT, needs_fashion_mnist, needs_mnist, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
DATA_ROOT = MNIST_DATA_ROOT
F64 = torch.float64
SMALL = {"hidden": "12-10", "epochs": 2, "batch_size": 32, "checkpoints": "0-2", "probe_batch": 8,
         "probe_samples": 64, "probe_reference_samples": 16, "probe_minibatches": 8}
PER_EPOCH = {"train_criterion", "train_error", "train_error_sampled", "valid_error", "valid_error_sampled",
             "test_error", "test_error_sampled", "epoch_time_s", "eval_time_s"}
ALPHA = 1e-3


def seeded(name: str, seed: int = 1234, **params):
    """``with seeded(name, seed, **params) as estimator:`` -- built, drawing from ``seed``."""
    return estimators.build_estimator(name, params).drawing_from(Noise(torch.Generator().manual_seed(seed)))


def probe(**params) -> MlpProbe:
    return problems.build_problem("mlp-probe", params).to(F64)


# -- the probe: per-sample gradients by hand ------------------------------------------------------------
def _by_hand(p: MlpProbe, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(mean loss over the batch, the layers' logits) for given hidden values h_l (batch, width)."""
    logits, below = [], p.x
    for (weight, bias), h in zip(p.layers(), hidden):
        logits.append(below @ weight.T + bias)
        below = h
    loss = F.cross_entropy(below @ p.readout_weight.T + p.readout_bias, p.y)
    return loss, logits


def test_reinforce_probe_gradient_is_the_score_term_on_replayed_bits():
    p = probe(widths="3-2", batch=2)
    bits = p.batch * p.dim
    configs = all_configurations(bits, F64)[[5, 100, 700, 1023]]
    estimator = estimators.build_estimator("reinforce")
    with estimator.drawing_from(ReplayNoise(configs)):
        grads = p.sample_gradients(estimator, configs.shape[0])
    for row, config in enumerate(configs):
        # layer l's bits come after layer l-1's, each laid out (batch, width)
        hidden, offset = [], 0
        for width in p.widths:
            hidden.append(config[offset:offset + p.batch * width].reshape(p.batch, width))
            offset += p.batch * width
        loss, logits = _by_hand(p, hidden)
        per_example = F.cross_entropy(hidden[-1] @ p.readout_weight.T + p.readout_bias, p.y, reduction="none")
        expected = torch.cat([((h - torch.sigmoid(a)) * per_example.unsqueeze(-1)).mean(0)
                              for h, a in zip(hidden, logits)])
        torch.testing.assert_close(grads[row], expected, rtol=0, atol=1e-12)


def test_sigmoid_probe_gradient_is_backprop_of_the_mean_field_net():
    p = probe(widths="4-3-2", batch=3)
    biases = [b.clone().requires_grad_(True) for _, b in p.layers()]
    below = p.x
    for (weight, _), bias in zip(p.layers(), biases):
        below = torch.sigmoid(below @ weight.T + bias)
    loss = F.cross_entropy(below @ p.readout_weight.T + p.readout_bias, p.y)
    expected = torch.cat(torch.autograd.grad(loss, biases))
    grads = p.sample_gradients(estimators.build_estimator("sigmoid"), 5)
    torch.testing.assert_close(grads, expected.expand(5, -1), rtol=0, atol=1e-12)


def test_a_batch_per_sample_gives_each_sample_its_own_batch():
    p = probe(widths="4-3", batch=3)
    readout = (p.readout_weight, p.readout_bias)
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(4, 3, p.inputs, generator=g, dtype=F64)
    ys = torch.randint(0, p.classes, (4, 3), generator=g)
    together = hidden_bias_gradients(p.layers(), readout, xs, ys, estimators.build_estimator("sigmoid"), 4)
    for row in range(4):
        alone = hidden_bias_gradients(p.layers(), readout, xs[row], ys[row], estimators.build_estimator("sigmoid"), 1)
        torch.testing.assert_close(together[row], alone[0], rtol=0, atol=1e-12)


def test_loss_observer_sees_one_row_per_sample():
    p = probe(widths="4-3", batch=3)
    seen = []

    def observe(loss_fn):
        def observed(h):
            seen.append(h.shape)
            return loss_fn(h)
        return observed

    with seeded("arm") as estimator:
        p.sample_gradients(estimator, 5, observe)
    assert seen == [torch.Size([2, 2, 5, 3 * 3])]  # 2 x 2 nested evaluations, 5 samples, batch x width


# -- the reference ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("widths", ["4-3", "3-3-2"])
def test_flip_estimator_is_unbiased_for_the_enumerated_gradient(widths):
    p = probe(widths=widths, batch=3)
    exact = p.exact_gradient()
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([p.flip_gradient(generator) for _ in range(4000)]).numpy()
    t = scipy.stats.ttest_1samp(draws, exact.numpy(), axis=0)
    assert t.pvalue.min() * p.dim > ALPHA, t.pvalue  # Bonferroni over coordinates


def test_sampled_reference_has_standard_errors_and_covers_the_truth():
    p = probe(widths="4-3", batch=2, reference_method="sampled", reference_samples=2000)
    reference = p.reference()
    assert not reference.exact
    exact = probe(widths="4-3", batch=2).reference().gradient
    z = ((reference.gradient - exact) / reference.stderr).abs().max()
    assert float(z) < scipy.stats.norm.isf(ALPHA / (2 * p.dim))


def test_enumeration_is_refused_beyond_twenty_hidden_units():
    with pytest.raises(ValueError, match="too many to enumerate"):
        problems.build_problem("mlp-probe", {"widths": "12-9", "reference_method": "exact"})
    assert not problems.build_problem("mlp-probe", {"widths": "12-9", "reference_samples": 4}).reference().exact


def test_harness_exact_moments_on_the_probe():
    measured = {}
    for name in ("reinforce", "straight-through-sigmoid"):
        result = run(make_config(name, {}, "mlp-probe", {}, seed=0, samples=2000, warmup=0))
        assert result.status == "finished", result.error
        measured[name] = {(m.name, m.scope): m.value for m in result.metrics}
    assert measured["reinforce"][("exact_bias_norm", "all")] < 1e-12
    assert measured["straight-through-sigmoid"][("exact_bias_norm", "all")] > 1e-3
    assert {("variance", "layer1"), ("variance", "layer2")} <= set(measured["reinforce"])


# -- the training problem ----------------------------------------------------------------------------------
def fit(problem, name: str, seed: int = 0):
    with seeded(name) as estimator:
        records = [item for item in problem.fit(estimator, seed)]
    return records, estimator


def curves(records) -> dict:
    return {(r.name, r.scope, r.epoch): r.value for r in records if not isinstance(r, Checkpoint)}


def test_records_every_epoch_and_yields_checkpoints(synthetic):
    problem = problems.build_problem("mnist-mlp", SMALL)
    records, _ = fit(problem, "straight-through-sigmoid")
    values = curves(records)
    for epoch in (1, 2):
        assert {name for name, scope, e in values if e == epoch and scope == "all"} >= PER_EPOCH
    checkpoints = [r for r in records if isinstance(r, Checkpoint)]
    assert [c.epoch for c in checkpoints] == [0, 2]
    assert all(isinstance(c.problem, MlpProbe) and c.samples == 64 for c in checkpoints)
    assert checkpoints[0].problem.widths == (12, 10) and checkpoints[0].problem.batch == 8
    for epoch in (0, 2):
        for scope in ("all", "layer1", "layer2"):
            assert values[("minibatch_variance", scope, epoch)] > 0
        assert values[("minibatch_variance", "all", epoch)] == pytest.approx(
            values[("minibatch_variance", "layer1", epoch)] + values[("minibatch_variance", "layer2", epoch)])
    assert values[("lr", "all", None)] == 0.1 and values[("momentum", "all", None)] == 0.9


def test_training_is_deterministic_and_checkpoints_do_not_change_it(synthetic):
    with_checkpoints = curves(fit(problems.build_problem("mnist-mlp", SMALL), "straight-through-sigmoid")[0])
    again = curves(fit(problems.build_problem("mnist-mlp", SMALL), "straight-through-sigmoid")[0])
    without = curves(fit(problems.build_problem("mnist-mlp", {**SMALL, "checkpoints": ""}),
                         "straight-through-sigmoid")[0])
    timing = {"epoch_time_s", "eval_time_s"}
    same = {k: v for k, v in with_checkpoints.items() if k[0] not in timing and k[0] != "minibatch_variance"}
    assert same == {k: v for k, v in again.items() if k in same}
    assert same == {k: v for k, v in without.items() if k[0] not in timing}


def test_deterministic_units_have_equal_sampled_and_mean_field_errors(synthetic):
    values = curves(fit(problems.build_problem("mnist-mlp", {**SMALL, "checkpoints": ""}), "sigmoid")[0])
    for split in ("train", "valid", "test"):
        for epoch in (1, 2):
            assert values[(f"{split}_error_sampled", "all", epoch)] == values[(f"{split}_error", "all", epoch)]


def test_binary_units_sampled_error_differs_and_mean_field_error_is_the_sigmoid_net(synthetic):
    problem = problems.build_problem("mnist-mlp", {**SMALL, "checkpoints": "", "epochs": 1})
    records, estimator = fit(problem, "straight-through-sigmoid")
    values = curves(records)
    model = problem.trained_model
    x, y = synthetic["test"]
    with torch.no_grad():
        by_hand = (model.mean_field(x, "sigmoid").argmax(-1) != y).double().mean() * 100
    assert values[("test_error", "all", 1)] == pytest.approx(float(by_hand), abs=1e-9)
    assert values[("test_error_sampled", "all", 1)] != values[("test_error", "all", 1)]


def test_one_training_step_is_sgd_on_the_batch_mean_loss(synthetic):
    params = {**SMALL, "epochs": 1, "checkpoints": "", "train_subset": 32, "batch_size": 32, "momentum": 0.0,
              "lr": 0.3}
    problem = problems.build_problem("mnist-mlp", params)
    initial = problem.build_model(seed=5)
    x, y = synthetic["train"][0][:32], synthetic["train"][1][:32]
    loss = F.cross_entropy(initial.mean_field(x, "sigmoid"), y)
    grads = torch.autograd.grad(loss, list(initial.parameters()))
    fit(problem, "sigmoid", seed=5)
    for before, grad, after in zip(initial.parameters(), grads, problem.trained_model.parameters()):
        torch.testing.assert_close(after.detach(), before.detach() - 0.3 * grad, rtol=1e-5, atol=1e-7)


def test_own_parameter_estimators_are_trained_alongside(synthetic):
    problem = problems.build_problem("mnist-mlp", {**SMALL, "checkpoints": ""})
    with seeded("nvil") as estimator:
        after_first_epoch = None
        for record in problem.fit(estimator, 0):
            if record.name == "eval_time_s" and record.epoch == 1:
                after_first_epoch = [p.detach().clone() for p in estimator.parameters()]
    assert after_first_epoch, "nvil's baseline network was never built"
    moved = [not torch.equal(p.detach(), q) for p, q in zip(estimator.parameters(), after_first_epoch)]
    assert any(moved)


@pytest.mark.parametrize("name", ["reinforce-optimal", "arm", "gaussian-dropout", "straight-through"])
def test_harness_stores_checkpoint_metrics_per_layer_and_epoch(synthetic, tmp_path, name):
    config = make_config(name, {}, "mnist-mlp", {**SMALL, "epochs": 1, "checkpoints": "0-1"}, seed=0, samples=1)
    result = run(config)
    assert result.status == "finished", result.error
    measured = {(m.name, m.scope, m.epoch) for m in result.metrics}
    for epoch in (0, 1):
        for scope in ("all", "layer1", "layer2"):
            for metric in ("bias_norm", "variance", "cosine", "relative_bias", "minibatch_variance",
                           "reference_stderr_norm"):
                assert (metric, scope, epoch) in measured
    assert result.notes["checkpoints"].startswith("2 (reference: estimated")
    store = Store(tmp_path / "r.db")
    store.save(result, {}, None, "cpu")
    assert len(store.metrics()) == len(result.metrics)  # (run, scope, metric, epoch, step) unique


@pytest.mark.parametrize("params, fragment", [
    ({"hidden": ""}, "hidden must be layer sizes >= 1 joined by '-', like '8-6-4', got ''"),
    ({"hidden": "500-x"}, "hidden must be layer sizes"),
    ({"checkpoints": "0-a"}, "checkpoints must be empty or epochs >= 0"),
    ({"probe_samples": 1}, "probe_samples must be at least 2"),
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"momentum": 1.0}, "momentum must be in [0, 1)"),
    ({"train_eval_subset": 60_000}, "train_eval_subset must be 0 (all) or at least 1 and at most 50,000"),
], ids=["empty-hidden", "bad-hidden", "bad-checkpoints", "one-probe-sample", "zero-lr", "momentum-1",
        "too-many-train-eval"])
def test_bad_parameters_are_one_line_errors(params, fragment):
    with pytest.raises(problems.RegistryError) as info:
        problems.build_problem("mnist-mlp", params)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_checkpoints_after_the_last_epoch_are_ignored():
    problem = problems.build_problem("mnist-mlp", {"epochs": 3, "checkpoints": "0-3-5-30"})
    assert problem.checkpoint_epochs == (0, 3)


@needs_mnist
def test_quick_mode_on_mnist(tmp_path):
    db = tmp_path / "r.db"
    spec = ("mnist-mlp(hidden=64-64,epochs=2,lr=0.5,train_subset=2000,eval_subset=1000,train_eval_subset=1000,"
            "checkpoints=2,probe_batch=16,probe_samples=32,probe_reference_samples=8,probe_minibatches=8)")
    done = run_cli("run", "--estimators", "sigmoid,straight-through-sigmoid", "--problems", spec,
                   "--db", str(db), "--data-dir", str(DATA_ROOT), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = Store(db).metrics()
    errors = metrics[(metrics["metric"] == "test_error") & (metrics["epoch"] == 2)]
    assert len(errors) == 2 and (errors["value"] < 80).all()  # chance is 90%: sigmoid nets start on a plateau
    assert (metrics[metrics["metric"] == "variance"]["epoch"] == 2).all()


@needs_fashion_mnist
def test_fashion_mnist_mlp_trains_on_fashion_mnist():
    problem = problems.build_problem("fashion-mnist-mlp", {"hidden": "64", "epochs": 2, "lr": 0.5, "train_subset": 2000,
                                                           "eval_subset": 1000, "train_eval_subset": 1000,
                                                           "checkpoints": ""})
    assert problem.dataset == "fashion-mnist"
    values = curves(fit(problem, "sigmoid")[0])
    assert values[("test_error", "all", 2)] < 60  # chance is 90%
