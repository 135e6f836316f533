"""Streaming moments of gradient estimates and the metrics computed from them.

Samples are split into ``groups`` contiguous groups; each group keeps float64 counts, means and
centred second moments (merged with Chan et al.'s parallel update, so 10^7 samples stream in
chunks). Standard errors of every derived number come from the delete-one-group jackknife over
the groups (not in scipy.stats); tail probabilities come from scipy.stats.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

import numpy as np
import scipy.stats
import torch

from problems.base import Record

DEFAULT_GROUPS = 32


# One stored number: the same record a training problem yields (name, value, stderr, scope, epoch,
# step), so the harness stores both kinds without converting between two identical classes.
Metric = Record


def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    n = n_a + n_b
    if n == 0:
        return n, mean_a, m2_a
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta**2 * (n_a * n_b / n)
    return n, mean, m2


class GradientMoments:
    """Accumulates per-group moments of estimates g (n, dim) against a reference gradient.

    Two facts about the arithmetic that made the estimates, set by whoever samples them (the
    harness) before :meth:`metrics`, shape the tests of unbiasedness and of exact moments:
    ``rounding_scale``, a magnitude the estimator's float rounding is relative to besides the
    estimates' own values (its ``loss_rounding`` times the mean |L| of the loss values it used;
    0 for an estimator that uses dL/dh only), and ``measurable``, a boolean mask of the coordinates
    whose events the sampler resolves (None: all); the others are left out of both tests and
    counted in ``unmeasurable_coordinates``."""

    SCALARS = ("sq_error", "cosine", "sign_agreement", "sparsity")

    def __init__(self, truth: torch.Tensor, total: int, groups: int = DEFAULT_GROUPS,
                 truth_stderr: torch.Tensor | None = None, measurable: np.ndarray | None = None):
        if total < 1:
            raise ValueError("total must be at least 1")
        self.truth = truth.to(torch.float64).cpu()
        self.truth_stderr = None if truth_stderr is None else truth_stderr.to(torch.float64).cpu()
        self.rounding_scale = 0.0
        self.measurable = None if measurable is None else np.asarray(measurable, dtype=bool).reshape(-1)
        if self.measurable is not None and self.measurable.size != self.truth.numel():
            raise ValueError(f"measurable has {self.measurable.size} coordinates, the gradient {self.truth.numel()}")
        self.total = total
        self.groups = max(1, min(groups, total))
        self.edges = [(g * total) // self.groups for g in range(self.groups + 1)]
        dim = self.truth.numel()
        self.count = np.zeros(self.groups)
        self.mean = np.zeros((self.groups, dim))
        self.m2 = np.zeros((self.groups, dim))
        self.sums = {name: np.zeros(self.groups) for name in self.SCALARS}
        self.position = 0
        self._truth_dev: torch.Tensor | None = None

    def add(self, estimates: torch.Tensor, sparsity: torch.Tensor | None = None) -> None:
        """Add the next ``len(estimates)`` samples, in sample order."""
        g = estimates.detach().to(torch.float64)
        if self._truth_dev is None or self._truth_dev.device != g.device:
            self._truth_dev = self.truth.to(g.device)
        truth = self._truth_dev
        truth_norm = torch.linalg.vector_norm(truth)
        g_norm = torch.linalg.vector_norm(g, dim=1)
        cosine = (g @ truth) / (g_norm * truth_norm)
        cosine = torch.where(g_norm > 0, cosine, torch.zeros_like(cosine))
        per_sample = {
            "sq_error": ((g - truth) ** 2).sum(1),
            "cosine": cosine,
            "sign_agreement": (torch.sign(g) == torch.sign(truth)).to(torch.float64).mean(1),
            "sparsity": (sparsity.to(torch.float64) if sparsity is not None
                         else torch.full_like(g_norm, float("nan"))),
        }
        start = self.position
        stop = start + g.shape[0]
        if stop > self.total:
            raise ValueError("more samples added than declared")
        group = int(np.searchsorted(self.edges, start, side="right") - 1)
        while start < stop:
            end = min(stop, self.edges[group + 1])
            lo, hi = start - self.position, end - self.position
            piece = g[lo:hi]
            n_b = hi - lo
            mean_b = piece.mean(0)
            m2_b = ((piece - mean_b) ** 2).sum(0)
            self.count[group], self.mean[group], self.m2[group] = _merge(
                self.count[group], self.mean[group], self.m2[group], n_b,
                mean_b.cpu().numpy(), m2_b.cpu().numpy())
            for name, values in per_sample.items():
                self.sums[name][group] += float(values[lo:hi].sum())
            start = end
            group += 1
        self.position = stop

    # -- statistics --------------------------------------------------------------------------
    def pooled(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(n, mean, per-coordinate variance) over every sample added."""
        n, mean, m2, _ = self._pooled(np.ones(self.groups, dtype=bool))
        return n, mean, m2 / (n - 1) if n > 1 else np.full_like(m2, np.nan)

    def _pooled(self, keep: np.ndarray):
        n, mean, m2 = 0.0, np.zeros_like(self.mean[0]), np.zeros_like(self.m2[0])
        for k in np.flatnonzero(keep):
            n, mean, m2 = _merge(n, mean, m2, self.count[k], self.mean[k], self.m2[k])
        sums = {name: values[keep].sum() for name, values in self.sums.items()}
        return n, mean, m2, sums

    def _statistics(self, n, mean, m2, sums) -> dict[str, float]:
        truth = self.truth.numpy()
        truth_norm = float(np.linalg.norm(truth))
        variance = float(m2.sum() / (n - 1)) if n > 1 else float("nan")
        bias_norm = float(np.linalg.norm(mean - truth))
        mean_norm = float(np.linalg.norm(mean))
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = mean_norm / math.sqrt(variance) if variance > 0 else (math.inf if mean_norm > 0 else math.nan)
        return {
            "bias_norm": bias_norm,
            "relative_bias": bias_norm / truth_norm if truth_norm > 0 else math.nan,
            "variance": variance,
            "mse": sums["sq_error"] / n,
            "snr": snr,
            "cosine": sums["cosine"] / n if truth_norm > 0 else math.nan,
            "sign_agreement": sums["sign_agreement"] / n,
            "sparsity": sums["sparsity"] / n,
            **self._debiased(n, mean, m2, bias_norm),
        }

    def _debiased(self, n, mean, m2, bias_norm: float) -> dict[str, float]:
        """Against an estimated reference (independent noise with standard errors s_i), an unbiased
        estimate of the squared bias: ||mean - truth||^2 - sum_i s_i^2 - sum_i Var(g_i) / n. It
        can be negative when the bias is below the noise of the two means."""
        if self.truth_stderr is None or n < 2:
            return {}
        noise = float((self.truth_stderr.numpy() ** 2).sum()) + float(m2.sum() / (n - 1) / n)
        return {"debiased_bias_sq": bias_norm**2 - noise}

    def metrics(self, dtype_eps: float = float(torch.finfo(torch.float32).eps)) -> list[Metric]:
        """All metrics with jackknife standard errors, plus the unbiasedness test."""
        if self.position != self.total:
            raise ValueError(f"only {self.position} of {self.total} samples were added")
        everything = np.ones(self.groups, dtype=bool)
        n, mean, m2, sums = self._pooled(everything)
        point = self._statistics(n, mean, m2, sums)
        stderr = dict.fromkeys(point, math.nan)
        if self.groups > 1:
            replicates = []
            for k in range(self.groups):
                keep = everything.copy()
                keep[k] = False
                replicates.append(self._statistics(*self._pooled(keep)))
            for name in point:
                values = np.array([r[name] for r in replicates])
                if np.all(np.isfinite(values)):
                    stderr[name] = float(math.sqrt((self.groups - 1) / self.groups
                                                   * ((values - values.mean()) ** 2).sum()))
        out = [Metric(name, point[name], stderr[name]) for name in point]
        out.extend(self.unbiasedness_test(n, mean, m2, dtype_eps))
        if self.measurable is not None:
            out.append(Metric("unmeasurable_coordinates", float((~self.measurable).sum())))
        return out

    def kept(self) -> np.ndarray:
        """The coordinates the tests use: the measurable ones."""
        return np.ones(self.truth.numel(), dtype=bool) if self.measurable is None else self.measurable

    def unbiasedness_test(self, n, mean, m2, dtype_eps: float) -> list[Metric]:
        """Per-coordinate t statistics of mean - truth; p-value of the largest |t|, Bonferroni-
        corrected over the measurable coordinates (valid whatever the correlation between them).
        None of either when no coordinate is measurable.

        A floor of 8 eps (|truth| + rms + rounding_scale) on the standard error keeps an estimator
        that equals the truth up to its float rounding from being flagged: rounding relative to
        the values themselves, and for one that differences loss values, to those (eps |L|).
        """
        keep = self.kept()
        if not keep.any():
            return []
        truth = self.truth.numpy()[keep]
        mean, m2 = mean[keep], m2[keep]
        var = m2 / (n - 1) if n > 1 else np.full_like(m2, np.nan)
        rms = np.sqrt(mean**2 + np.nan_to_num(var))
        se2 = np.nan_to_num(var / n) + (8 * dtype_eps * (np.abs(truth) + rms + self.rounding_scale)) ** 2
        if self.truth_stderr is not None:
            se2 = se2 + self.truth_stderr.numpy()[keep] ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se2 > 0, (mean - truth) / np.sqrt(se2), np.where(mean == truth, 0.0, np.inf))
        z_max = float(np.max(np.abs(z)))
        df = max(n - 1, 1)
        pvalue = float(min(1.0, truth.size * 2 * scipy.stats.t.sf(z_max, df)))
        return [Metric("bias_z_max", z_max), Metric("unbiased_pvalue", pvalue)]


@dataclasses.dataclass(frozen=True)
class ExactMoments:
    """An estimator's exact mean and per-coordinate variance (float64, from enumeration)."""

    mean: torch.Tensor
    variance: torch.Tensor

    @classmethod
    def enumerate(cls, blocks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> "ExactMoments":
        """``blocks()`` yields (estimates (S, dim), probabilities (S,)) over all outcomes; it is
        called twice (mean first, then the variance about it, which stays exact where a one-pass
        E[g^2] - E[g]^2 would cancel)."""
        total, mean = 0.0, None
        for estimates, probability in blocks():
            g, w = estimates.detach().to(torch.float64), probability.detach().to(torch.float64)
            part = (w.unsqueeze(1) * g).sum(0)
            mean = part if mean is None else mean + part
            total += float(w.sum())
        if mean is None or not math.isclose(total, 1.0, rel_tol=1e-9):
            raise ValueError(f"enumerated probabilities sum to {total}, not 1")
        variance = torch.zeros_like(mean)
        for estimates, probability in blocks():
            g, w = estimates.detach().to(torch.float64), probability.detach().to(torch.float64)
            variance += (w.unsqueeze(1) * (g - mean) ** 2).sum(0)
        return cls(mean.cpu(), variance.cpu())

    def metrics(self, truth: torch.Tensor, scopes: dict[str, slice] | None = None) -> list[Metric]:
        """Exact bias norm, variance (trace) and cosine of the mean estimate to the truth per scope (the
        cosine is left out where either vector is zero)."""
        scopes = {"all": slice(None)} if scopes is None else scopes
        truth = truth.detach().to("cpu", torch.float64)
        metrics = []
        for name, part in scopes.items():
            metrics.append(Metric("exact_bias_norm", float(torch.linalg.vector_norm(self.mean[part] - truth[part])),
                                  scope=name))
            metrics.append(Metric("exact_variance", float(self.variance[part].sum()), scope=name))
            norms = float(torch.linalg.vector_norm(self.mean[part]) * torch.linalg.vector_norm(truth[part]))
            if norms > 0:
                metrics.append(Metric("exact_cosine", float(self.mean[part] @ truth[part]) / norms, scope=name))
        return metrics


def exact_moments(blocks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], truth: torch.Tensor,
                  scopes: dict[str, slice] | None = None) -> list[Metric]:
    """Exact bias norm and variance (per scope) from every outcome of an estimator's randomness
    (see :meth:`ExactMoments.enumerate`)."""
    return ExactMoments.enumerate(blocks).metrics(truth, scopes)


EXACT_CHECK_ALPHA = 1e-3


@dataclasses.dataclass(frozen=True)
class ExactCheck:
    """Exact moments tested against the Monte Carlo ones of the same run."""

    pvalue: float
    worst: str  # the comparison with the largest |z|, in words

    @property
    def agrees(self) -> bool:
        return self.pvalue >= EXACT_CHECK_ALPHA

    def note(self) -> str:
        verdict = "agrees" if self.agrees else "disagrees"
        return (f"{verdict}: {self.worst}; p = {self.pvalue:.3g} (Bonferroni over the mean's coordinates "
                f"and the variance; flagged below {EXACT_CHECK_ALPHA:g})")


def check_exact(sampled: GradientMoments, exact: ExactMoments, variance: Metric,
                dtype_eps: float = float(torch.finfo(torch.float32).eps)) -> ExactCheck:
    """Do the exact moments describe the estimator that was sampled? z of the Monte Carlo mean of
    each measurable coordinate (``sampled.measurable``) against the exact mean (t test, the Monte
    Carlo standard error), and of the Monte Carlo variance against the exact one (normal, its
    jackknife standard error ``variance``); the smallest two-sided p-value is Bonferroni-corrected
    over the tests, so a correct estimator is flagged with probability at most EXACT_CHECK_ALPHA
    (asymptotically). Standard errors get a floor of 8 ``dtype_eps`` relative to the values
    (sampled in float32, enumerated in float64; for the variance, the square of that) and to
    ``sampled.rounding_scale`` (the loss values a loss-differencing estimator rounds at), so
    rounding alone is not flagged; a coordinate's values include the largest coordinate's, since a
    coordinate whose true mean is 0 may come out of a sum over the others (a softmax Jacobian's
    row) as their rounding error."""
    n, mean, var = sampled.pooled()
    exact_mean, exact_var = exact.mean.numpy(), exact.variance.numpy()
    size = np.abs(exact_mean) + np.sqrt(exact_var)
    rounding = 8 * dtype_eps * (size + (size.max() if size.size else 0.0) + sampled.rounding_scale)  # per coordinate
    se = np.sqrt(np.nan_to_num(var / n) + rounding**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_mean = np.where(se > 0, (mean - exact_mean) / se, np.where(mean == exact_mean, 0.0, np.inf))
    z_mean = np.where(sampled.kept(), z_mean, 0.0)  # an event the sampler cannot resolve is not tested
    total = float(exact_var.sum())
    jackknife = 0.0 if variance.stderr is None or math.isnan(variance.stderr) else variance.stderr
    variance_se = math.hypot(jackknife, float((rounding**2).sum()) + 8 * dtype_eps * total)
    if variance_se > 0:
        z_var = (variance.value - total) / variance_se
    else:
        z_var = 0.0 if variance.value == total else math.inf
    p_mean = 2 * scipy.stats.t.sf(np.abs(z_mean), max(n - 1, 1))
    p_var = 2 * scipy.stats.norm.sf(abs(z_var))
    tests = int(sampled.kept().sum()) + 1
    pvalue = float(min(1.0, tests * min(float(p_mean.min()), float(p_var))))
    k = int(np.argmax(np.abs(z_mean)))
    if abs(z_var) >= abs(z_mean[k]):
        worst = (f"exact_variance {total:.4g} vs Monte Carlo {variance.value:.4g} ± {variance_se:.2g} "
                 f"({abs(z_var):.1f} s.e.)")
    else:
        worst = (f"exact mean of coordinate {k} {exact_mean[k]:.4g} vs Monte Carlo {mean[k]:.4g} ± {se[k]:.2g} "
                 f"({abs(z_mean[k]):.1f} s.e.)")
    return ExactCheck(pvalue, worst)


def time_metrics(call_seconds: list[float], rows: int) -> list[Metric]:
    """Seconds per estimate from repeated timed calls of ``rows`` estimates each (after a warm-up
    call), the way timeit and asv report: the median as ``time_per_estimate_s``, and the fastest and
    slowest calls as its spread. No standard error: on a shared machine repeats are not independent
    draws of one distribution, so the spread is stated instead."""
    per_estimate = np.asarray(call_seconds, dtype=float) / rows
    return [Metric("time_per_estimate_s", float(np.median(per_estimate))),
            Metric("time_per_estimate_min_s", float(per_estimate.min())),
            Metric("time_per_estimate_max_s", float(per_estimate.max()))]
