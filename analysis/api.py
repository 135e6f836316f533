"""The public Python API, for notebooks and scripts: run a sweep, load a store, rank, draw.

    from analysis.api import run, load, rank, plot_bias_variance
    frame = run("reinforce,straight-through", "bernoulli-target(d=4)", samples=20_000, seeds=[0, 1])
    rank(frame)                      # the command line's ranking, as a DataFrame
    plot_bias_variance(frame)        # a matplotlib Figure

It lives in ``analysis``, the layer that may import both the harness (to run) and the figures (to
draw): the import direction command line -> experiments/analysis -> bench -> (estimators, problems)
holds without a package above them all. ``python -m bench run`` and ``report`` are thin layers over
the same functions (``bench.sweep.plan_sweep`` and ``run_sweep``, ``load_results``,
``analysis.report.ranking_frame`` and the figure builders), so the numbers are the same.

A frame is tidy: one row per (run, scope, metric, epoch, step) with the run's labels and
coordinates; ``frame.attrs["runs"]`` keeps the runs table (every status, with notes and traits) that
the figures read. Filter it with boolean masks (pandas keeps ``attrs``); a frame built some other
way can be passed back with :func:`frame_of`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure as MplFigure

from analysis import figures
from analysis.frames import NoResults, Results, load_results
from analysis.figures import unbiased_traits
from analysis.report import mathtext_safe, ranking_frame, table_ranking
from bench import harness, sweep
from bench.summary import DEFAULT_BUDGET
from bench.sweep import DEFAULT_PROBLEMS, DEFAULT_SAMPLES, DEFAULT_THREADS

class RunsTable:
    """The runs table a frame carries in ``attrs["runs"]``: equal only to itself and never copied,
    so pandas keeps it through filters and through concat of frames from one call, and drops it
    (rather than failing or copying it per operation) where frames from different calls meet."""

    __slots__ = ("frame",)

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __deepcopy__(self, memo) -> "RunsTable":
        return self

    def __repr__(self) -> str:
        return f"RunsTable({len(self.frame)} runs)"


def frame_of(results: Results) -> pd.DataFrame:
    """The tidy frame of ``results``: its metrics (which carry each run's estimator, problem, seed,
    samples, labels and coordinates) with ``unbiased``, the declared trait; the runs table rides in
    ``attrs``."""
    traits = unbiased_traits(results.runs)
    frame = results.metrics.copy()
    frame["unbiased"] = frame["estimator_label"].map(lambda label: traits.get(label) == "unbiased").astype(bool)
    frame.attrs["runs"] = RunsTable(results.runs)
    frame.attrs["source"] = results.source
    return frame


def results_of(frame: pd.DataFrame) -> Results:
    """The :class:`Results` behind a frame from :func:`run` or :func:`load` (or a filtered copy):
    the runs of the frame's rows, plus the runs that did not finish."""
    if isinstance(frame, Results):
        return frame
    runs = getattr(frame.attrs.get("runs"), "frame", None)
    if runs is None:
        raise ValueError("this frame has no runs table in frame.attrs['runs'] (pandas drops it in merge and concat): "
                         "filter the frame from run() or load() with boolean masks, or call load() again")
    if frame.empty:
        raise NoResults("the frame is empty: nothing to rank or draw")
    runs = runs[runs["run_id"].isin(frame["run_id"].unique()) | (runs["status"] != "finished")]
    metrics = frame.drop(columns=["unbiased"], errors="ignore")
    metrics.attrs = {}
    return Results(runs.reset_index(drop=True), metrics.reset_index(drop=True), frame.attrs.get("source", ""))


def run(estimators: str | Sequence[str] = "all", problems: str | Sequence[str] = DEFAULT_PROBLEMS,
        samples: int = DEFAULT_SAMPLES, seeds: Sequence[int] = (0,), db: str | Path | None = None, jobs: int = 1,
        progress: bool = True, device: str = "cpu", warmup: int = harness.DEFAULT_WARMUP,
        threads: int | None = DEFAULT_THREADS, force: bool = False, plugins: Sequence[str] = ()) -> pd.DataFrame:
    """Measure ``estimators`` x ``problems`` x ``seeds`` and return the tidy frame of these runs.

    Specs as on the command line: ``"all"``, ``"reinforce,arm(...)"`` or a list of specs. With
    ``db`` the runs go to that store and a repeated call resumes (a finished run is not recomputed
    unless ``force``), exactly as ``python -m bench run --db``; without it they live in a temporary
    store that is deleted before this returns. ``jobs``: worker processes; ``threads``: torch
    threads per process (the command line's default); ``progress``: the progress bar."""
    if isinstance(seeds, int):
        seeds = [seeds]
    if plugins:
        for error in sweep.load_plugins(plugins):
            print(f"warning: {error} (skipped)")
    configs = sweep.plan_sweep(estimators, problems, list(seeds), samples, device, warmup)
    if db is not None:
        _, path = sweep.run_sweep(configs, Path(db), jobs=jobs, force=force, quiet=not progress, plugins=plugins,
                                  threads=threads)
        return _planned_frame(path, configs)
    with tempfile.TemporaryDirectory(prefix="stochgrad-") as folder:
        path = Path(folder) / "results.db"
        sweep.run_sweep(configs, path, jobs=jobs, force=force, quiet=not progress, plugins=plugins, threads=threads)
        frame = _planned_frame(path, configs)
        frame.attrs["source"] = "(in memory)"
        return frame


def _planned_frame(path: Path, configs: Sequence[harness.RunConfig]) -> pd.DataFrame:
    """The frame of just these configs' runs in the store at ``path`` (it may hold others)."""
    results = load_results(path)
    keys = {c.key for c in configs}
    runs = results.runs[results.runs["config_key"].isin(keys)]
    return frame_of(Results(runs.reset_index(drop=True),
                            results.metrics[results.metrics["run_id"].isin(runs["run_id"])].reset_index(drop=True),
                            results.source))


def load(db: str | Path, estimators: str | None = None, problems: str | None = None) -> pd.DataFrame:
    """The tidy frame of a store (``python -m bench report``'s input), optionally only the runs
    matching comma-separated specs (``name`` or ``name(k=v)``, as ``report --estimators``)."""
    if not os.path.exists(db):
        raise FileNotFoundError(f"no results database at {db}")
    return frame_of(load_results(db, estimators, problems))


def problems_of(frame: pd.DataFrame) -> list[str]:
    """The problem labels of the gradient runs in ``frame``, in the report's order."""
    gradient = frame[~frame["training"]] if "training" in frame else frame
    return figures.ordered(gradient["problem_label"])


def rank(frame: pd.DataFrame, problem: str | None = None, budget: int = DEFAULT_BUDGET) -> pd.DataFrame:
    """The estimators on one problem, best first, as ``python -m bench run`` and the report rank
    them: unbiased estimators (declared trait) by MSE × loss evaluations per estimate (MSE at an
    equal budget of loss evaluations), then biased ones and deterministic baselines by the MSE at
    ``budget`` loss evaluations, each then by time. ``problem``: a problem label; may be left out
    when the frame has one problem. One row per estimator label, mean over seeds."""
    results = results_of(frame)
    labels = problems_of(results.gradient)
    if problem is None:
        if len(labels) != 1:
            raise ValueError(f"the frame holds {len(labels)} problems; pick one with problem=: {', '.join(labels)}")
        problem = labels[0]
    elif problem not in labels:
        raise ValueError(f"no gradient runs of problem {problem!r} in the frame; it holds: {', '.join(labels)}")
    at = results.gradient[results.gradient["problem_label"] == problem]
    ranked = ranking_frame(at, unbiased_traits(results.runs), budget)
    return ranked.rename_axis("estimator")


def _drawn(built: figures.Figure | figures.Missing) -> MplFigure:
    if isinstance(built, figures.Missing):
        raise ValueError(f"{built.title}: not drawn, {built.reason}")
    built.figure.suptitle(built.title)
    return built.figure


def _ranked(builder, frame: pd.DataFrame, budget: int) -> MplFigure:
    results = results_of(frame)
    return _drawn(builder(mathtext_safe(results), table_ranking(results, budget)))


def plot_bias_variance(frame: pd.DataFrame, budget: int = DEFAULT_BUDGET) -> MplFigure:
    """Bias norm and total variance per estimator and problem, estimators in :func:`rank`'s order."""
    return _ranked(figures.bias_variance, frame, budget)


def plot_snr_cosine(frame: pd.DataFrame, budget: int = DEFAULT_BUDGET) -> MplFigure:
    """Gradient signal-to-noise ratio and cosine to the true gradient, per estimator and problem."""
    return _ranked(figures.snr_cosine, frame, budget)


def plot_cost_front(frame: pd.DataFrame, budget: int = DEFAULT_BUDGET) -> MplFigure:
    """MSE of one estimate against its cost in loss evaluations, with the Pareto front per problem."""
    return _ranked(figures.mse_frontier, frame, budget)


def plot_time_front(frame: pd.DataFrame, budget: int = DEFAULT_BUDGET) -> MplFigure:
    """MSE of one estimate against its wall time, with the Pareto front per problem."""
    return _ranked(figures.mse_time_frontier, frame, budget)


def plot_variance_vs_samples(frame: pd.DataFrame) -> MplFigure:
    """Variance against the number of estimates per run (runs that differ only in samples)."""
    return _drawn(figures.variance_vs_samples(mathtext_safe(results_of(frame))))


def plot_training_curves(frame: pd.DataFrame) -> MplFigure:
    """Learning curves of training problems: criterion, errors and trajectory variance per epoch."""
    return _drawn(figures.learning_curves(mathtext_safe(results_of(frame))))


def plot_sparsity_curves(frame: pd.DataFrame) -> MplFigure:
    """Fraction of gate units exactly zero per epoch, on gating training problems."""
    return _drawn(figures.sparsity_curves(mathtext_safe(results_of(frame))))


__all__ = ["DEFAULT_PROBLEMS", "DEFAULT_SAMPLES", "NoResults", "RunsTable", "frame_of", "load", "plot_bias_variance",
           "plot_cost_front", "plot_snr_cosine", "plot_sparsity_curves", "plot_time_front", "plot_training_curves",
           "plot_variance_vs_samples", "problems_of", "rank", "results_of", "run"]
