"""Stored results as pandas tables (figures and reports build on these)."""
from analysis.tables import load_metrics, metric_table

__all__ = ["load_metrics", "metric_table"]
