"""analysis: loading the store into frames, summaries over seeds, labels, filters, and what the
figures draw, on stores written through Store.save with hand-chosen numbers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from analysis import figures, report
from analysis.frames import NoResults, _network_shape, curves, final_values, load_results
from analysis.tables import load_metrics, metric_table, per_epoch, summarise
from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.store import Store
from experiments import paper_fig2

TARGET = {"d": 3, "t": 0.45, "logit": 0.0}  # bernoulli-target's defaults except d


def save(store: Store, estimator: str, params: dict, metrics: list[Metric], seed: int = 0,
         problem: str = "bernoulli-target", problem_params: dict | None = None, samples: int = 1000,
         notes: dict | None = None, status: str = "finished") -> int:
    config = RunConfig(estimator, params, problem, dict(TARGET if problem_params is None else problem_params),
                       seed, samples)
    result = RunResult(config, status, metrics, {"reference": "exact", **(notes or {})},
                       f"2024-01-0{seed + 1}T00:00:00.000+00:00", f"2024-01-0{seed + 1}T00:00:02.000+00:00", 2.0,
                       None if status == "finished" else "ValueError: boom")
    return store.save(result, {"torch": "test"}, "abc123", "cpu (test)")


def drawn_y(ax) -> list[float]:
    """y of every scattered point in an axes."""
    return sorted(float(y) for c in ax.collections if isinstance(c, PathCollection) for y in c.get_offsets()[:, 1])


def data_lines(ax) -> list[tuple[float, ...]]:
    """y of every solid line (error-bar caps and the Pareto front are not solid)."""
    return [tuple(float(y) for y in line.get_ydata()) for line in ax.lines if line.get_linestyle() == "-"]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "r.db"


def test_labels_show_non_default_and_varying_parameters(db):
    with Store(db) as store:
        save(store, "reinforce-loo", {"K": 4}, [Metric("variance", 1.0)])
        save(store, "reinforce-loo", {"K": 8}, [Metric("variance", 0.5)])
        save(store, "straight-through", {}, [Metric("variance", 2.0)])
        save(store, "not-registered-here", {"a": 1}, [Metric("variance", 3.0)])
        save(store, "reinforce", {}, [Metric("variance", 3.0)], problem_params={**TARGET, "t": 0.4})
    runs = load_results(db).runs.set_index("run_id")
    assert runs["estimator_label"].tolist() == ["reinforce-loo(K=4)", "reinforce-loo(K=8)", "straight-through",
                                                "not-registered-here(a=1)", "reinforce"]
    # t varies between the bernoulli-target runs, so every label shows it; logit is default everywhere.
    assert runs["problem_label"].tolist() == ["bernoulli-target(d=3,t=0.45)"] * 4 + ["bernoulli-target(d=3,t=0.4)"]


def test_summarise_over_seeds(db):
    with Store(db) as store:
        save(store, "reinforce", {}, [Metric("variance", 1.0, 0.3)], seed=0)
        save(store, "reinforce", {}, [Metric("variance", 3.0, 0.4)], seed=1)
        save(store, "reinforce", {}, [Metric("variance", 10.0, 0.1)], seed=0, problem_params={**TARGET, "d": 4})
    summary = summarise(load_results(db).metrics, "variance").set_index("problem_label")
    row = summary.loc["bernoulli-target(d=3)"]
    assert row["mean"] == 2.0 and row["n"] == 2 and row["seeds"] == "0,1"
    assert row["sd"] == pytest.approx(math.sqrt(2.0), rel=1e-12)
    assert row["se"] == pytest.approx(math.sqrt(0.3**2 + 0.4**2) / 2, rel=1e-12)  # 0.25
    single = summary.loc["bernoulli-target(d=4)"]
    assert single["mean"] == 10.0 and single["se"] == pytest.approx(0.1) and math.isnan(single["sd"])
    # The older table helper, on the raw store frame, agrees.
    table = metric_table(load_metrics(db), "variance")
    assert table.loc["reinforce", ("value", "bernoulli-target")] == pytest.approx((1.0 + 3.0 + 10.0) / 3)


def test_final_values_prefer_end_of_run_then_last_epoch(db):
    with Store(db) as store:
        gradient = save(store, "reinforce", {}, [Metric("variance", 5.0, 0.5, step=0), Metric("variance", 2.0, 0.2)])
        training = save(store, "straight-through", {}, [
            Metric("train_criterion", 3.0, epoch=0), Metric("train_criterion", 2.0, epoch=1),
            Metric("train_criterion", 1.5, epoch=2), Metric("sparsity_test", 0.8, epoch=2),
            Metric("threshold", 0.25)], problem="toy-gater", problem_params={}, samples=0)
    results = load_results(db)
    final = final_values(results.metrics).set_index(["run_id", "metric"])["value"]
    assert final[(gradient, "variance")] == 2.0      # after adaptation, not the step-0 value
    assert final[(training, "train_criterion")] == 1.5  # the last epoch
    assert final[(training, "threshold")] == 0.25
    runs = results.runs.set_index("run_id")
    assert not runs.at[gradient, "training"] and runs.at[training, "training"]
    assert set(results.gradient["run_id"]) == {gradient} and set(results.training["run_id"]) == {training}


def test_curves_and_per_epoch_over_seeds(db):
    with Store(db) as store:
        for seed, values in ((0, (4.0, 2.0)), (1, (6.0, 3.0))):
            save(store, "reinforce", {}, [Metric("train_loss", v, epoch=e) for e, v in enumerate(values)]
                 + [Metric("train_loss", 9.0, step=100)], seed=seed, problem="toy-gater", problem_params={}, samples=0)
        save(store, "sts", {}, [Metric("train_loss", v, step=s) for s, v in ((10, 1.0), (20, 0.5))],
             problem="toy-gater", problem_params={}, samples=0)
    results = load_results(db)
    rows = curves(results.training, ["train_loss"])
    assert set(rows.loc[rows["estimator_label"] == "reinforce", "axis"]) == {"epoch"}  # epochs win over steps
    assert set(rows.loc[rows["estimator_label"] == "sts", "axis"]) == {"step"}
    curve = per_epoch(results.training, "train_loss").set_index(["estimator_label", "position"])
    assert curve.loc[("reinforce", 0.0), "mean"] == 5.0 and curve.loc[("reinforce", 1.0), "mean"] == 2.5
    assert curve.loc[("reinforce", 0.0), "sd"] == pytest.approx(math.sqrt(2.0))
    assert curve.loc[("sts", 20.0), "mean"] == 0.5

    figure = figures.learning_curves(results)
    assert isinstance(figure, figures.Figure)
    (ax,) = figure.figure.axes
    assert ax.get_xlabel() == "training epoch" or ax.get_xlabel() == "training step"
    assert (5.0, 2.5) in data_lines(ax)  # the mean over the two seeds, per epoch
    assert "± 1 standard deviation between seeds" in figure.caption
    assert isinstance(figures.sparsity_curves(results), figures.Missing)


def test_select_filters_and_names_what_is_stored(db):
    with Store(db) as store:
        save(store, "reinforce-loo", {"K": 4}, [Metric("variance", 1.0)])
        save(store, "reinforce-loo", {"K": 8}, [Metric("variance", 0.5)])
        save(store, "straight-through", {}, [Metric("variance", 2.0)], problem_params={**TARGET, "d": 5})
    assert set(load_results(db, estimators="reinforce-loo").runs["estimator_label"]) == {"reinforce-loo(K=4)",
                                                                                       "reinforce-loo(K=8)"}
    assert load_results(db, estimators="reinforce-loo(K=8)").runs["estimator_label"].tolist() == ["reinforce-loo(K=8)"]
    assert load_results(db, problems="bernoulli-target(d=5)").runs["estimator"].tolist() == ["straight-through"]
    with pytest.raises(NoResults, match=r"--estimators: 'reinforce' matches no stored run \(stored: reinforce-loo"):
        load_results(db, estimators="reinforce-loo,reinforce")
    with pytest.raises(NoResults, match="together match no stored run"):
        load_results(db, estimators="reinforce-loo", problems="bernoulli-target(d=5)")


def test_a_store_without_finished_runs_is_refused(db):
    with Store(db) as store:
        pass
    with pytest.raises(NoResults, match="holds no runs"):
        load_results(db)
    with Store(db) as store:
        save(store, "reinforce", {}, [], status="failed")
    with pytest.raises(NoResults, match=r"no finished run with metrics .*\(1 failed\)"):
        load_results(db)


@pytest.mark.parametrize("params, shape", [
    ({"widths": "8-6-4"}, (3.0, math.nan)), ({"widths": "5-5", "depth": 9}, (2.0, 5.0)),
    ({"widths": "", "depth": 3, "width": 50}, (3.0, 50.0)), ({"d": 4}, (math.nan, math.nan)),
    ({"widths": "", "depth": 0, "width": 0}, (math.nan, math.nan))],
    ids=["uneven-widths", "widths-win", "depth-width", "flat", "unset"])
def test_network_shape(params, shape):
    np.testing.assert_equal(_network_shape(params), shape)


@pytest.mark.parametrize("cost, variance, front", [
    ([1, 2, 3, 4], [5, 3, 4, 1], [0, 1, 3]),
    ([1, 1, 2], [2, 1, 1], [1]),          # equal cost: the lower variance; equal variance later: dominated
    ([3, 1, 2], [0, 9, 9], [1, 0])],
    ids=["staircase", "ties", "zero-variance"])
def test_pareto_front(cost, variance, front):
    assert figures.pareto_front(cost, variance) == front


def test_bias_variance_figure_draws_the_stored_values(db):
    with Store(db) as store:
        for seed in (0, 1):
            save(store, "reinforce", {}, [Metric("bias_norm", 1e-4 * (1 + seed), 1e-5), Metric("exact_bias_norm", 0.0),
                                          Metric("variance", 2.0, 0.1), Metric("exact_variance", 2.0)], seed=seed)
            save(store, "straight-through", {}, [Metric("bias_norm", 0.1, 1e-3), Metric("exact_bias_norm", 0.1),
                                                 Metric("variance", 3.0, 0.1), Metric("exact_variance", 3.0)], seed=seed)
    results = load_results(db)
    figure = figures.bias_variance(results)
    bias_ax, variance_ax = figure.figure.axes[:2]
    # Bias spans three decades: log axis; the exact zero sits at the floor, a quarter of the smallest value.
    assert bias_ax.get_yscale() == "log" and variance_ax.get_yscale() == "linear"
    assert drawn_y(bias_ax) == pytest.approx([1.5e-4 / 4, 1.5e-4, 0.1, 0.1])
    assert drawn_y(variance_ax) == pytest.approx([2.0, 2.0, 3.0, 3.0])
    assert [t.get_text() for t in bias_ax.get_xticklabels()] == ["reinforce", "straight-through"]
    assert "seeds 0, 1 (2 per estimator and problem)" in figure.caption
    assert "exact (closed form or enumeration) for every problem" in figure.caption
    legend = [t.get_text() for legend in figure.figure.legends for t in legend.get_texts()]
    assert figures.KIND_EXACT in legend and any("drawn at the floor" in t for t in legend)


def test_sweeps_draw_what_exists_and_say_what_does_not(db):
    with Store(db) as store:
        for d, variance in ((2, 0.5), (4, 1.0), (8, 2.0)):
            save(store, "reinforce", {}, [Metric("variance", variance, 0.01)], problem_params={**TARGET, "d": d})
        save(store, "straight-through", {}, [Metric("variance", 9.0, 0.01)], problem_params={**TARGET, "d": 2})
    results = load_results(db)
    figure = figures.variance_vs_dimension(results)
    (ax,) = figure.figure.axes
    assert ax.get_title() == "bernoulli-target" and ax.get_xlabel() == "units d (problem parameter)"
    assert data_lines(ax) == [(0.5, 1.0, 2.0)]  # one line: reinforce
    samples = figures.variance_vs_samples(results)
    assert isinstance(samples, figures.Missing) and "1000 stored" in samples.reason
    depth = figures.variance_vs_depth(results)
    assert isinstance(depth, figures.Missing) and "no reported gradient-problem run has a depth" in depth.reason
    assert isinstance(figures.variance_per_scope(results), figures.Missing)


def test_scoped_variance_and_frontier(db):
    problem = {"widths": "3-2", "data_seed": 0}
    with Store(db) as store:
        save(store, "reinforce", {}, [Metric("variance", 3.0, 0.1), Metric("variance", 1.0, 0.1, scope="layer1"),
                                      Metric("variance", 2.0, 0.1, scope="layer2"),
                                      Metric("variance", 1.5, 0.1, scope="layer2.weight"),
                                      Metric("loss_evals", 1.0), Metric("time_per_estimate_s", 2e-6),
                                      Metric("mse", 3.0, 0.1)],  # unbiased: MSE = variance
             problem="sigmoid-belief-net", problem_params=problem)
        save(store, "reinforce-loo", {"K": 4}, [Metric("variance", 0.3, 0.1), Metric("loss_evals", 4.0),
                                                Metric("mse", 0.3, 0.1),
                                                Metric("time_per_estimate_s", 8e-6)],
             problem="sigmoid-belief-net", problem_params=problem)
    results = load_results(db)
    scoped = figures.variance_per_scope(results)
    (ax,) = scoped.figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layer1", "layer2"]  # top-level scopes only
    assert data_lines(ax) == [(1.0, 2.0)]
    frontier = figures.frontier(results)
    (evals_ax,) = [ax for ax in frontier.figure.axes if ax.axison]  # one family: one panel
    front = [line for line in evals_ax.lines if line.get_linestyle() == "--"]
    assert [tuple(front[0].get_xdata()), tuple(front[0].get_ydata())] == [(1.0, 4.0), (3.0, 0.3)]
    (time_ax,) = [ax for ax in figures.mse_time_frontier(results).figure.axes if ax.axison]
    assert tuple(time_ax.lines[0].get_xdata()) == pytest.approx((2.0, 8.0))  # µs
    table = report.cost_adjusted(results)[0].frame.set_index("estimator")
    assert table.at["reinforce-loo", "variance × loss evals"] == "1.2"
    assert table.at["reinforce", "variance × µs"] == "6" and table.at["reinforce", "Pareto (time / evals)"] == "yes/yes"


def test_markdown_and_number_formatting():
    frame = pd.DataFrame({"a|b": ["x|y", 1.5]})
    assert report.markdown_table(frame) == "| a\\|b |\n| --- |\n| x\\|y |\n| 1.5 |"
    assert report.fmt_pm(0.0123449, 0.00021) == "0.01234 ± 0.00021"
    assert report.fmt(float("inf")) == "∞" and report.fmt(None) == "–" and report.fmt_pm(float("nan"), 1) == "–"


@pytest.mark.parametrize("table", [
    {"Straight-through": (3.3e-3, 1.42, 1.39)},
    {"Straight-through": {"train_criterion": 3.3e-3, "valid_error": 1.42, "test_error": 1.39}},
    [("Straight-through", 3.3e-3, 1.42, 1.39)]], ids=["tuples", "dicts", "rows"])
def test_published_numbers_in_any_layout(table):
    assert paper_fig2.published_numbers(table) == {"Straight-through": (3.3e-3, 1.42, 1.39)}


def test_adaptation_table_compares_before_and_after(db):
    with Store(db) as store:
        for seed, (before, after) in enumerate(((4.0, 1.0), (6.0, 2.0))):
            save(store, "reinforce", {}, [Metric("variance", before, 0.2, step=0), Metric("variance", after, 0.1)],
                 seed=seed)
    (table,) = report.adaptation_table(load_results(db))
    row = table.frame.iloc[0]
    assert row["estimator"] == "reinforce" and row["problem"] == "bernoulli-target(d=3)"
    se = math.sqrt(2 * 0.2**2) / 2
    assert row["variance before adaptation"] == report.fmt_pm(5.0, se) == "5 ± 0.14"
    assert row["variance after adaptation"] == "1.5 ± 0.071" and row["ratio after / before"] == "0.3"


# -- rankings on MSE at an equal budget, SNR, estimator families ------------------------------------
def _budget_store(db):
    """At an equal budget of loss evaluations reinforce-loo(K=8) (MSE 0.004 x 8) beats reinforce
    (0.05 x 1); exact is deterministic (SNR 4.3e8, rounding noise). Among the biased ones, at 100
    loss evaluations the deterministic sigmoid (bias² 0) beats the zero-variance rectifier (bias²
    0.09), which beats straight-through (bias² 2 + variance 1 / 100)."""
    with Store(db) as store:
        for name, params, mse, variance, evals, snr in (
                ("rectifier", {}, 0.09, 0.0, 1.0, math.inf), ("reinforce", {}, 0.05, 0.05, 1.0, 0.5),
                ("reinforce-loo", {"K": 8}, 0.004, 0.004, 8.0, 2.0), ("straight-through", {}, 3.0, 1.0, 1.0, 3.0),
                ("exact", {}, 1e-16, 1e-17, 8.0, 4.3e8), ("sigmoid", {}, 0.0, 0.0, 1.0, math.nan)):
            bias = math.sqrt(mse - variance + variance / 1000)  # bias² debiased: ‖bias‖² − variance / n
            save(store, name, params, [Metric("mse", mse, 1e-4), Metric("variance", variance, 1e-4),
                                       Metric("bias_norm", bias, 1e-4),
                                       Metric("loss_evals", evals), Metric("time_per_estimate_s", 1e-5),
                                       Metric("snr", snr, 0.01), Metric("cosine", 0.5, 0.01)])
    return load_results(db)


def test_rankings_and_front_use_mse_at_equal_budget(db):
    results = _budget_store(db)
    table = report.cost_adjusted(results)[0].frame
    # unbiased ones at equal loss evaluations, then biased ones at 100 loss evaluations
    assert table["estimator"].tolist() == ["exact", "reinforce-loo(K=8)", "reinforce", "sigmoid", "rectifier",
                                           "straight-through"]
    assert table["unbiased"].tolist() == ["unbiased"] * 3 + ["biased"] * 3
    assert table["MSE at 100 evals"].tolist()[3:] == ["0", "0.09", "2.01"]
    unbiased, biased = report.estimator_summary(results)
    assert unbiased.title == "bernoulli-target(d=3): unbiased estimators"
    assert biased.title == "bernoulli-target(d=3): biased estimators and deterministic baselines"
    # the summary tables are ranked the same way, each group on its own
    assert unbiased.frame["estimator"].tolist() + biased.frame["estimator"].tolist() == table["estimator"].tolist()
    assert "MSE × loss evals" in unbiased.frame and "MSE at 100 evals" in biased.frame
    assert "MSE at 100 evals" not in unbiased.frame and "MSE × loss evals" not in biased.frame
    assert report.estimator_summary(results, budget=1)[1].frame["MSE at 1 evals"].tolist() == ["0", "0.09", "3"]
    figure = figures.mse_frontier(results, rank=report.table_ranking(results))
    assert "Mean squared error" in figure.title
    evals_ax = figure.figure.axes[1]
    front = [line for line in evals_ax.lines if line.get_linestyle() == "--"][0]
    assert 0.09 not in [round(y, 6) for y in front.get_ydata()]  # the biased rectifier is not on the MSE front
    # One panel per family, each naming its estimators beside their points with their place in the ranking.
    named = {" ".join(ax.get_title().split()): sorted(t.get_text() for t in ax.texts)
             for ax in figure.figure.axes if ax.axison}
    assert named == {"bernoulli-target(d=3): exact": ["#1 exact"],
                     "bernoulli-target(d=3): score function": ["#2 reinforce-loo(K=8)", "#3 reinforce"],
                     "bernoulli-target(d=3): straight-through": ["#6 straight-through"],
                     "bernoulli-target(d=3): non-binary": ["#4 sigmoid", "#5 rectifier"]}


def test_snr_is_logarithmic_with_deterministic_estimators_set_apart(db):
    results = _budget_store(db)
    figure = figures.snr_cosine(results)
    snr_ax, cosine_ax = figure.figure.axes[:2]
    assert snr_ax.get_yscale() == "log"
    assert [t.get_text() for t in snr_ax.get_xticklabels()] == ["reinforce", "reinforce-loo(K=8)", "straight-through"]
    assert drawn_y(snr_ax) == pytest.approx([0.5, 2.0, 3.0])
    assert "deterministic" in figure.caption and "exact on bernoulli-target(d=3)" in figure.caption
    assert "rectifier on bernoulli-target(d=3)" in figure.caption and "sigmoid on bernoulli-target(d=3)" in figure.caption
    assert len([t for t in cosine_ax.get_xticklabels()]) == 6  # the cosine panel keeps every estimator


def test_estimator_styles_colour_by_family_and_mark_each_estimator(db):
    with Store(db) as store:
        for name, params in (("reinforce", {}), ("reinforce-loo", {"K": 8}), ("arm", {}), ("rectifier", {}),
                             ("not-registered-here", {})):
            save(store, name, params, [Metric("variance", 1.0)])
        save(store, "not-registered-either", {}, [Metric("variance", 1.0)], notes={"family": "score function"})
    runs = load_results(db).runs
    family = dict(zip(runs["estimator_label"], runs["family"]))
    assert family == {"reinforce": "score function", "reinforce-loo(K=8)": "score function", "arm": "score function",
                      "rectifier": "non-binary", "not-registered-here": "other",
                      "not-registered-either": "score function"}  # stored family first, then the module
    styles = figures.estimator_styles(runs)
    score = [styles[label] for label in ("arm", "not-registered-either", "reinforce", "reinforce-loo(K=8)")]
    assert len({colour for colour, _, _ in score}) == 1 and len({marker for _, marker, _ in score}) == 4
    assert styles["rectifier"][0] != styles["reinforce"][0] != styles["not-registered-here"][0]


def test_exact_absent_names_the_problem(db):
    with Store(db) as store:
        save(store, "reinforce", {}, [Metric("variance", 1.0)], notes={"exact_moments": "not computed: 2^40 outcomes"})
    text = report.exact_absent(load_results(db))
    assert text == ["Exact bias and variance not computed for reinforce on bernoulli-target(d=3): 2^40 outcomes."]


def test_builtin_sections_declare_every_figure_once():
    """The report's own sections are one declared list; each figure the builders draw sits in one."""
    from analysis import figures, report

    keys = [key for section in report.BUILTIN_SECTIONS for key in section.figures]
    assert len(keys) == len(set(keys)) == len(figures.BUILDERS)
    assert [s.key for s in report.BUILTIN_SECTIONS] == ["summary", "snr", "cost", "scaling", "training"]
