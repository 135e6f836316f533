"""Routers: mixture-of-experts router estimators against the exact router gradient, then in training.

``python -m bench reproduce moe-routers --jobs 2``:

1. Exact bias, variance and cosine (``moe-router``, every routing enumerated) of the nine router
   estimators at three layers (:data:`GRADIENT_LAYERS`): top-1 sampled routing with softmax weights
   (SparseMixer's own setting), top-2 sampled with renormalised weights, and top-2 deterministic
   routing (the conventional router's objective): the 19 pairs that apply, 20,000 estimates each,
   the first seed only (the exact numbers do not depend on it). The cost column is expert
   evaluations per estimate.
2. Training (``moe-mnist``): a 4-expert top-1 MoE classifier on all 50,000 MNIST training images,
   10 epochs of 500 mini-batches of 100, seeds 0, 1, 2: every router estimator on sampled routing,
   and the four that serve deterministic routing on top-k routing too. Test error (all 10,000 test
   images, deterministic top-k routing at test time for all), expert load imbalance, expert
   evaluations per training example and seconds per step.

Sizing (measured, ``--threads 1``, 2 cores shared with other work): the first form of this study (5
epochs of 200 steps) took 147 s for all 58 runs at 0.0055-0.0089 s/step, so 5,000 steps per run are
about 45 s with evaluation, 39 runs / 2 jobs about 15 minutes: well under the hour.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np
import pandas as pd

import estimators
import problems
from analysis.frames import Results
from analysis.report import Section, Table, estimate, fmt
from bench.errors import UserError
from bench.store import Store
from experiments import register_experiment
from experiments.base import Experiment, Planned, plan_run

ESTIMATORS = ("topk-router", "st-router", "densemixer", "default-moe", "sparsemixer", "sparsemixer-v2",
              "reinmax-router", "reinforce-router", "optimal-baseline-router")
GRADIENT_LAYERS = {  # tag -> (what it is, moe-router parameters)
    "k1 sampled": ("top-1 sampled routing, softmax weights (SparseMixer's setting)",
                   {"experts": 4, "top_k": 1, "d": 3, "inputs": 2}),
    "k2 sampled": ("top-2 sampled routing, renormalised weights",
                   {"experts": 4, "top_k": 2, "d": 3, "inputs": 2, "weights": "renormalised"}),
    "k2 topk": ("top-2 deterministic routing, renormalised weights (the conventional router's objective)",
                {"experts": 4, "top_k": 2, "d": 3, "inputs": 2, "weights": "renormalised", "routing": "topk"}),
}
GRADIENT_SAMPLES = 20_000
TRAINING = {"experts": 4, "top_k": 1, "hidden": 32, "epochs": 10, "train_subset": 0, "eval_subset": 0}
QUICK_TRAINING = {"epochs": 1, "train_subset": 500, "eval_subset": 200}
QUICK_SAMPLES = 2_000
QUICK_ESTIMATORS = ("topk-router", "densemixer", "sparsemixer", "reinforce-router")


def serves(estimator: str, problem: str, params: dict[str, Any]) -> bool:
    """Whether the pair applies (pairs that do not are not planned; ``bench run`` shows their reasons)."""
    built = problems.build_problem(problem, params)
    try:
        built.check_variables(estimators.build_estimator(estimator))
        built.check_estimator(estimators.build_estimator(estimator))
    except ValueError:
        return False
    return True


@register_experiment("moe-routers")
class MoeRouters(Experiment):
    """Routers: exact bias, variance and cost of mixture-of-experts router estimators, and MoE training"""

    source = ("No published comparison against the exact router gradient: SparseMixer (Liu et al. 2023, "
              "microsoft/SparseMixer), DenseMixer (yaof20/DenseMixer; 1.46x FLOPs) and Default MoE "
              "(arXiv 2504.12463) report downstream language-model scores only")
    published = {}
    seeds = (0, 1, 2)
    quick_seeds = (0,)
    quick_help = ("smoke test: 2,000 estimates per gradient run, four estimators trained one epoch on 500 "
                  "training images")

    def runs(self, quick: bool, seeds: Sequence[int], device: str, **settings: Any) -> list[Planned]:
        """The gradient runs (first seed; labels 'NAME [k1 sampled]', ...) and the training runs (every
        seed; 'NAME [mnist sampled]', 'NAME [mnist topk]'), pairs that apply only."""
        if settings:
            raise UserError(f"moe-routers takes no settings {', '.join(settings)}")
        names = QUICK_ESTIMATORS if quick else ESTIMATORS
        planned = []
        for tag, (_, params) in GRADIENT_LAYERS.items():
            planned += [plan_run(f"{name} [{tag}]", name, "moe-router", seeds[0], device,
                                 QUICK_SAMPLES if quick else GRADIENT_SAMPLES, problem_params=params)
                        for name in names if serves(name, "moe-router", params)]
        training = {**TRAINING, **(QUICK_TRAINING if quick else {})}
        for routing in ("sampled", "topk"):
            params = {**training, "routing": routing}
            planned += [plan_run(f"{name} [mnist {routing}]", name, "moe-mnist", seed, device, problem_params=params)
                        for name in names if serves(name, "moe-mnist", params) for seed in seeds]
        return planned

    def table(self, store: Store, planned: Sequence[Planned], quick: bool, width: int) -> str:
        """:meth:`tables` of the planned runs as text (:meth:`Experiment.table`), after a line
        saying when they are the --quick smoke test."""
        text = super().table(store, planned, quick, width)
        if not quick:
            return text
        return textwrap.fill("--quick smoke test: few estimates, one epoch on 500 images; not the study.",
                             width) + "\n\n" + text

    def tables(self, results: Results, planned: Sequence[Planned] | None = None) -> list[Table]:
        """:func:`router_tables` of ``planned``, or of the study's stored runs (:func:`stored_plans`)."""
        planned = list(planned) if planned else stored_plans(results)
        return router_tables(results, planned) if planned else []

    def sections(self, results: Results) -> list[Section]:
        tables = self.tables(results)
        return [Section("moe-routers", "Routers", tables=tables)] if tables else []


def stored_plans(results: Results) -> list[Planned]:
    """The stored runs that belong to this study (full or quick), rebuilt as Planned: the report's view."""
    if not len(results.runs):
        return []
    keys = set(results.runs["config_key"])
    seeds = sorted({int(s) for s in results.runs["seed"]})
    planned = []
    for quick in (False, True):
        planned += [p for p in MoeRouters().runs(quick, seeds, "cpu") if p.config.key in keys]
    return list({p.config.key: p for p in planned}.values())


def _final(metrics: pd.DataFrame, metric: str) -> pd.Series:
    """Per run: ``metric`` (scope all) at its last epoch (gradient runs: their one value)."""
    rows = metrics[(metrics["metric"] == metric) & (metrics["scope"] == "all")]
    if not len(rows):
        return pd.Series(dtype=float)
    rows = rows.assign(order=rows["epoch"].astype("Float64").fillna(-1).astype(float)).sort_values("order")
    return rows.groupby("run_id")["value"].last().astype(float)


def _mean_sd(values: np.ndarray, digits: int = 3) -> str:
    """Mean ± sd over the finite values: the mean to ``digits`` significant digits, the sd to two."""
    values = values[np.isfinite(values)]
    return estimate(values.mean() if values.size else None, values.std(ddof=1) if values.size > 1 else None,
                    f".{digits}g", ".2g")


def _tag(label: str) -> str:
    return label[label.index("[") + 1:-1]


def router_tables(results: Results, planned: Sequence[Planned]) -> list[Table]:
    """One table per gradient layer (exact bias, relative bias, variance, cosine, expert evaluations,
    time) and one training table (test error, load imbalance, expert evaluations, time per step); the
    first column is the run label, then finished / planned runs."""
    status: dict[str, list[tuple[Any, str, Any]]] = {}
    for _, run in results.runs.iterrows():
        status.setdefault(run["config_key"], []).append((run["run_id"], run["status"], run.get("error")))
    metric_names = ("exact_bias_norm", "exact_variance", "exact_cosine", "expert_evals", "time_per_estimate_s",
                    "test_error", "load_imbalance", "step_time_s", "flops_per_example")
    values = {name: _final(results.metrics, name) for name in metric_names}
    by_label: dict[str, list[Planned]] = {}
    for p in planned:
        by_label.setdefault(p.label, []).append(p)

    def finished(label):
        done, notes = [], []
        for p in by_label[label]:
            for run_id, state, error in status.get(p.config.key, []):
                if state == "finished":
                    done.append(run_id)
                else:
                    notes.append(f"{label} seed {p.config.seed} {state}: {error or 'no reason stored'}")
        return done, notes

    tables = []
    for tag, (what, params) in GRADIENT_LAYERS.items():
        labels = [label for label in by_label if _tag(label) == tag]
        if not labels:
            continue
        norm = float(problems.build_problem("moe-router", by_label[labels[0]][0].config.problem_params).reference().gradient.norm())
        rows, notes = [], []
        for label in labels:
            done, failed = finished(label)
            notes += failed
            run = done[-1] if done else None

            def get(metric):
                return values[metric].get(run, math.nan) if run is not None else math.nan

            bias = get("exact_bias_norm")
            rows.append({"run": label, "runs": f"{len(done)}/{len(by_label[label])}", "‖bias‖": fmt(bias, 3),
                         "rel.bias": fmt(bias / norm, 3) if norm > 0 else "–", "variance": fmt(get("exact_variance"), 3),
                         "cos": fmt(get("exact_cosine"), 3), "evals": fmt(get("expert_evals"), 3),
                         "µs": fmt(get("time_per_estimate_s") * 1e6, 3)})
        caption = (f"[{tag}] {what}: moe-router({', '.join(f'{k}={v}' for k, v in params.items())}). Exact bias norm, "
                   f"relative bias (to the exact router gradient's norm {fmt(norm, 3)}), total variance and cosine of "
                   "the mean estimate to the exact gradient, all by enumerating the routings; evals = expert "
                   "evaluations per estimate (every input's); µs = wall time per estimate.")
        if notes:
            caption += " Not finished: " + "; ".join(notes) + "."
        tables.append(Table(f"Routers, exact: {what}", caption, pd.DataFrame(rows)))
    rows, notes = [], []
    for label in by_label:
        if not _tag(label).startswith("mnist"):
            continue
        done, failed = finished(label)
        notes += failed

        def over(metric):
            return np.array([values[metric].get(i, math.nan) for i in done], dtype=float)

        rows.append({"run": label, "runs": f"{len(done)}/{len(by_label[label])}", "test err %": _mean_sd(over("test_error")),
                     "imbalance": _mean_sd(over("load_imbalance")),
                     "evals": fmt(np.nanmean(over("expert_evals")), 3) if done else "–",
                     "kFLOPs": fmt(np.nanmean(over("flops_per_example")) / 1e3, 3) if done else "–",
                     "s / step": _mean_sd(over("step_time_s"), 3)})
    if rows:
        first = next(p for p in planned if _tag(p.label).startswith("mnist"))
        params = {k: v for k, v in first.config.problem_params.items() if k in TRAINING}
        caption = ("moe-mnist(" + ", ".join(f"{k}={v}" for k, v in params.items()) + "), routing sampled or topk as "
                   "the label says: mean ± sd over seeds at the last epoch. Test error (%) with deterministic top-k "
                   "routing for every estimator; imbalance = the largest expert's share of the test set's routed "
                   "slots times the number of experts (1 balanced, 4 one expert takes all); evals = expert "
                   "evaluations per training example (counted); kFLOPs = thousands of multiply-adds of the training forward pass per example; wall seconds per training step (the thread count "
                   "and the machine's load apply).")
        if notes:
            caption += " Not finished: " + "; ".join(notes) + "."
        tables.append(Table("Routers, training: MoE classifier on MNIST", caption, pd.DataFrame(rows)))
    return tables


__all__ = ["ESTIMATORS", "GRADIENT_LAYERS", "MoeRouters", "TRAINING", "router_tables", "serves"]
