"""Read the results store into pandas and summarise it: over seeds, per estimator x problem, per
scope and per epoch.

Over seeds, a metric's value is the mean of the runs' values; ``sd`` is their sample standard
deviation (the spread between seeds), and ``se`` the standard error of that mean from the runs'
own standard errors, sqrt(sum se_i^2) / n (runs are independent).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.frames import curves, final_values
from bench.store import Store

PAIR = ("problem_label", "estimator_label")


def load_metrics(db: str | Path) -> pd.DataFrame:
    """Every stored metric in long form (one row per run, scope, metric and, where the store has
    them, epoch and step; those columns are null for end-of-run values)."""
    with Store(db, create=False) as store:
        frame = store.metrics()
    for column in ("epoch", "step"):
        if column not in frame:
            frame[column] = pd.NA
        frame[column] = frame[column].astype("Int64")
    return frame


def load_runs(db: str | Path) -> pd.DataFrame:
    """The runs table: configuration, seed, versions, git revision, device, times, status, notes."""
    with Store(db, create=False) as store:
        return store.runs()


def combined_stderr(se: pd.Series) -> float:
    """Standard error of the mean of independent values with standard errors ``se``."""
    if len(se) == 0 or se.isna().any():
        return float("nan")
    return float(np.sqrt((se.astype(float) ** 2).sum()) / len(se))


def _over_seeds(rows: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    grouped = rows.groupby(list(by), sort=True, dropna=False)
    out = grouped["value"].agg(mean="mean", sd="std", n="count")
    out["se"] = grouped["stderr"].apply(combined_stderr)
    out["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(v) for v in sorted(s.unique())))
    return out.reset_index()


def summarise(metrics: pd.DataFrame, metric: str, by: Sequence[str] = PAIR, scope: str = "all") -> pd.DataFrame:
    """End-of-run values of ``metric`` over seeds, one row per group ``by`` (default: problem and
    estimator): columns ``mean``, ``sd``, ``n``, ``se``, ``seeds``."""
    rows = final_values(metrics)
    rows = rows[(rows["metric"] == metric) & (rows["scope"] == scope)]
    if rows.empty:
        return pd.DataFrame(columns=[*by, "mean", "sd", "n", "se", "seeds"])
    return _over_seeds(rows, by)


def per_scope(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``summarise`` per problem, estimator and scope, for the named parts of the gradient (every
    scope except 'all')."""
    rows = final_values(metrics)
    rows = rows[(rows["metric"] == metric) & (rows["scope"] != "all")]
    if rows.empty:
        return pd.DataFrame(columns=[*PAIR, "scope", "mean", "sd", "n", "se", "seeds"])
    return _over_seeds(rows, [*PAIR, "scope"])


def per_epoch(metrics: pd.DataFrame, metric: str, scope: str = "all") -> pd.DataFrame:
    """A learning curve over seeds: per problem, estimator and position (epoch, else step)."""
    rows = curves(metrics, [metric])
    rows = rows[rows["scope"] == scope]
    if rows.empty:
        return pd.DataFrame(columns=[*PAIR, "axis", "position", "mean", "sd", "n", "se", "seeds"])
    return _over_seeds(rows, [*PAIR, "axis", "position"])


DERIVED_PREFIX = "derived:"


def derived_rows(metrics: pd.DataFrame, budget: int | None = None) -> pd.DataFrame:
    """Long-form rows of the per-run numbers bench.summary derives from the end-of-run metrics
    (scope 'all'): ``derived:mse`` (variance + bias² of one estimate, the reference's own noise
    removed), ``derived:mse_evals`` (MSE × loss evaluations per estimate: the ranking of unbiased
    estimators at an equal budget of loss evaluations), ``derived:mse_time`` (MSE × µs per
    estimate), ``derived:bias_sq``, ``derived:mse_budget`` (MSE at ``budget`` loss evaluations,
    default bench.summary.DEFAULT_BUDGET: the ranking of biased ones)."""
    from bench.summary import DEFAULT_BUDGET, DERIVED, derived_metrics

    rows = final_values(metrics)
    rows = rows[rows["scope"] == "all"]
    if rows.empty:
        return rows
    value = rows.pivot(index="run_id", columns="metric", values="value")
    stderr = rows.pivot(index="run_id", columns="metric", values="stderr")
    samples = rows.groupby("run_id")["samples"].first() if "samples" in rows else pd.Series(dtype=float)
    value, stderr = derived_metrics(value, stderr, samples, DEFAULT_BUDGET if budget is None else budget)
    template = rows.drop_duplicates("run_id").set_index("run_id")
    parts = []
    for key in DERIVED:
        part = template.assign(metric=DERIVED_PREFIX + key, value=value[key], stderr=stderr[key])
        parts.append(part[part["value"].notna()].reset_index())
    return pd.concat(parts, ignore_index=True)[list(rows.columns)]


def pivot(summary: pd.DataFrame, values: str | Sequence[str] = ("mean", "se")) -> pd.DataFrame:
    """Estimators as rows, problems as columns, from a :func:`summarise` frame."""
    return summary.set_index(list(PAIR))[list([values] if isinstance(values, str) else values)].unstack("problem_label")


def metric_table(metrics: pd.DataFrame, metric: str, scope: str = "all") -> pd.DataFrame:
    """Estimators as rows, problems as columns: mean over seeds of ``metric``'s end-of-run value,
    with its stderr combined over seeds as sqrt(sum se^2) / n_seeds. Works on the raw store frame
    (``estimator``/``problem`` names) as well as on analysis frames."""
    rows = metrics
    if "epoch" in rows or "step" in rows:
        rows = final_values(rows.assign(**{c: rows[c] if c in rows else pd.NA for c in ("epoch", "step")}))
    rows = rows[(rows["metric"] == metric) & (rows["scope"] == scope)]
    if rows.empty:
        raise KeyError(f"no stored values of metric {metric!r} (scope {scope!r})")
    grouped = rows.groupby(["estimator", "problem"])
    value = grouped["value"].mean()
    stderr = grouped["stderr"].apply(combined_stderr)
    return pd.DataFrame({"value": value, "stderr": stderr}).unstack("problem")
