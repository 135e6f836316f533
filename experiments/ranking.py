"""Ranking estimators by a per-seed final number, with the significance of each adjacent step.

The seeds studies (:mod:`experiments.vae_seeds`) order estimators by the mean over seeds of one
number per run (a training ELBO or loss) and test each adjacent pair of the ranking with Welch's
t-test (``scipy.stats.ttest_ind(equal_var=False)``, two-sided): seeds of different estimators are
independent runs, and Welch assumes neither equal spreads nor a pairing. An ordering is called
established when its adjacent pair's p-value is below alpha / m (Bonferroni over the m adjacent
pairs of the ranking, family-wise error rate alpha); a pair with fewer than two seeds on a side,
or no spread at all, is untestable.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from analysis.report import mean_sd

ALPHA = 0.05
TEST_NAME = "Welch's t-test (scipy.stats.ttest_ind, equal_var=False), two-sided"


@dataclasses.dataclass(frozen=True)
class Step:
    """One adjacent pair of a ranking: ``better`` ranked above ``worse``."""

    better: str
    worse: str
    difference: float          # mean(better) - mean(worse), in the direction of "better"
    pvalue: float | None       # None: untestable
    established: bool


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Labels best first, with their values and the adjacent steps between them."""

    order: list[str]
    values: dict[str, np.ndarray]
    steps: list[Step]
    alpha: float
    higher_is_better: bool

    @property
    def threshold(self) -> float:
        """The per-pair level: alpha / (number of adjacent pairs)."""
        return self.alpha / max(1, len(self.steps))

    def summary(self) -> str:
        """Which orderings are established and which are not, in words."""
        if not self.steps:
            return "Nothing to rank: fewer than two estimators have a finished run."
        sign = ">"
        made = [f"{s.better} {sign} {s.worse}" for s in self.steps if s.established]
        open_ = [f"{s.better} vs {s.worse}" + (f" (p = {s.pvalue:.2g})" if s.pvalue is not None else " (untestable)")
                 for s in self.steps if not s.established]
        better = "higher" if self.higher_is_better else "lower"
        lines = [f"Ranked by the mean over seeds ({better} is better); each adjacent pair tested with {TEST_NAME}, "
                 f"established when p < {self.alpha:g} / {len(self.steps)} = {self.threshold:.3g} (Bonferroni over "
                 f"the adjacent pairs)."]
        lines.append("Established orderings (better > worse): " + ("; ".join(made) if made else "none") + ".")
        lines.append("Not established: " + ("; ".join(open_) if open_ else "none") + ".")
        return " ".join(lines)


def rank(values: Mapping[str, Sequence[float]], higher_is_better: bool = True, alpha: float = ALPHA) -> Ranking:
    """Order ``values`` (label -> one number per seed; labels without a finite value are left out)
    by their mean and test every adjacent pair (module docstring)."""
    clean = {label: np.asarray([v for v in vs if np.isfinite(v)], dtype=float) for label, vs in values.items()}
    clean = {label: v for label, v in clean.items() if v.size}
    order = sorted(clean, key=lambda label: clean[label].mean(), reverse=higher_is_better)
    pairs = list(zip(order, order[1:]))
    threshold = alpha / max(1, len(pairs))
    steps = []
    for better, worse in pairs:
        a, b = clean[better], clean[worse]
        difference = float(a.mean() - b.mean())
        testable = a.size >= 2 and b.size >= 2 and (a.std() > 0 or b.std() > 0)
        pvalue = float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue) if testable else None
        steps.append(Step(better, worse, difference, pvalue, pvalue is not None and pvalue < threshold))
    return Ranking(order, clean, steps, alpha, higher_is_better)


def ranking_frame(ranking: Ranking, planned: Mapping[str, int], value_heading: str = "value",
                  extra: Mapping[str, Mapping[str, str]] | None = None,
                  tail: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """One row per label, best first, then the labels that have no value (in ``planned`` order):
    estimator, seeds (finished / ``planned``), mean ± sd (two decimals), the ``extra`` columns, the
    p-value of the step to the next label and whether that ordering holds (yes, no, untestable),
    then the ``tail`` columns."""
    rows = []
    following = {s.better: s for s in ranking.steps}
    for label in [*ranking.order, *(label for label in planned if label not in ranking.values)]:
        v = ranking.values.get(label, np.zeros(0))
        row = {"estimator": label, "seeds": f"{v.size}/{planned.get(label, v.size)}", value_heading: mean_sd(v)}
        row.update((extra or {}).get(label, {}))
        step = following.get(label)
        row["p to next"] = "–" if step is None or step.pvalue is None else f"{step.pvalue:.2g}"
        row["holds"] = "–" if step is None else "untestable" if step.pvalue is None else \
            "yes" if step.established else "no"
        row.update((tail or {}).get(label, {}))
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["ALPHA", "Ranking", "Step", "TEST_NAME", "rank", "ranking_frame"]
