"""Routers: mixture-of-experts router estimators against the exact router gradient, then in training.

``python -m bench reproduce moe-routers --jobs 2``:

1. Exact bias, variance and cosine (``moe-router``, every routing enumerated) of the nine router
   estimators at three layers (:data:`GRADIENT_LAYERS`): top-1 sampled routing with softmax weights
   (SparseMixer's own setting), top-2 sampled with renormalised weights, and top-2 deterministic
   routing (the conventional router's objective); 20,000 estimates each, the first seed only (the
   exact numbers do not depend on it). The cost column is expert evaluations per estimate.
2. Training (``moe-mnist``): a 4-expert top-1 MoE classifier on the first 20,000 MNIST training
   images, 5 epochs of 200 mini-batches of 100, seeds 0, 1, 2: every router estimator on sampled
   routing, and the four that serve deterministic routing on top-k routing too. Test error (2,000
   test images, deterministic top-k routing at test time for all), expert load imbalance, expert
   evaluations per training example and seconds per step.

Sizing (measured, ``--threads 1``): one epoch of 100 steps on a loaded 2-core machine (load average
about 12, other studies running) took 0.036 s/step (topk-router) to 0.057 s/step (densemixer);
1,000 steps per run at the slower rate is 57 s, plus about 5 s of evaluation and start-up: 39
training runs x 62 s / 2 jobs = 20 minutes, and the 27 gradient runs about 1.5 minutes, so the study
finishes in under 30 minutes with ``--jobs 2`` even on that loaded machine (faster on quiet cores).
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.frames import Results
from analysis.report import Section, Table, fmt
from bench.errors import UserError
from bench.store import Store
from experiments import register_experiment
from experiments.base import Experiment, Planned, plan_run, planned_results, text_table

ESTIMATORS = ("topk-router", "st-router", "densemixer", "default-moe", "sparsemixer", "sparsemixer-v2",
              "reinmax-router", "reinforce-router", "optimal-baseline-router")
DETERMINISTIC_ROUTING = ("topk-router", "st-router", "densemixer", "default-moe")  # serve routing='topk'
GRADIENT_LAYERS = {
    "top-1 sampled, softmax weights": {"experts": 4, "top_k": 1, "d": 3, "inputs": 2},
    "top-2 sampled, renormalised": {"experts": 4, "top_k": 2, "d": 3, "inputs": 2, "weights": "renormalised"},
    "top-2 deterministic, renormalised": {"experts": 4, "top_k": 2, "d": 3, "inputs": 2, "weights": "renormalised",
                                          "routing": "topk"},
}
GRADIENT_SAMPLES = 20_000
TRAINING = {"experts": 4, "top_k": 1, "hidden": 32, "epochs": 5, "train_subset": 20_000, "eval_subset": 2_000}
QUICK_TRAINING = {"epochs": 1, "train_subset": 500, "eval_subset": 200}
QUICK_SAMPLES = 2_000
QUICK_ESTIMATORS = ("topk-router", "densemixer", "sparsemixer", "reinforce-router")


def _label(kind: str, layer: str, estimator: str) -> str:
    return f"{kind}|{layer}|{estimator}"


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
        """The gradient runs (first seed) and the training runs (every seed)."""
        if settings:
            raise UserError(f"moe-routers takes no settings {', '.join(settings)}")
        names = QUICK_ESTIMATORS if quick else ESTIMATORS
        planned = []
        for layer, params in GRADIENT_LAYERS.items():
            for name in names:
                if params.get("routing") == "topk" and name not in DETERMINISTIC_ROUTING:
                    continue
                planned.append(plan_run(_label("gradient", layer, name), name, "moe-router", seeds[0], device,
                                        QUICK_SAMPLES if quick else GRADIENT_SAMPLES, problem_params=params))
        training = {**TRAINING, **(QUICK_TRAINING if quick else {})}
        for routing in ("sampled", "topk"):
            for name in names:
                if routing == "topk" and name not in DETERMINISTIC_ROUTING:
                    continue
                planned += [plan_run(_label("training", f"{routing} routing", name), name, "moe-mnist", seed, device,
                                     problem_params={**training, "routing": routing}) for seed in seeds]
        return planned

    def table(self, store: Store, planned: Sequence[Planned], quick: bool, width: int) -> str:
        results = planned_results(store, planned)
        out = []
        if quick:
            out.append(textwrap.fill("--quick smoke test: few estimates, one epoch on 500 images; not the study.",
                                     width))
        for table in router_tables(results, planned):
            out += ["", textwrap.fill(table.title, width), text_table(table.frame),
                    textwrap.fill(table.caption, width)]
        return "\n".join(out).lstrip("\n")

    def sections(self, results: Results) -> list[Section]:
        planned = stored_plans(results)
        tables = router_tables(results, planned) if planned else []
        return [Section("moe-routers", "Routers", tables=tables)] if tables else []


def stored_plans(results: Results) -> list[Planned]:
    """The stored runs that belong to this study (full or quick), rebuilt as Planned: the report's view."""
    planned = []
    for quick in (False, True):
        seeds = sorted({int(s) for s in results.runs["seed"]}) if len(results.runs) else [0]
        try:
            candidates = MoeRouters().runs(quick, seeds or [0], "cpu")
        except UserError:
            continue
        keys = set(results.runs["config_key"]) if len(results.runs) else set()
        planned += [p for p in candidates if p.config.key in keys]
    return planned


def _final(metrics: pd.DataFrame, metric: str) -> pd.Series:
    """Per run: ``metric`` (scope all) at its last epoch (gradient runs: their one value)."""
    rows = metrics[(metrics["metric"] == metric) & (metrics["scope"] == "all")]
    if not len(rows):
        return pd.Series(dtype=float)
    rows = rows.assign(order=rows["epoch"].fillna(-1).astype(float)).sort_values("order")
    return rows.groupby("run_id")["value"].last().astype(float)


def _mean_sd(values: np.ndarray, digits: int = 3) -> str:
    values = values[np.isfinite(values)]
    if not values.size:
        return "–"
    return fmt(values.mean(), digits) + (f" ± {fmt(values.std(ddof=1), 2)}" if values.size > 1 else "")


def router_tables(results: Results, planned: Sequence[Planned]) -> list[Table]:
    """One table per gradient layer (exact bias, relative bias, variance, cosine, expert evaluations, time)
    and one training table (test error, load imbalance, expert evaluations, time per step)."""
    runs = results.runs
    key_run = {}
    status = {}
    for _, run in runs.iterrows():
        key_run.setdefault(run["config_key"], []).append(run["run_id"])
        status[run["run_id"]] = (run["status"], run.get("error"))
    metrics = results.metrics
    values = {name: _final(metrics, name) for name in
              ("exact_bias_norm", "exact_variance", "exact_cosine", "expert_evals", "time_per_estimate_s",
               "test_error", "load_imbalance", "step_time_s")}
    tables = []
    groups: dict[tuple[str, str], list[Planned]] = {}
    for p in planned:
        kind, layer, _ = p.label.split("|")
        groups.setdefault((kind, layer), []).append(p)
    norms = {}
    for (kind, layer), part in groups.items():
        if kind != "gradient":
            continue
        problem_params = part[0].config.problem_params
        if layer not in norms:
            from problems import build_problem

            norms[layer] = float(build_problem("moe-router", problem_params).reference().gradient.norm())
        rows, notes = [], []
        for p in part:
            ids = key_run.get(p.config.key, [])
            finished = [i for i in ids if status[i][0] == "finished"]
            name = p.label.split("|")[2]
            if not finished:
                why = "; ".join(str(status[i][1]) for i in ids) or "not run"
                notes.append(f"{name}: {why}")
                continue
            run = finished[-1]

            def get(metric):
                return values[metric].get(run, math.nan)

            bias = get("exact_bias_norm")
            rows.append({"estimator": name, "exact ‖bias‖": fmt(bias, 3),
                         "rel. bias": fmt(bias / norms[layer], 3) if norms[layer] > 0 else "–",
                         "exact variance": fmt(get("exact_variance"), 3), "exact cosine": fmt(get("exact_cosine"), 3),
                         "expert evals": fmt(get("expert_evals"), 3), "µs / estimate": fmt(get("time_per_estimate_s")
                                                                                           * 1e6, 3)})
        if rows:
            caption = (f"moe-router({', '.join(f'{k}={v}' for k, v in problem_params.items())}): exact bias norm, "
                       f"relative bias (to ‖g‖ = {fmt(norms[layer], 3)}), total variance and cosine of the mean "
                       "estimate to the exact router gradient, all by enumerating the routings; expert evaluations "
                       "per estimate (every input's), wall time per estimate.")
            if notes:
                caption += " Not shown: " + "; ".join(notes) + "."
            tables.append(Table(f"Routers, exact: {layer}", caption, pd.DataFrame(rows)))
    rows, notes = [], []
    for (kind, layer), part in groups.items():
        if kind != "training":
            continue
        for name in dict.fromkeys(p.label.split("|")[2] for p in part):
            mine = [p for p in part if p.label.split("|")[2] == name]
            ids = [i for p in mine for i in key_run.get(p.config.key, []) if status[i][0] == "finished"]
            for p in mine:
                for i in key_run.get(p.config.key, []):
                    if status[i][0] != "finished":
                        notes.append(f"{name} ({layer}) seed {p.config.seed} {status[i][0]}: {status[i][1]}")
            if not ids:
                continue

            def over(metric):
                return np.array([values[metric].get(i, math.nan) for i in ids], dtype=float)

            rows.append({"estimator": name, "routing": layer.split()[0], "seeds": len(ids),
                         "test error %": _mean_sd(over("test_error")), "load imbalance": _mean_sd(over("load_imbalance")),
                         "expert evals / example": fmt(np.nanmean(over("expert_evals")), 3),
                         "s / step": _mean_sd(over("step_time_s"), 3)})
    if rows:
        first = next(p for p in planned if p.label.startswith("training"))
        params = {k: v for k, v in first.config.problem_params.items() if k != "routing"}
        caption = ("moe-mnist(" + ", ".join(f"{k}={v}" for k, v in params.items() if k in TRAINING) + "): mean ± sd "
                   "over seeds at the last epoch. Test error with deterministic top-k routing for every estimator; "
                   "load imbalance = the largest expert's share of the test set's routed slots times the number of "
                   "experts (1 balanced, 4 one expert takes all); expert evaluations per training example (counted); "
                   "wall seconds per training step (the recorded thread count and machine load apply).")
        if notes:
            caption += " Not finished: " + "; ".join(notes) + "."
        tables.append(Table("Routers, training: MoE classifier on MNIST", caption, pd.DataFrame(rows)))
    return tables


__all__ = ["DETERMINISTIC_ROUTING", "ESTIMATORS", "GRADIENT_LAYERS", "MoeRouters", "TRAINING", "router_tables"]
