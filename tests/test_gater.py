"""The MNIST conditional-computation gater (problems/gater.py) and ``python -m bench paper``.

Exact values where they exist (the sparsity criteria on a hand example, the REINFORCE gater
gradient on replayed bits, the tuned threshold); training properties on a small synthetic data
set (no MNIST needed); the quick mode and the paper command on MNIST, skipped without it.
"""
from __future__ import annotations

import textwrap
import math

import pytest
import torch
import torch.nn.functional as F

import estimators
import problems
from bench.specs import parse_spec
from estimators.base import Estimator, Noise, ReplayNoise, attach_gradient
from experiments import paper_fig2
from problems import training
from problems.gater import (BatchObjective, GaterNet, adapt_l1_lambda, kl_sparsity_penalty,
                            kl_sparsity_penalty_logits, l1_sparsity_penalty, tune_threshold)
from tests.conftest import MNIST_DATA_ROOT, REPO_ROOT, needs_fashion_mnist, needs_mnist, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
DATA_ROOT = MNIST_DATA_ROOT
QUICK = {"epochs": 1, "train_subset": 2000, "eval_subset": 2000}
PER_EPOCH = {"train_criterion", "valid_error", "test_error", "sparsity_train", "sparsity_test", "epoch_time_s",
             "eval_time_s"}
WITH_CRITERION = {"sparsity_lambda", "threshold"}
FINAL = {"gater_lr", "momentum", "flops_gater", "flops_expert_dense", "flops_expert_sparse", "flops_speedup_bound"}
FINAL_WITH_CRITERION = {"threshold"}
F64 = torch.float64


def seeded(seed: int) -> Noise:
    return Noise(torch.Generator().manual_seed(seed))


def build(spec: str) -> Estimator:
    return estimators.build_estimator(*parse_spec(spec))


def fit(problem, spec: str, seed: int = 0):
    """(records by (name, epoch), the estimator) after training ``problem`` with ``spec``."""
    estimator = build(spec)
    with estimator.drawing_from(seeded(1234)):
        records = {(r.name, r.epoch): r.value for r in problem.fit(estimator, seed)}
    return records, estimator


@pytest.fixture
def mnist(monkeypatch):
    monkeypatch.setenv("STOCHGRAD_BENCH_DATA", str(DATA_ROOT))


SMALL = {"gate_units": 40, "hidden": 16, "epochs": 2}


# -- the criteria, by hand ---------------------------------------------------------------------------
def test_kl_criterion_is_eq14_on_a_hand_example():
    # sigm(0) = 1/2, sigm(ln 3) = 3/4, sigm(-ln 3) = 1/4: batch means p = (3/8, 5/8)
    logits = torch.tensor([[0.0, math.log(3)], [-math.log(3), 0.0]], dtype=F64)
    s, lam = 0.2, 2.0
    expected = -lam * (s * math.log(3 / 8) + (1 - s) * math.log(5 / 8) + s * math.log(5 / 8) + (1 - s) * math.log(3 / 8))
    assert kl_sparsity_penalty_logits(logits, s, lam).item() == pytest.approx(expected, rel=1e-14)
    assert kl_sparsity_penalty(torch.tensor([3 / 8, 5 / 8], dtype=F64), s, lam).item() == pytest.approx(expected, rel=1e-14)


def test_kl_criterion_pulls_a_nearly_silent_unit_back_and_stays_finite_for_a_dead_one():
    logits = torch.tensor([[-50.0, -120.0, 0.0], [-60.0, -130.0, 0.0]], requires_grad=True)
    penalty = kl_sparsity_penalty_logits(logits, 0.1, 1.0)
    (grad,) = torch.autograd.grad(penalty, logits)
    assert torch.isfinite(penalty) and torch.isfinite(grad).all()
    assert (grad[:, 0] < 0).all()  # pushed back up towards the target


def test_kl_criterion_on_outputs_is_finite_for_a_silent_unit():
    mean = torch.tensor([0.0, 0.3], requires_grad=True)
    penalty = kl_sparsity_penalty(mean, 0.1, 1.0)
    (grad,) = torch.autograd.grad(penalty, mean)
    assert torch.isfinite(penalty) and torch.isfinite(grad).all()
    assert grad[1].item() == pytest.approx(-(0.1 / 0.3 - 0.9 / 0.7))


def test_l1_criterion_is_eq15_per_example():
    h = torch.tensor([[0.0, 2.0, 0.5], [0.0, 0.0, 0.25]], dtype=F64)
    torch.testing.assert_close(l1_sparsity_penalty(h, 0.1), torch.tensor([0.25, 0.025], dtype=F64),
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("nonzero, factor", [(0.2, 1.01), (0.111, 1.01), (0.105, 1.0), (0.1, 1.0), (0.095, 1.0),
                                             (0.089, 1 / 1.01), (0.0, 1 / 1.01)],
                         ids=["far-above", "just-above-band", "in-band-high", "at-target", "in-band-low",
                              "just-below-band", "all-dead"])
def test_l1_lambda_moves_outside_the_band_only(nonzero, factor):
    lam = adapt_l1_lambda(torch.tensor(0.5, dtype=F64), torch.tensor(nonzero, dtype=F64), 0.1, step=0.01)
    assert lam.item() == pytest.approx(0.5 * factor, rel=1e-15)


# -- test-time threshold --------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.1, 0.25, 0.5], ids=["10pc", "25pc", "50pc"])
def test_threshold_turns_on_exactly_the_target_fraction(target):
    logits = torch.randn(300, 70, generator=torch.Generator().manual_seed(0))
    threshold = tune_threshold(logits, target)
    assert int((logits > threshold).sum()) == round(target * logits.numel())


def test_threshold_with_ties_never_exceeds_the_target():
    logits = torch.tensor([0.0] * 6 + [1.0] * 3 + [2.0])  # 10 values, 3 tied at the cut
    assert int((logits > tune_threshold(logits, 0.2)).sum()) == 1  # 2 wanted, a tie of 3 at 1.0
    assert int((logits > tune_threshold(logits, 0.4)).sum()) == 4


@pytest.mark.parametrize("activation", ["sigmoid", "rectifier"])
def test_test_gates_are_exactly_zero_when_off(activation):
    model = GaterNet(8, 50, activation, 0.1, torch.Generator().manual_seed(0), inputs=20, classes=3)
    x = torch.rand(400, 20, generator=torch.Generator().manual_seed(1))
    model.tune(x)
    logits = model.gate_logits(x)
    gates = model.test_gates(logits)
    on = logits > model.threshold
    assert int(on.sum()) == round(0.1 * on.numel())
    assert (gates[~on] == 0).all()
    expected_on = torch.ones_like(logits) if activation == "sigmoid" else logits - model.threshold
    torch.testing.assert_close(gates[on], expected_on[on], rtol=0, atol=0)


def test_without_a_target_test_gates_are_the_mean_nonlinearity():
    model = GaterNet(8, 12, "sigmoid", 0.0, torch.Generator().manual_seed(0), inputs=20, classes=3)
    logits = torch.randn(5, 12)
    torch.testing.assert_close(model.test_gates(logits), torch.sigmoid(logits), rtol=0, atol=0)


# -- gradients -------------------------------------------------------------------------------------
def _tiny_batch():
    model = GaterNet(5, 6, "sigmoid", 0.0, torch.Generator().manual_seed(3), inputs=7, classes=3).to(F64)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 7, generator=g, dtype=F64)
    y = torch.tensor([0, 2, 1, 2])
    bits = torch.tensor([[1, 0, 0, 1, 0, 1], [0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 0, 0, 1, 1]], dtype=F64)
    return model, x, y, bits


def test_reinforce_gater_gradient_is_the_score_function_term_only():
    """No back-propagation of the classification loss into the gater: its gradient is exactly
    (h - sigm(a)) L back-propagated through the gater's own layers (paper eq. 6, Lbar = 0)."""
    model, x, y, bits = _tiny_batch()
    estimator = estimators.build_estimator("reinforce")
    with estimator.drawing_from(ReplayNoise(bits)):
        BatchObjective(model, estimator, x, y, None, 0.0, 0.0).objective.backward()

    with torch.no_grad():
        hidden = torch.tanh(model.gater_hidden(x))
        probs = torch.sigmoid(model.gater_out(hidden))
        loss = F.cross_entropy(model.output(bits * model.expert(x)), y, reduction="none")
        g = (bits - probs) * loss.unsqueeze(-1) / x.shape[0]
    torch.testing.assert_close(model.gater_out.weight.grad, g.T @ hidden, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(model.gater_out.bias.grad, g.sum(0), rtol=1e-12, atol=1e-15)
    # the main path is trained by ordinary back-propagation at the sampled gates
    expert = model.expert.weight.detach().clone().requires_grad_(True)
    mean_loss = F.cross_entropy(model.output(bits * F.linear(x, expert, model.expert.bias)), y)
    (expected,) = torch.autograd.grad(mean_loss, expert)
    torch.testing.assert_close(model.expert.weight.grad, expected, rtol=1e-12, atol=1e-15)


def test_straight_through_gater_gradient_back_propagates_the_loss():
    """The contrast: with the same bits, straight-through passes dL/dh to the gate logits (eq. 13)."""
    model, x, y, bits = _tiny_batch()
    estimator = estimators.build_estimator("straight-through")
    with estimator.drawing_from(ReplayNoise(bits)):
        BatchObjective(model, estimator, x, y, None, 0.0, 0.0).objective.backward()
    with torch.no_grad():
        hidden = torch.tanh(model.gater_hidden(x))
    h = bits.clone().requires_grad_(True)
    mean_loss = F.cross_entropy(model.output(h * model.expert(x)), y)
    (dh,) = torch.autograd.grad(mean_loss, h)
    torch.testing.assert_close(model.gater_out.weight.grad, dh.T @ hidden, rtol=1e-12, atol=1e-15)


def test_multi_evaluation_estimators_see_the_loss_of_every_evaluation():
    model, x, y, _ = _tiny_batch()
    estimator = build("reinforce-loo(K=3)")
    with estimator.drawing_from(seeded(1234)):
        step = BatchObjective(model, estimator, x, y, None, 0.0, 0.0)
    assert step.elements == 3 * x.shape[0] * 6
    assert step.objective.shape == ()


# -- training (synthetic data) -----------------------------------------------------------------------
def test_training_is_deterministic_for_a_seed(synthetic):
    problem = problems.build_problem("mnist-gater", SMALL)
    first, _ = fit(problem, "straight-through", seed=3)
    again, _ = fit(problem, "straight-through", seed=3)
    other, _ = fit(problem, "straight-through", seed=4)
    timing = {k for k in first if k[0] in ("epoch_time_s", "eval_time_s")}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in again.items() if k not in timing}
    assert first[("train_criterion", 1)] != other[("train_criterion", 1)]


@pytest.mark.parametrize("spec", ["straight-through", "reinforce-optimal", "rectifier"])
def test_no_host_synchronisation_per_mini_batch(synthetic, monkeypatch, spec):
    """Reading a tensor's value on the host (item, tolist, bool, float, int) stalls a GPU; the
    training pass must do it a fixed number of times per epoch, not per mini-batch."""
    calls = []
    for method in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            calls.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)

    def count(train_subset):
        calls.clear()
        fit(problems.build_problem("mnist-gater", {**SMALL, "epochs": 1, "train_subset": train_subset}), spec)
        return len(calls)

    assert count(320) == count(640)  # 10 and 20 mini-batches


def test_max_norm_holds_after_training(synthetic):
    problem = problems.build_problem("mnist-gater", {**SMALL, "max_norm": 0.3})
    fit(problem, "straight-through")
    # initial rows have norm about 1/sqrt(3) > 0.3 in every layer, so the constraint binds in each
    for weight in problem.trained_model.incoming_weights():
        norms = torch.linalg.vector_norm(weight.detach(), dim=1)
        assert float(norms.max()) == pytest.approx(0.3, rel=1e-5)


@pytest.mark.parametrize("initial, direction", [(1e-7, "up"), (20.0, "down")], ids=["too-small", "too-large"])
def test_l1_lambda_adapts_towards_the_target_in_training(synthetic, initial, direction):
    problem = problems.build_problem("mnist-gater", {**SMALL, "epochs": 1, "l1_lambda": initial})
    records, _ = fit(problem, "rectifier")
    final = records[("sparsity_lambda", 1)]
    assert (final > initial) if direction == "up" else (final < initial)


def test_trait_driven_settings():
    problem = problems.build_problem("mnist-gater")
    sbn = problem.settings(build("reinforce-optimal"))
    assert (sbn["criterion"], sbn["gater_lr"], sbn["momentum"]) == ("kl", 1e-3, 0.0)
    st = problem.settings(build("straight-through"))
    assert (st["criterion"], st["gater_lr"], st["momentum"]) == ("kl", 0.1, 0.5)
    assert (st["kl_on"], st["gate_bias"]) == ("logits", pytest.approx(math.log(0.1 / 0.9)))
    sts = problem.settings(build("sts(beta_noise=40.1)"))
    assert (sts["criterion"], sts["kl_on"], sts["gate_bias"], sts["momentum"]) == ("kl", "output", 0.0, 0.5)
    noisy = problem.settings(build("noisy-rectifier"))
    assert (noisy["criterion"], noisy["gate_bias"]) == ("l1", 0.0)
    given = problems.build_problem("mnist-gater", {"gater_lr": 0.05, "momentum": 0.3}).settings(build("reinforce"))
    assert (given["gater_lr"], given["momentum"]) == (0.05, 0.3)
    assert problems.build_problem("mnist-gater", {"sparsity_target": 0.0}).settings(build("sigmoid"))["criterion"] is None


class LearnedBaseline(Estimator):
    """REINFORCE with one learned scalar baseline: its own objective is (L - b)^2 (test only)."""

    unbiased = True
    needs_loss_backprop = False
    has_parameters = True
    adaptation_lr = 0.5

    def __init__(self):
        super().__init__()
        self.baseline = torch.nn.Parameter(torch.zeros(()))

    def forward(self, logits, loss_fn):
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        if self.update_state:
            ((loss.detach() - self.baseline) ** 2).mean().backward()
        grad = (h - probs) * (loss.detach() - self.baseline.detach()).unsqueeze(-1)
        return attach_gradient(loss, logits, grad)


def test_own_parameter_estimators_are_trained_alongside(synthetic):
    problem = problems.build_problem("mnist-gater", {**SMALL, "epochs": 1})
    estimator = LearnedBaseline()
    with estimator.drawing_from(seeded(0)):
        records = {(r.name, r.epoch): r.value for r in problem.fit(estimator, 0)}
    assert 1.0 < estimator.baseline.item() < 5.0  # Adam moved it from 0 towards the loss (about ln 10)
    assert math.isfinite(records[("train_criterion", 1)])


@pytest.mark.parametrize("name", estimators.unit_estimator_names())
def test_every_registered_estimator_can_gate(synthetic, name):
    problem = problems.build_problem("mnist-gater", {"gate_units": 6, "hidden": 4, "epochs": 1, "train_subset": 64})
    estimator = estimators.build_estimator(name)
    try:
        estimator.check_units(6)
    except ValueError:
        with pytest.raises(ValueError):
            list(problem.fit(estimator, 0))
        return
    with estimator.drawing_from(seeded(0)):
        records = {(r.name, r.epoch): r.value for r in problem.fit(estimator, 0)}
    assert {name for name, epoch in records if epoch == 1} >= PER_EPOCH
    assert all(math.isfinite(v) for v in records.values())
    if estimator.stateful:
        assert estimator.update_state  # frozen only while testing


def test_refuses_an_estimator_that_cannot_serve_2000_units():
    problem = problems.build_problem("mnist-gater")
    with pytest.raises(ValueError):
        next(problem.fit(build("exact"), 0))


@pytest.mark.parametrize("params, fragment", [
    ({"sparsity_target": 1.0}, "sparsity_target must be in [0, 1)"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"momentum": 1.0}, "momentum must be unset (from the estimator) or in [0, 1)"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"gater_lr": -1.0}, "gater_lr must be unset (from the estimator) or a finite number > 0"),
    ({"train_subset": -5}, "train_subset must be 0 (all) or at least 1 and at most 50,000 (an integer)"),
    ({"eval_subset": 10_001}, "eval_subset must be 0 (all) or at least 1 and at most 10,000 (an integer)"),
], ids=["target-1", "batch-0", "momentum-1", "lr-0", "gater-lr-negative", "subset-negative", "eval-subset-too-big"])
def test_bad_parameters_are_one_line_errors(params, fragment):
    with pytest.raises(problems.RegistryError) as info:
        problems.build_problem("mnist-gater", params)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_paper_rows_are_the_seven_of_figure_2():
    assert [label for label, _, _ in paper_fig2.PAPER_ROWS] == list(paper_fig2.PAPER_TABLE)
    assert len(paper_fig2.PAPER_ROWS) == 7
    for label, spec, params in paper_fig2.PAPER_ROWS:
        estimators.build_estimator(*parse_spec(spec))
        problems.build_problem("mnist-gater", params)
    assert paper_fig2.PAPER_TABLE["Straight-through"] == (3.3e-3, 1.42, 1.39)


# -- MNIST ---------------------------------------------------------------------------------------------
@needs_mnist
@pytest.mark.parametrize("spec, params", [
    ("straight-through", {}),
    ("reinforce-optimal", {}),
    ("noisy-rectifier(std=1.0)", {}),
    ("sigmoid", {"gate_units": 200, "sparsity_target": 0.0}),
], ids=["straight-through", "reinforce-optimal", "noisy-rectifier", "sigmoid-200"])
def test_quick_mode_on_mnist(mnist, spec, params):
    problem = problems.build_problem("mnist-gater", {**QUICK, **params})
    records, estimator = fit(problem, spec)
    with_criterion = problem.sparsity_target > 0
    expected = ({(n, 1) for n in PER_EPOCH | (WITH_CRITERION if with_criterion else set())}
                | {(n, None) for n in FINAL | (FINAL_WITH_CRITERION if with_criterion else set())})
    assert set(records) == expected
    assert 0 < records[("train_criterion", 1)] < math.log(10) * 1.2
    for split in ("valid_error", "test_error"):
        assert 0 <= records[(split, 1)] < 80  # chance is 90%
    assert records[("epoch_time_s", 1)] > 0
    assert records[("gater_lr", None)] == (0.1 if estimator.needs_loss_backprop else 1e-3)
    gates = problem.gate_units
    assert records[("flops_gater", None)] == 784 * 400 + 400 * gates  # multiply-adds
    assert records[("flops_expert_dense", None)] == 784 * gates + gates * 10
    if with_criterion:
        assert records[("sparsity_test", 1)] == pytest.approx(0.9, abs=0.03)
        assert records[("flops_expert_sparse", None)] == pytest.approx(
            records[("flops_expert_dense", None)] * (1 - records[("sparsity_test", 1)]))
    else:
        assert records[("sparsity_test", 1)] == 0.0
    if spec == "straight-through":
        model = problem.trained_model
        tune_x = training.load_splits("mnist")["train"][0][:2000]
        logits = model.gate_logits(tune_x)
        on, k = int((model.test_gates(logits) != 0).sum()), round(0.1 * logits.numel())
        ties = int((logits == model.threshold).sum())  # 4M float32 logits: a few equal values are likely
        assert on <= k < on + ties and ties < 10  # exactly 10% on where tuned, up to ties


@needs_fashion_mnist
def test_fashion_mnist_gater_trains():
    problem = problems.build_problem("fashion-mnist-gater", {"epochs": 1, "train_subset": 1000, "eval_subset": 1000,
                                                             "gate_units": 200, "hidden": 50})
    records, _ = fit(problem, "straight-through")
    assert 0 <= records[("valid_error", 1)] < 80
    assert records[("sparsity_test", 1)] == pytest.approx(0.9, abs=0.03)


@needs_mnist
def test_paper_command_quick_prints_all_seven_rows(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # small matrices: one thread, immune to a busy machine
    monkeypatch.setenv("COLUMNS", "100")
    result = run_cli("paper", "--quick", "--quiet", "--db", tmp_path / "paper.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100, "\n".join(lines)  # fits the terminal
    for label, spec, _ in paper_fig2.PAPER_ROWS:
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(label + " "))
        line, paper = lines[at], lines[at + 1]  # ours; below it the estimator and the paper's numbers
        assert "1/1" in line and spec in paper and "paper" in paper
        _, valid, test = paper_fig2.PAPER_TABLE[label]
        assert f"{valid:.2f}" in paper and f"{test:.2f}" in paper
        criterion, valid_error, test_error, sparsity = map(float, line.split()[-4:])  # one seed: no "± sd"
        assert 0 < criterion < 2.5 and 0 <= valid_error < 80 and 0 <= test_error < 80 and 0 <= sparsity < 1
    assert "wall time" in result.stdout


def test_paper_command_rejects_bad_options(capsys):
    from benchcli.cli import main

    assert main(["paper", "--dataset", "cifar"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--dataset" in err and "'fashion-mnist'" in err


def test_paper_command_says_how_to_get_missing_data(tmp_path, monkeypatch, capsys):
    from benchcli.cli import main

    monkeypatch.setenv("STOCHGRAD_BENCH_DATA", str(DATA_ROOT))  # restored after the test: --data-dir sets it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["paper", "--quick", "--data-dir", str(tmp_path), "--db", str(tmp_path / "paper.db")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "python -m bench data fetch mnist" in err
    assert not (tmp_path / "paper.db").exists()


def test_test_set_is_evaluated_every_test_every_epochs_and_at_the_last(synthetic):
    records, _ = fit(problems.build_problem("mnist-gater", {**SMALL, "epochs": 5, "test_every": 2}),
                     "straight-through")
    assert sorted(e for name, e in records if name == "valid_error") == [1, 2, 3, 4, 5]
    assert sorted(e for name, e in records if name == "test_error") == [2, 4, 5]
    assert sorted(e for name, e in records if name == "sparsity_test") == [2, 4, 5]


@pytest.mark.parametrize("tune_examples", [100, 640])
def test_threshold_is_tuned_on_the_first_tune_examples(synthetic, tune_examples):
    problem = problems.build_problem("mnist-gater", {**SMALL, "epochs": 1, "tune_examples": tune_examples})
    records, _ = fit(problem, "straight-through")
    model = problem.trained_model
    with torch.no_grad():
        logits = model.gate_logits(synthetic["train"][0][:tune_examples])
    assert records[("threshold", None)] == float(tune_threshold(logits, 0.1))
    assert int((logits > records[("threshold", None)]).sum()) == round(0.1 * logits.numel())


@pytest.mark.parametrize("bad", [{"tune_examples": 0}, {"test_every": 0}])
def test_evaluation_settings_must_be_positive(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        problems.build_problem("mnist-gater", bad)


def test_fig2_verdict_reports_differences_and_the_pairs_it_reverses():
    table = {"A": (None, None, 1.0), "B": (None, None, 2.0), "C": (None, None, 3.0)}
    lines = paper_fig2.verdict({"A": [1.2, 1.4], "B": [1.0, 1.2], "C": [3.6]}, table)
    assert lines[0] == "Test error, ours − paper (points): A +0.30; B -0.90 (beyond ±0.5); C +0.60 (beyond ±0.5)."
    assert lines[1] == "2 of 3 rows differ from the paper by more than 0.5 points: B, C."
    assert lines[2] == "Ordering by test error, paper: A < B < C; ours: B < A < C."
    # A and B swap (gap 0.2, spread 0.14 each: beyond it); tau = (2 - 1) / 3
    assert lines[3] == ("The paper's ordering holds for 2 of 3 pairs of rows (Kendall's tau 0.33): reversed A vs B "
                        "(paper 1.00 < 2.00, ours 1.30 > 1.10 beyond the seeds' spread).")
    assert paper_fig2.verdict({"A": []}, table) == []


def test_fig2_terminal_and_report_show_the_same_table(tmp_path):
    """``paper`` / ``reproduce paper-fig2`` prints the report's table (one tables() object, one
    formatter): equal content; mean ± sd over the finished seeds, the paper's numbers below."""
    from analysis.frames import load_results
    from bench.harness import RunResult
    from bench.metrics import Metric
    from bench.store import Store
    from experiments.base import planned_results

    experiment = paper_fig2.PaperFig2()
    planned = experiment.runs(quick=False, seeds=[0, 1], device="cpu")
    with Store(tmp_path / "p.db") as store:
        for i, p in enumerate(planned):
            if p.label == "Baseline Sigmoid" and p.config.seed == 1:
                status, metrics, error = "failed", [], "diverged"
            else:
                status, error = "finished", None
                metrics = [Metric(name, value, epoch=epoch) for epoch in (49, 50) for name, value in
                           (("train_criterion", 0.01 * epoch), ("valid_error", 1.5 + p.config.seed),
                            ("test_error", 2.0 + p.config.seed), ("sparsity_test", 0.9))]
            store.save(RunResult(p.config, status, metrics, {}, "2024-01-01T00:00:00+00:00",
                                 "2024-01-01T00:00:01+00:00", 1.0, error), {"torch": "test"}, "abc", "cpu (test)")
        text = experiment.table(store, planned, False, 100)
        (terminal,) = experiment.tables(planned_results(store, planned), planned)
    (section,) = experiment.sections(load_results(tmp_path / "p.db"))
    (report,) = section.tables
    assert terminal.title == report.title and terminal.caption == report.caption
    assert terminal.frame.equals(report.frame)
    lines = text.splitlines()
    assert report.to_text(100) in text and max(map(len, lines)) <= 100
    rows = terminal.frame.set_index("model / estimator")
    # test error 2 and 3 over seeds 0, 1: 2.50 ± 0.71 (sd of (2, 3) = 0.7071); criterion at the last epoch
    assert list(rows.loc["Straight-through"]) == ["2/2", "5.00e-01 ± 0.00e+00", "2.00 ± 0.71", "2.50 ± 0.71",
                                                   "0.900 ± 0.000"]
    assert list(rows.loc["  straight-through"]) == ["paper", "3.3e-03", "1.42", "1.39", ""]
    assert list(rows.loc["Baseline Sigmoid"])[:4] == ["1/2", "5.00e-01", "1.50", "2.00"]  # one finished seed
    assert "Baseline Sigmoid seed 1 failed: diverged" in terminal.caption
    for line in section.text:  # the verdict, in both
        assert textwrap.fill(line, 100, break_on_hyphens=False) in text
    assert section.text[0].startswith("Test error, ours − paper (points): Noisy Rectifier +0.63 (beyond ±0.5)")
