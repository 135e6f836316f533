"""The results store as pandas frames: runs with their parsed configuration, metrics in long form.

:func:`load_results` joins every finished run's metrics with readable labels (``estimator_label``,
``problem_label``: the spec with the parameters that are not defaults or that vary), the run's
sweep coordinates (``samples``, problem ``d``, SBN ``depth`` / ``width``), where in training a
value was measured (``epoch``, ``step``; null for end-of-run values) and whether the run's
reference gradient was exact. Figures and reports (analysis.figures, analysis.report) read these.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench.runinfo import is_training, stored_defaults, stored_family, stored_traits
from bench.specs import format_spec, parse_spec_list
from bench.store import Store
from estimators.families import FAMILY_ORDER, OTHER_FAMILY, family_of  # noqa: F401 (FAMILY_ORDER: for figures)

POSITION_COLUMNS = ("epoch", "step")


class NoResults(LookupError):
    """The store (or the selection asked for) holds nothing to analyse; the message is one line."""


@dataclasses.dataclass
class Results:
    """``runs``: one row per stored run (every status), with parsed ``config``/``notes``/``versions``
    dicts, labels, ``training`` and the sweep coordinates ``d``, ``depth``, ``width``.
    ``metrics``: long form, one row per (finished run, scope, metric, epoch, step), with the
    run's labels and coordinates joined."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    source: str = ""

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "finished"]

    @property
    def gradient(self) -> pd.DataFrame:
        """Metrics of gradient problems (estimates measured against a reference)."""
        return self.metrics[~self.metrics["training"]]

    @property
    def training(self) -> pd.DataFrame:
        """Metrics of training problems (learning curves and end-of-training values)."""
        return self.metrics[self.metrics["training"]]

    def select(self, estimators: str | None = None, problems: str | None = None) -> "Results":
        """Keep the runs matching comma-separated specs: ``name`` matches every run of that name,
        ``name(k=v)`` those whose parameters include k=v. Raises NoResults naming any spec that
        matches no stored run."""
        keep = pd.Series(True, index=self.runs.index)
        for option, text, column in (("--estimators", estimators, "estimator"), ("--problems", problems, "problem")):
            if text is None:
                continue
            matched = pd.Series(False, index=self.runs.index)
            for name, params in parse_spec_list(text):
                hits = pd.Series([stored == name and params_include(values, params) for stored, values in
                                  zip(self.runs[column], self.runs[f"{column}_params_dict"])], index=self.runs.index,
                                 dtype=bool)
                if not hits.any():
                    stored = ", ".join(sorted(self.runs[f"{column}_label"].unique())) or "none"
                    raise NoResults(f"{option}: {format_spec(name, params)!r} matches no stored run "
                                    f"(stored: {stored})")
                matched |= hits
            keep &= matched
        if not keep.any():
            raise NoResults("--estimators and --problems together match no stored run")
        runs = self.runs[keep]
        return Results(runs, self.metrics[self.metrics["run_id"].isin(runs["run_id"])], self.source)


def params_include(stored: dict, wanted: dict) -> bool:
    """Whether stored parameters hold every wanted key with an equal value (numbers compared as
    numbers, so K=8 matches 8.0)."""
    for key, value in wanted.items():
        if key not in stored:
            return False
        have = stored[key]
        if isinstance(have, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isclose(float(have), float(value), rel_tol=1e-12, abs_tol=0.0):
                return False
        elif have != value and str(have) != str(value):
            return False
    return True


def registered_defaults(kind: str, name: str) -> dict[str, Any] | None:
    """Registered default parameters of ``name`` in this process (None when it is not registered
    here, e.g. a plugin not loaded). Only for runs stored without their defaults (see prepare)."""
    import estimators
    import problems

    registry = estimators.ESTIMATORS if kind == "estimator" else problems.PROBLEMS
    try:
        return {key: spec["default"] for key, spec in registry.entry(name).parameters().items()}
    except Exception:  # unknown name or a broken plugin: label with every parameter
        return None


def estimator_family(name: str, stored: dict | None = None) -> str:
    """The estimator's family: stored with the run where it is, else (runs stored before that) from
    the estimator class registered here (see estimators.families); 'other' for anything else."""
    family = stored_family(stored)
    if family is not None:
        return family
    import estimators

    try:
        return family_of(estimators.ESTIMATORS.entry(name).cls)
    except Exception:  # not registered in this process
        return OTHER_FAMILY


def labels(names: pd.Series, params: pd.Series, kind: str, defaults: pd.Series | None = None) -> pd.Series:
    """``name(k=v,...)`` showing the parameters that differ from the defaults or that vary between
    the runs of that name. ``defaults`` (aligned with ``names``): the defaults each run stored, None
    for runs stored without; a name none of whose runs stored them uses the registry here (every
    parameter is shown when the name is not registered)."""
    out = pd.Series("", index=names.index, dtype=object)
    for name in names.unique():
        rows = names == name
        stored = [d for d in (defaults[rows] if defaults is not None else []) if isinstance(d, dict)]
        named = stored[-1] if stored else registered_defaults(kind, name)  # the latest run's, if several
        dicts = params[rows]
        varying = {key for key in set().union(*dicts) if len({json.dumps(d.get(key), sort_keys=True) for d in dicts}) > 1}
        for index, values in dicts.items():
            shown = {k: v for k, v in values.items()
                     if named is None or k in varying or k not in named or named[k] != v}
            out[index] = format_spec(name, shown)
    return out


def _network_shape(params: dict) -> tuple[float, float]:
    """(depth, width) of a layered problem: from ``widths`` like "8-6-4" (width only when every
    layer has the same), else from positive ``depth`` / ``width`` parameters; NaN when absent."""
    widths = params.get("widths")
    if isinstance(widths, str) and widths.strip():
        try:
            sizes = [int(part) for part in widths.replace(",", "-").split("-") if part.strip()]
        except ValueError:
            sizes = []
        if sizes:
            return float(len(sizes)), float(sizes[0]) if len(set(sizes)) == 1 else math.nan
    def positive(value) -> float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if number and value > 0 else math.nan

    return positive(params.get("depth")), positive(params.get("width"))


def _parse_json(text) -> dict | None:
    """A stored JSON object; {} for an empty cell, None when it is not a JSON object."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's stack (a crafted store)
        return None
    return value if isinstance(value, dict) else None


def prepare(runs: pd.DataFrame, metrics: pd.DataFrame, source: str = "") -> Results:
    """Parse and join the raw ``Store.runs()`` and ``Store.metrics()`` frames."""
    runs = runs.copy()
    unreadable: dict[int, list[str]] = {}
    for column in ("estimator_params", "problem_params", "config", "versions", "notes"):
        if column in runs:
            parsed = []
            for index, text in runs[column].items():
                value = _parse_json(text)
                if value is None:
                    unreadable.setdefault(index, []).append(column)
                parsed.append(value or {})
            runs[f"{column}_dict" if column.endswith("params") else column] = parsed
    for index, columns in unreadable.items():  # a damaged or hand-edited row: shown, never measured
        runs.loc[index, "status"] = "unreadable"
        runs.loc[index, "error"] = f"stored {', '.join(columns)} is not valid JSON; the run is left out"
    for kind in ("estimator", "problem"):  # what the run stored; None for runs stored before that
        runs[f"{kind}_defaults"] = [stored_defaults(notes, kind) for notes in runs["notes"]]
    runs["traits"] = [stored_traits(notes) for notes in runs["notes"]]
    runs["estimator_label"] = labels(runs["estimator"], runs["estimator_params_dict"], "estimator",
                                     runs["estimator_defaults"])
    runs["problem_label"] = labels(runs["problem"], runs["problem_params_dict"], "problem", runs["problem_defaults"])
    runs["reference"] = [notes.get("reference", "") for notes in runs["notes"]]
    runs["family"] = [estimator_family(name, {**config, **notes}) for name, config, notes in
                      zip(runs["estimator"], runs.get("config", pd.Series([{}] * len(runs), index=runs.index)),
                          runs["notes"])]
    runs["d"] = [float(p["d"]) if isinstance(p.get("d"), (int, float)) else math.nan for p in runs["problem_params_dict"]]
    shapes = [_network_shape(p) for p in runs["problem_params_dict"]]
    runs["depth"] = [s[0] for s in shapes]
    runs["width"] = [s[1] for s in shapes]

    metrics = metrics.copy()
    for column in POSITION_COLUMNS:  # the store gains these columns; older stores lack them
        if column not in metrics:
            metrics[column] = pd.NA
        metrics[column] = metrics[column].astype("Int64")
    # The stored kind. Runs stored without one: a training run has values at an epoch or a step;
    # a gradient run at most the step-0 values measured before its own parameters were adapted.
    positioned = (metrics["epoch"].notna() | metrics["step"].fillna(0).ne(0)).groupby(metrics["run_id"]).any()
    runs["training"] = [is_training(notes, bool(samples == 0 or positioned.get(run_id, False)))
                        for run_id, samples, notes in zip(runs["run_id"], runs["samples"], runs["notes"])]
    finished = runs[runs["status"] == "finished"]
    joined = ["run_id", "estimator_label", "problem_label", "reference", "training", "d", "depth", "width", "family"]
    metrics = metrics[metrics["run_id"].isin(finished["run_id"])].merge(finished[joined], on="run_id", how="left")
    metrics["training"] = metrics["training"].astype(bool)
    return Results(runs.reset_index(drop=True), metrics.reset_index(drop=True), source)


def load_results(db: str | Path, estimators: str | None = None, problems: str | None = None) -> Results:
    """Read a results database (which must exist) and optionally keep only some runs.

    Raises NoResults when it holds no finished run, or when a filter matches nothing."""
    with Store(db, create=False) as store:
        runs, metrics = store.runs(), store.metrics()
    if runs.empty:
        raise NoResults(f"results database {db} holds no runs (python -m bench run --db {db} stores some)")
    results = prepare(runs, metrics, str(db))
    if estimators is not None or problems is not None:
        results = results.select(estimators, problems)
    if results.metrics.empty:
        statuses = ", ".join(f"{n} {s}" for s, n in results.runs["status"].value_counts().items())
        raise NoResults(f"no finished run with metrics in {db} for this selection ({statuses})")
    return results


def final_values(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, scope, metric): the end-of-run value. That is the row with neither epoch
    nor step when there is one (gradient metrics; for estimators with own parameters, the values
    after adaptation), else the one at the last epoch, then the last step."""
    if metrics.empty:
        return metrics
    order = metrics.assign(
        _end=metrics["epoch"].isna() & metrics["step"].isna(),
        _epoch=metrics["epoch"].astype("Float64").fillna(-1.0),
        _step=metrics["step"].astype("Float64").fillna(-1.0))
    order = order.sort_values(["_end", "_epoch", "_step"], kind="stable")
    last = order.groupby(["run_id", "scope", "metric"], sort=False).tail(1)
    return last.drop(columns=["_end", "_epoch", "_step"]).sort_index()


def curves(metrics: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Rows of the given metrics measured at an epoch or a training step (learning curves), with
    ``position`` = the epoch where there is one, else the step, and ``axis`` saying which."""
    rows = metrics[metrics["metric"].isin(list(names)) & (metrics["epoch"].notna() | metrics["step"].notna())].copy()
    by_epoch = rows.groupby(["run_id", "metric"])["epoch"].transform(lambda e: e.notna().any())
    rows = rows[~by_epoch | rows["epoch"].notna()]
    rows["axis"] = ["epoch" if flag else "step" for flag in by_epoch[rows.index]]
    rows["position"] = rows["epoch"].where(rows["axis"] == "epoch", rows["step"]).astype(float)
    return rows
