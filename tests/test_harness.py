"""Harness features beyond one gradient: per-scope metrics, adaptation of an estimator's own
parameters, training problems with per-epoch records, bit counting, grids and worker processes."""
from __future__ import annotations

import json
import math

import pytest
import torch

import estimators
import problems
from bench import enumeration, harness, sweep
from bench.specs import SpecError, parse_spec, parse_spec_list
from bench.store import Store
from estimators.base import Estimator, attach_gradient
from problems.base import Record, TrainingProblem
from problems.bernoulli import BernoulliQuadratic


class ScopedQuadratic(BernoulliQuadratic):
    """bernoulli-quadratic whose gradient is reported in two named parts."""

    def scopes(self):
        return {"head": slice(0, 2), "tail": slice(2, None)}


class LearnedConstantBaseline(Estimator):
    """REINFORCE with one learned baseline c, trained to minimise E|g|^2 (the variance, since the
    estimate is unbiased for any c): d/dc E|g|^2 = -2 E[|h - p|^2 (L - c)]."""

    unbiased = True
    needs_loss_backprop = False
    has_parameters = True
    adaptation_lr = 0.05

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Parameter(torch.zeros(()))

    def forward(self, logits, loss_fn):
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        c = self.c.to(logits.dtype)
        g = (h - probs) * (loss.detach() - c).unsqueeze(-1)
        if self.update_state:
            objective = g.pow(2).sum(-1).mean()
            (grad,) = torch.autograd.grad(objective, self.c)
            self.c.grad = grad if self.c.grad is None else self.c.grad + grad
        return attach_gradient(loss, logits, g.detach())


class CountingTrainer(TrainingProblem):
    """Fits the logits of a target problem with the estimator by SGD; reports the exact expected
    loss per epoch (a tiny stand-in for a real training problem)."""

    name = "counting-trainer"

    def __init__(self, epochs: int = 3, steps: int = 20):
        super().__init__()
        self.epochs, self.steps = epochs, steps

    @property
    def units(self):
        return 3

    def progress_total(self):
        return self.epochs * self.steps

    def fit(self, estimator, seed, progress=None):
        target = torch.tensor([0.9, 0.1, 0.5])
        logits = torch.zeros(3, requires_grad=True)
        optimizer = torch.optim.SGD([logits], lr=0.5)
        for epoch in range(self.epochs):
            for _ in range(self.steps):
                optimizer.zero_grad()
                estimator(logits.expand(64, 3), lambda h: ((h - target) ** 2).sum(-1)).mean().backward()
                optimizer.step()
                if progress:
                    progress(1)
            p = torch.sigmoid(logits.detach())
            expected = float((p * (1 - target) ** 2 + (1 - p) * target**2).sum())
            yield Record("train_loss", expected, epoch=epoch)
        yield Record("final_logit_norm", float(logits.detach().norm()))


@pytest.fixture
def registered():
    """Register the test classes for the duration of a test."""
    added = [(problems.PROBLEMS, "scoped-quadratic", ScopedQuadratic),
             (problems.PROBLEMS, "counting-trainer", CountingTrainer),
             (estimators.ESTIMATORS, "learned-constant-baseline", LearnedConstantBaseline)]
    for registry, name, cls in added:
        registry.register(name, cls.__doc__.splitlines()[0])(cls)
    yield
    for registry, name, _ in added:
        registry._entries.pop(name)


def values(metrics, **where):
    return {(m.scope, m.name): m.value for m in metrics
            if all(getattr(m, key) == value for key, value in where.items())}


def test_scopes_partition_every_additive_metric(registered):
    config = harness.make_config("reinforce", {}, "scoped-quadratic", {"d": 5}, 0, 4000)
    metrics, notes = harness.measure(config)
    got = values(metrics, step=None)
    for name in ("variance", "exact_variance", "mse"):
        assert got[("head", name)] + got[("tail", name)] == pytest.approx(got[("all", name)], rel=1e-9)
    # bias norms combine in quadrature; reinforce is exactly unbiased in every scope
    assert got[("head", "exact_bias_norm")] < 1e-15 and got[("tail", "exact_bias_norm")] < 1e-15
    assert math.hypot(got[("head", "bias_norm")], got[("tail", "bias_norm")]) == pytest.approx(got[("all", "bias_norm")])
    # per-run numbers (time, evaluations) are reported once, for the whole gradient
    assert ("all", "loss_evals") in got and ("head", "loss_evals") not in got


def test_adaptation_stores_before_and_after_and_reduces_variance(registered):
    config = harness.make_config("learned-constant-baseline", {}, "bernoulli-quadratic", {"d": 4}, 0, 4000,
                                 warmup=64 * 150)
    metrics, notes = harness.measure(config)
    before, after = values(metrics, step=0), values(metrics, step=None)
    assert "150 Adam steps" in notes["adaptation"]
    # the exact variance is a quadratic in c, minimised by c* = E[|h-p|^2 L] / E[|h-p|^2]; starting
    # from c = 0 the adapted baseline must have moved most of the way towards it
    assert after[("all", "exact_variance")] < 0.7 * before[("all", "exact_variance")]
    assert after[("all", "exact_bias_norm")] < 1e-15 and before[("all", "exact_bias_norm")] < 1e-15


def test_training_problem_records_become_epoch_metrics(registered, tmp_path):
    config = harness.make_config("reinforce-optimal", {}, "counting-trainer", {"epochs": 3}, 0, 100_000, warmup=5)
    assert config.samples == 0 and config.warmup == 0  # schedule lives in the problem's parameters
    result = harness.run(config)
    assert result.status == "finished", result.error
    curve = sorted((m.epoch, m.value) for m in result.metrics if m.name == "train_loss")
    assert [epoch for epoch, _ in curve] == [0, 1, 2]
    assert curve[-1][1] < curve[0][1] + 1e-9 and curve[-1][1] < 1.0  # the optimum is 0.2 + 0.25 + ...
    with Store(tmp_path / "r.db") as store:
        store.save(result, {}, None, "cpu")
        frame = store.metrics()
    rows = frame[frame["metric"] == "train_loss"]
    assert rows["epoch"].tolist() == [0, 1, 2] and rows["step"].isna().all()
    assert frame[frame["metric"] == "final_logit_norm"]["epoch"].isna().all()


def test_bits_are_counted_by_running_one_estimate():
    problem = problems.build_problem("bernoulli-target", {"d": 3})
    assert harness.count_bits(estimators.build_estimator("reinforce-loo", {"K": 3}), problem) == 9
    assert harness.count_bits(estimators.build_estimator("straight-through"), problem) == 3
    assert harness.count_bits(estimators.build_estimator("sigmoid"), problem) == 0
    assert harness.count_bits(estimators.build_estimator("sigmoid-noise"), problem) is None


def test_exact_moments_in_blocks_equal_one_block(monkeypatch):
    problem = problems.build_problem("bernoulli-quadratic", {"d": 5})
    estimator = estimators.build_estimator("reinforce-loo", {"K": 2})
    whole, _ = harness.exact_estimator_moments(estimator, problem, problem.reference())
    monkeypatch.setattr(enumeration, "ENUMERATION_ELEMENTS", 7 * 5)  # blocks of 7 outcomes
    split, reason = harness.exact_estimator_moments(estimator, problem, problem.reference())
    assert reason == "computed in float64 over 2^10 outcomes"
    for a, b in zip(whole, split):
        assert (a.name, a.scope) == (b.name, b.scope) and a.value == pytest.approx(b.value, rel=1e-12, abs=1e-15)


def test_estimator_layer_copies_share_noise_and_freezing_but_not_state():
    estimator = estimators.build_estimator("reinforce-optimal")
    second = estimator.layer(1)
    assert estimator.layer(0) is estimator and estimator.layer(1) is second and second is not estimator
    loss = lambda h: h.sum(-1)  # noqa: E731
    estimator(torch.zeros(8, 2), loss)
    second(torch.zeros(8, 5), loss)
    assert estimator.numerator.shape == (2,) and second.numerator.shape == (5,)
    with estimator.drawing_from(harness.seeded_noise(0, 0, torch.device("cpu"))), estimator.frozen():
        assert estimator.layer(1).rng is estimator.rng and not estimator.layer(1).update_state
    assert estimator.layer(1).update_state
    with pytest.raises(ValueError, match="layer index"):
        estimator.layer(-1)


def test_grid_specs_expand_to_the_product_in_order():
    assert parse_spec_list("p(a=1|2,b=x|y),q") == [
        ("p", {"a": 1, "b": "x"}), ("p", {"a": 1, "b": "y"}), ("p", {"a": 2, "b": "x"}),
        ("p", {"a": 2, "b": "y"}), ("q", {})]
    with pytest.raises(SpecError, match="grid of 2 specs"):
        parse_spec("p(a=1|2)")
    with pytest.raises(SpecError, match="empty value in grid"):
        parse_spec_list("p(a=1||2)")


def test_worker_processes_store_the_same_numbers_as_in_process(tmp_path):
    configs = [harness.make_config(name, {}, "bernoulli-target", {"d": 3}, seed, 2000)
               for name in ("reinforce", "straight-through") for seed in (0, 1)]
    frames = []
    for jobs in (1, 2):  # each worker gets the --threads count, and every run records the count it had
        status, path = sweep.run_sweep(configs, tmp_path / f"jobs{jobs}.db", jobs=jobs, quiet=True, threads=2)
        assert status == 0
        with Store(path, create=False) as store:
            frame = store.metrics()
            assert [json.loads(notes)["threads"] for notes in store.runs()["notes"]] == ["2"] * len(configs)
        frame = frame[~frame["metric"].isin(["time_per_estimate_s", "time_per_estimate_min_s", "time_per_estimate_max_s",
                                               "peak_memory_bytes"])]
        frames.append(frame.sort_values(["estimator", "seed", "scope", "metric"])[
            ["estimator", "seed", "scope", "metric", "value"]].reset_index(drop=True))
    assert frames[0].equals(frames[1])


def test_exact_moments_with_saturated_units():
    """Units with probability exactly 0 or 1 (logit +-40 in float64) contribute log 1 = 0, not NaN."""
    problem = problems.build_problem("bernoulli-target", {"d": 2, "logit": 40.0})
    metrics, reason = harness.exact_estimator_moments(estimators.build_estimator("reinforce"), problem,
                                                      problem.reference())
    assert reason == "computed in float64 over 2^2 outcomes"
    assert all(math.isfinite(m.value) for m in metrics)
