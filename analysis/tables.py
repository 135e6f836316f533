"""Read the results store into pandas: long form, and one metric pivoted wide."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.store import Store


def load_metrics(db: str | Path) -> pd.DataFrame:
    """Every stored metric in long form (one row per run, scope and metric)."""
    with Store(db, create=False) as store:
        return store.metrics()


def metric_table(metrics: pd.DataFrame, metric: str, scope: str = "all") -> pd.DataFrame:
    """Estimators as rows, problems as columns: mean over seeds of ``metric``, with its stderr
    combined over seeds as sqrt(sum se^2) / n_seeds."""
    rows = metrics[(metrics["metric"] == metric) & (metrics["scope"] == scope)]
    if rows.empty:
        raise KeyError(f"no stored values of metric {metric!r} (scope {scope!r})")
    grouped = rows.groupby(["estimator", "problem"])
    value = grouped["value"].mean()
    stderr = grouped["stderr"].apply(lambda se: (se.pow(2).sum() ** 0.5) / len(se) if se.notna().all() else float("nan"))
    return pd.DataFrame({"value": value, "stderr": stderr}).unstack("problem")
