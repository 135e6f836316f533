"""How runs are measured: thread count, repeated timing, coupled examples, the exact-vs-Monte-Carlo
check, and warm-up batches of a fixed size (issue 12)."""
from __future__ import annotations

import dataclasses
import json
import re
import time

import pytest
import torch

import estimators
import problems
from benchcli import cli
from bench import harness, metrics
from bench.store import Store
from estimators.base import Estimator, attach_gradient

pytestmark = pytest.mark.usefixtures("one_thread")


class BatchMeanBaseline(Estimator):
    """REINFORCE with the batch-mean loss as baseline: a plugin written from the README that
    couples the examples of one call (each estimate depends on the other examples' losses)."""

    unbiased = True
    needs_loss_backprop = False

    def forward(self, logits, loss_fn):
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        centred = loss.detach() - loss.detach().mean()
        return attach_gradient(loss, logits, (h - probs) * centred.unsqueeze(-1))


@pytest.fixture
def batch_mean_baseline():
    estimators.ESTIMATORS.register("batch-mean-baseline", "REINFORCE, batch-mean baseline")(BatchMeanBaseline)
    yield "batch-mean-baseline"
    estimators.ESTIMATORS._entries.pop("batch-mean-baseline")


def values(result: harness.RunResult) -> dict[str, float]:
    return {m.name: m.value for m in result.metrics if m.scope == "all" and m.step is None}


def run(estimator: str, problem: str, params: dict, samples: int, estimator_params: dict | None = None,
        **options) -> harness.RunResult:
    result = harness.run(harness.make_config(estimator, estimator_params or {}, problem, params, 0, samples,
                                             **options))
    assert result.status == "finished", result.error
    return result


# -- point 4: coupled examples get no exact moments ---------------------------------------------
def test_coupled_examples_get_no_exact_moments(batch_mean_baseline):
    """Replaying all 64 outcomes as one batch made this a different estimator: exact_variance
    3.80 against a Monte Carlo 3.54 +- 0.012. Now the coupling is found and nothing is claimed."""
    result = run(batch_mean_baseline, "bernoulli-quadratic", {"d": 6}, 20_000)
    got = values(result)
    assert "exact_variance" not in got and "exact_bias_norm" not in got and "exact_check_pvalue" not in got
    assert result.notes["exact_moments"] == (
        "not computed: examples coupled (estimate of one example changes with the others' draws)")
    assert got["variance"] == pytest.approx(3.54, rel=0.03)  # the Monte Carlo numbers are still stored


def test_independent_examples_pass_the_coupling_check():
    problem = problems.build_problem("bernoulli-quadratic", {"d": 6})
    for name, params in [("reinforce", {}), ("reinforce-loo", {"K": 2}), ("straight-through", {}), ("disarm", {}),
                         ("exact", {})]:
        exact, reason = harness.enumerate_exact(estimators.build_estimator(name, params), problem, problem.reference())
        assert exact is not None, (name, reason)


# -- point 4: exact moments are checked against the Monte Carlo ones -----------------------------
@pytest.mark.parametrize("estimator, problem, params", [
    ("reinforce", "bernoulli-quadratic", {"d": 6}),
    ("reinforce-optimal", "bernoulli-quadratic", {"d": 6}),
    ("sigmoid", "bernoulli-target", {"d": 3}),  # deterministic: only float32 rounding to tell apart
    ("exact", "bernoulli-target", {"d": 3}),
])
def test_exact_moments_that_agree_are_stored_with_the_check(estimator, problem, params):
    result = run(estimator, problem, params, 20_000)
    got = values(result)
    assert result.notes["exact_check"].startswith("agrees: ")
    assert got["exact_check_pvalue"] >= metrics.EXACT_CHECK_ALPHA
    assert {"exact_variance", "exact_bias_norm"} <= set(got)


@pytest.mark.parametrize("distort, worst", [
    (lambda e: dataclasses.replace(e, variance=e.variance * 1.1), "exact_variance "),
    (lambda e: dataclasses.replace(e, mean=e.mean + torch.eye(e.mean.numel(), dtype=e.mean.dtype)[2] * 0.05),
     "exact mean of coordinate 2 "),
], ids=["variance", "mean"])
def test_exact_moments_that_disagree_are_withheld_and_noted(monkeypatch, distort, worst):
    real = metrics.ExactMoments.enumerate.__func__
    monkeypatch.setattr(metrics.ExactMoments, "enumerate", classmethod(lambda cls, blocks: distort(real(cls, blocks))))
    result = run("reinforce", "bernoulli-quadratic", {"d": 6}, 20_000)
    got = values(result)
    assert result.notes["exact_check"].startswith("disagrees: " + worst), result.notes["exact_check"]
    assert "s.e.)" in result.notes["exact_check"]
    assert "withheld" in result.notes["exact_moments"]
    assert got["exact_check_pvalue"] < metrics.EXACT_CHECK_ALPHA
    assert "exact_variance" not in got and "exact_bias_norm" not in got


def test_exact_check_statistics():
    """The check's z: (Monte Carlo - exact) / standard error, Bonferroni over dim + 1 tests."""
    truth = torch.zeros(2, dtype=torch.float64)
    sampled = metrics.GradientMoments(truth, 4, groups=2)
    sampled.add(torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 2.0], [3.0, 2.0]]))
    n, mean, var = sampled.pooled()
    assert n == 4 and mean.tolist() == [2.0, 1.0] and var == pytest.approx([4 / 3, 4 / 3])
    exact = metrics.ExactMoments(torch.tensor([2.0, 1.0], dtype=torch.float64),
                                 torch.tensor([1.0, 1.0], dtype=torch.float64))
    check = metrics.check_exact(sampled, exact, metrics.Metric("variance", 2.5, 0.25), dtype_eps=0.0)
    assert check.worst.startswith("exact_variance 2 vs Monte Carlo 2.5 ± 0.25 (2.0 s.e.)")
    assert check.pvalue == pytest.approx(3 * 2 * 0.022750131948179195)  # 3 tests, 2 * P(Z > 2)
    assert check.agrees


def test_exact_check_allows_rounding_at_a_coordinate_that_is_zero():
    """A coordinate that is exactly 0 in every sample, whose enumerated mean is a float64 rounding
    residue of the other coordinates (a softmax Jacobian row sums to 0): agreement, not a flag. A real
    discrepancy of the same coordinate, 1e-3 of the gradient's scale, is still flagged."""
    truth = torch.zeros(3, dtype=torch.float64)
    sampled = metrics.GradientMoments(truth, 4, groups=2)
    sampled.add(torch.tensor([[1.0, 0.0, -1.0], [3.0, 0.0, -3.0], [1.0, 0.0, -1.0], [3.0, 0.0, -3.0]]))
    variance = metrics.Metric("variance", 8 / 3, 0.5)
    rounding = metrics.ExactMoments(torch.tensor([2.0, -9.25e-18, -2.0], dtype=torch.float64),
                                    torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    assert metrics.check_exact(sampled, rounding, variance).agrees
    wrong = metrics.ExactMoments(torch.tensor([2.0, -3e-3, -2.0], dtype=torch.float64),
                                 torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    assert not metrics.check_exact(sampled, wrong, variance).agrees


# -- point 3: time per estimate from repeated, warmed-up calls -----------------------------------
def test_time_per_estimate_is_the_median_of_repeated_calls(monkeypatch):
    """A fake clock: the five timed calls take 0.5, 0.1, 0.3, 0.2 and 0.4 s; nothing else is timed."""
    durations = [0.5, 0.1, 0.3, 0.2, 0.4]
    ticks = iter([t for k, d in enumerate(durations) for t in (10.0 * k, 10.0 * k + d)])
    config = harness.make_config("reinforce", {}, "bernoulli-target", {"d": 3}, 0, 2000)
    problem = problems.build_problem("bernoulli-target", {"d": 3})
    estimator = estimators.build_estimator("reinforce")
    calls = []
    real = problem.sample_gradients
    monkeypatch.setattr(problem, "sample_gradients", lambda est, n, observe=None: calls.append(n) or real(est, n, observe))
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    measured, _ = harness.sample_metrics(problem, estimator, config, problem.reference(), {"all": slice(None)}, None)
    got = {m.name: m for m in measured}
    rows = harness.TIMING_ROWS
    assert calls[-6:] == [rows] * 6  # one warm-up call, then the five timed ones
    assert got["time_per_estimate_s"].value == pytest.approx(0.3 / rows)
    assert got["time_per_estimate_s"].stderr is None  # a spread, not a standard error
    assert got["time_per_estimate_min_s"].value == pytest.approx(0.1 / rows)
    assert got["time_per_estimate_max_s"].value == pytest.approx(0.5 / rows)


def test_timing_note_says_what_was_timed_with_threads_and_load():
    result = run("reinforce", "bernoulli-target", {"d": 3}, 500)
    note = result.notes["timing"]
    assert note.startswith("median (and min, max) over 5 timed calls of 500 estimates after one warm-up call; "
                           "1 torch thread(s); load average ")
    assert result.notes["threads"] == "1"


# -- point 2: --threads ---------------------------------------------------------------------------
def stored_notes(db) -> list[dict]:
    with Store(db, create=False) as store:
        return [json.loads(notes) for notes in store.runs()["notes"]]


@pytest.mark.parametrize("option, threads", [([], cli.DEFAULT_THREADS), (["--threads", "2"], 2)])
def test_run_sets_and_records_the_thread_count(tmp_path, option, threads):
    before = torch.get_num_threads()
    db = tmp_path / "r.db"
    status = cli.main(["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)",
                       "--samples", "200", "--db", str(db), "--quiet", *option])
    assert status == 0
    assert [notes["threads"] for notes in stored_notes(db)] == [str(threads)]
    assert torch.get_num_threads() == before  # restored after the sweep


def test_paper_passes_threads_to_the_sweep(monkeypatch, tmp_path):
    from bench import sweep
    from benchcli.commands import reproduce

    seen = {}

    def stop(configs, db, **options):
        seen.update(options)
        raise KeyboardInterrupt  # ends the command here (exit 130), nothing trained

    monkeypatch.setattr(reproduce, "check_data", lambda datasets, data_dir, here=True: None)
    monkeypatch.setattr(sweep, "run_sweep", stop)
    assert cli.main(["paper", "--quick", "--threads", "3", "--db", str(tmp_path / "r.db")]) == 130
    assert seen["threads"] == 3


def test_threads_must_be_positive(tmp_path, capsys):
    assert cli.main(["run", "--threads", "0", "--db", str(tmp_path / "r.db")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads" in err and "positive integer" in err
    assert not (tmp_path / "r.db").exists()


# -- point 9: stateful warm-up in calls of a fixed size ------------------------------------------
def frozen_baseline(samples: int, decay: float) -> torch.Tensor:
    config = harness.make_config("reinforce-optimal", {"decay": decay}, "bernoulli-quadratic", {"d": 4}, 0, samples,
                                 warmup=3000)
    problem = problems.build_problem("bernoulli-quadratic", {"d": 4})
    estimator = estimators.build_estimator("reinforce-optimal", {"decay": decay})
    harness.warm_up(problem, estimator, config)
    return estimator.baseline(4, torch.zeros(4, dtype=torch.float64))


def test_warm_up_does_not_depend_on_samples_and_decay_matters():
    """The averages advance per call; calls were the measurement's chunks (samples / 8), so with
    the default settings the whole warm-up was one call and ``decay`` had no effect."""
    baseline = frozen_baseline(100_000, 0.9)
    assert torch.equal(baseline, frozen_baseline(1_000, 0.9))
    assert not torch.allclose(baseline, frozen_baseline(100_000, 0.5), rtol=1e-3)


def test_exact_moments_of_a_stateful_estimator_do_not_depend_on_samples():
    first = values(run("reinforce-optimal", "bernoulli-quadratic", {"d": 4}, 2_000, warmup=3000))
    second = values(run("reinforce-optimal", "bernoulli-quadratic", {"d": 4}, 30_000, warmup=3000))
    assert first["exact_variance"] == second["exact_variance"]


def test_withheld_exact_moments_are_said_in_the_summary_and_the_report(monkeypatch, tmp_path):
    """A disagreement is flagged where users read numbers: the run summary and the report."""
    from analysis.frames import load_results
    from analysis.report import exact_absent
    from bench.summary import summary_table

    real = metrics.ExactMoments.enumerate.__func__
    monkeypatch.setattr(metrics.ExactMoments, "enumerate",
                        classmethod(lambda cls, blocks: dataclasses.replace(real(cls, blocks),
                                                                            variance=real(cls, blocks).variance * 1.1)))
    result = run("reinforce", "bernoulli-quadratic", {"d": 6}, 20_000)
    db = tmp_path / "r.db"
    with Store(db) as store:
        store.save(result, {"torch": "test"}, None, "cpu (test)")
        text = summary_table(store, [result.config], width=100)
    said = exact_absent(load_results(db))
    assert any(s.startswith("Exact bias and variance withheld for reinforce on bernoulli-quadratic") and
               "disagrees: exact_variance" in s for s in said), said
    assert "Exact bias and variance WITHHELD" in text, text
    assert re.search(r"reinforce on bernoulli-quadratic\S* seed 0: disagrees: exact_variance", " ".join(text.split()))
