"""Stored results as pandas tables, seaborn figures and the HTML/Markdown report.

``load_results`` reads a store into :class:`Results` (runs and long-form metrics with labels);
``analysis.tables`` summarises over seeds; ``analysis.figures`` and ``analysis.report`` (which
import matplotlib/seaborn) draw and write the report.
"""
from analysis.frames import NoResults, Results, final_values, load_results
from analysis.tables import load_metrics, load_runs, metric_table, per_epoch, per_scope, summarise

__all__ = ["NoResults", "Results", "final_values", "load_metrics", "load_results", "load_runs", "metric_table",
           "per_epoch", "per_scope", "summarise"]
