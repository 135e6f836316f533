"""Seeds enough to rank: the discrete-VAE estimators on the field's own protocols, several seeds
each, ranked with the significance of every adjacent step (:mod:`experiments.ranking`).

:class:`BernoulliVaeSeeds` (``python -m bench reproduce bernoulli-vae-seeds --jobs 2``): the five
unbiased estimators the DisARM paper compares (RLOO with K = 2, ARM, DisARM, and REBAR / RELAX with
DisARM's control variates) plus ReinMax and straight-through, training the linear Bernoulli VAE
under ``protocol='disarm'`` for 100,000 steps, seeds 0, 1, 2; ranked by the final one-sample ELBO
on the training set (DisARM's ``eval_metric/train``), higher is better.

:class:`CategoricalVaeSeeds` (``python -m bench reproduce categorical-vae-seeds --jobs 2``): ReinMax,
ST, ST-Gumbel, Gumbel-Rao, GST and RLOO on the categorical VAE at ReinMax's 8 x 4 and 10 x 30
(categories x latents) under ``protocol='reinmax'``, with each estimator's learning rate,
temperature and optimiser from ReinMax's Table 8 (:data:`TABLE8`), seeds 0, 1, 2, for
:data:`CATEGORICAL_STEPS` steps (what two cores train in about two hours: README); ranked by the
mean training loss (-ELBO) of the last epoch, ReinMax's reported number, lower is better.

Each table sits beside the published numbers for the same protocol with their grade
(:data:`PUBLISHED_GRADES`): 'same protocol' (a target), 'other protocol' (context, not a target),
'aggregator' (never a target) or 'not found'.
"""
from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.frames import Results
from analysis.report import Section, Table, fmt, mean_sd
from bench import harness
from bench.errors import UserError
from bench.store import Store
from bench.summary import unbiased_trait
from experiments import register_experiment
from experiments.base import Experiment, Planned, plan_run, planned_results
from experiments.bernoulli_vae import RELAX_PAPER, _final, schedule
from experiments.ranking import TEST_NAME, rank, ranking_frame

PUBLISHED_GRADES = ("same protocol", "other protocol", "aggregator", "not found")

# -- the Bernoulli VAE study -------------------------------------------------------------------------
# Label -> estimator spec. REBAR and RELAX as the DisARM code starts them: temperature 0.1, scale 1,
# RELAX's network Dense(137, LeakyReLU(0.3)) -> Dense(1) scaled by eta (estimators/rebar.py).
BERNOULLI_ESTIMATORS = {
    "RLOO (K=2)": "reinforce-loo(K=2)",
    "ARM": "arm",
    "DisARM": "disarm",
    "REBAR": "rebar(temperature=0.1)",
    "RELAX": "relax(form='disarm',hidden=137,temperature=0.1)",
    "ReinMax": "reinmax",
    "ST": "straight-through",
}
BERNOULLI_STEPS = 100_000
BERNOULLI_PROBLEM = {"architecture": "linear", "protocol": "disarm"}
QUICK_STEPS = 20
# --quick: a smoke test on small subsets with a tiny test bound and checkpoint probe.
BERNOULLI_QUICK = {"train_subset": 500, "eval_subset": 100, "test_samples": 5, "probe_batch": 4, "probe_samples": 16,
                   "probe_reference_samples": 64}
DISARM_TABLE = ("Dong, Mnih & Tucker (2020), DisARM: An Antithetic Gradient Estimator for Binary Latent Variables, "
                "NeurIPS, arXiv:2006.10680, Table 1 (dynamically binarised MNIST, linear, 1,000,000 steps, 5 runs)")
BERNOULLI_PUBLISHED = {  # label -> (value or None, grade, source)
    label: (None, "not found", DISARM_TABLE + ": its numbers were in no source available to us")
    for label in BERNOULLI_ESTIMATORS}
BERNOULLI_PUBLISHED.update({
    "REBAR": (RELAX_PAPER.values[("rebar", "linear")], "other protocol",
              RELAX_PAPER.citation + " (statically binarised MNIST, highest training ELBO over a long run)"),
    "RELAX": (RELAX_PAPER.values[("relax", "linear")], "other protocol",
              RELAX_PAPER.citation + " (statically binarised MNIST, highest training ELBO over a long run)"),
})

# -- the categorical VAE study -----------------------------------------------------------------------
REINMAX_TABLE8 = ("Liu, Dong, Liu, Yu & Gao (2023), Bridging Discrete and Backpropagation: Straight-Through and "
                  "Beyond, NeurIPS, arXiv:2304.08612, Table 8, as copied in danielwang0452/ReinMax_ASC "
                  "hyperparameters.py; ReinMax's own rows also in LiyuanLucasLiu/ReinMax mnist_vae/reinmax_8_4.sh "
                  "and reinmax_10_30.sh")
SIZES = {"8x4": (8, 4), "10x30": (10, 30)}  # ReinMax's "categories x latents"
# Per size, label -> (estimator spec with Table 8's temperature, lr, optimiser). Gumbel-Rao with their
# default 100 conditional draws (rao_gumbel's repeats); GST with gap 1.0 ('gst-1.0'). RLOO is not in
# Table 8: K = 2 with the ReinMax row's lr and optimiser (our choice).
TABLE8 = {
    "8x4": {"ReinMax": ("reinmax(tau=1.3)", 5e-4, "adam"),
            "ST": ("straight-through(tau=1.3)", 1e-3, "adam"),
            "ST-Gumbel": ("st-gumbel(tau=0.5)", 3e-4, "adam"),
            "Gumbel-Rao": ("gumbel-rao(tau=0.5,K=100)", 5e-4, "adam"),
            "GST": ("gapped-st(tau=1.0,gap=1.0)", 5e-4, "adam"),
            "RLOO (K=2)": ("reinforce-loo(K=2)", 5e-4, "adam")},
    "10x30": {"ReinMax": ("reinmax(tau=1.3)", 5e-4, "radam"),
              "ST": ("straight-through(tau=1.4)", 7e-3, "radam"),
              "ST-Gumbel": ("st-gumbel(tau=0.5)", 5e-4, "radam"),
              "Gumbel-Rao": ("gumbel-rao(tau=1.0,K=100)", 5e-4, "radam"),
              "GST": ("gapped-st(tau=0.5,gap=1.0)", 5e-4, "radam"),
              "RLOO (K=2)": ("reinforce-loo(K=2)", 5e-4, "radam")},
}
EPOCH_STEPS = 600          # 60,000 images / batch 100: one epoch, the logging interval
CATEGORICAL_STEPS = 7_200  # 12 epochs: what fits in about 2 hours on 2 cores with --jobs 2 (README)
CATEGORICAL_TEST_SAMPLES = 10  # the test bound beside their one-sample test loss (100 samples cost ~1 min per check)
CATEGORICAL_QUICK = {"train_subset": 500, "eval_subset": 100, "test_samples": 5, "probe_batch": 2,
                     "probe_samples": 16, "probe_reference_samples": 64}
QUICK_EPOCH_STEPS = 5      # 500 images / batch 100
REINMAX_RESULTS = ("Liu, Dong, Liu, Yu & Gao (2023), Bridging Discrete and Backpropagation: Straight-Through and "
                   "Beyond, NeurIPS, arXiv:2304.08612, the MNIST VAE table (training -ELBO after 160 epochs, mean of "
                   "10 seeds, per categories x latents)")
REINMAX_PUBLISHED = {label: (None, "not found", REINMAX_RESULTS + ": its numbers were in no source available to us")
                     for label in TABLE8["8x4"]}


SHORT_GRADES = {"same protocol": "same", "other protocol": "other", "aggregator": "aggregator"}


def _published_text(entry: tuple[float | None, str, str]) -> str:
    value, grade, _ = entry
    return grade if value is None else f"{fmt(value)} ({SHORT_GRADES.get(grade, grade)})"


def _published_notes(published: dict[str, tuple[float | None, str, str]]) -> list[str]:
    sources = dict.fromkeys(source for _, _, source in published.values())
    return ["Published, with its grade (same = the same protocol, a target; other = another protocol, context "
            "and never a target; aggregator = never a target; not found): " + "; ".join(sources) + ".",
            f"p to next: {TEST_NAME} of this row against the next; holds: whether that ordering is established "
            "(Bonferroni over the adjacent pairs)."]


def _final_by_label(results: Results, planned: Sequence[Planned], metric: str) -> tuple[dict, dict, list[str]]:
    """label -> final ``metric`` per finished run, label -> run ids, and a note per unfinished run."""
    runs = results.runs
    key_label = {p.config.key: p.label for p in planned}
    runs = runs.assign(label=runs["config_key"].map(key_label)).dropna(subset=["label"])
    final = _final(results.metrics, metric)
    values, ids, notes = {}, {}, []
    for label in dict.fromkeys(p.label for p in planned):
        mine = runs[runs["label"] == label]
        done = mine[mine["status"] == "finished"]["run_id"]
        ids[label] = list(done)
        values[label] = final.reindex(done).dropna().to_numpy()
        for _, run in mine[mine["status"] != "finished"].iterrows():
            notes.append(f"{label} seed {run['seed']} {run['status']}: {(run['error'] or 'no reason stored').rstrip('.')}.")
        stored_seeds = {int(seed) for seed in mine["seed"]}
        absent = [p.config.seed for p in planned if p.label == label and p.config.seed not in stored_seeds]
        if absent and stored_seeds:  # a label with no run at all gets "no finished run" from the table
            notes.append(f"{label}: seed{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))} not run.")
    return values, ids, notes


def _per_label(results: Results, ids: dict[str, list], metric: str, sign: float = 1.0) -> dict[str, np.ndarray]:
    final = _final(results.metrics, metric)
    return {label: sign * final.reindex(run_ids).dropna().to_numpy() for label, run_ids in ids.items()}


def _speed(results: Results, ids: dict[str, list]) -> dict[str, str]:
    rows = results.metrics[(results.metrics["metric"] == "seconds_per_step") & (results.metrics["scope"] == "all")]
    speed = rows.groupby("run_id")["value"].mean()
    return {label: fmt(speed.reindex(run_ids).dropna().mean(), 3) for label, run_ids in ids.items()}


@register_experiment("bernoulli-vae-seeds")
class BernoulliVaeSeeds(Experiment):
    """Seeds enough to rank: seven estimators train the linear Bernoulli VAE under DisARM's protocol"""

    source = DISARM_TABLE + ": not found in any source available to us; " + RELAX_PAPER.citation + " (other protocol)"
    published = {label: entry[0] for label, entry in BERNOULLI_PUBLISHED.items() if entry[0] is not None}
    seeds = (0, 1, 2)
    quick_seeds = (0,)
    quick_help = (f"smoke test: {QUICK_STEPS} steps on 500 training examples, ELBOs on 100 examples, a 5-sample "
                  "test bound (add --seeds 0,1 for a ranking with p-values)")

    def runs(self, quick: bool, seeds: Sequence[int], device: str, steps: int | None = None,
             **settings: Any) -> list[Planned]:
        """Every estimator x seed on ``bernoulli-vae(protocol='disarm', architecture='linear')``."""
        if settings:
            raise UserError(f"bernoulli-vae-seeds takes no settings {', '.join(settings)}")
        steps = steps if steps is not None else (QUICK_STEPS if quick else BERNOULLI_STEPS)
        params = {**BERNOULLI_PROBLEM, **schedule(steps)}
        if quick:
            params.update(BERNOULLI_QUICK, eval_every=steps)
        return [plan_run(label, spec, "bernoulli-vae", seed, device, problem_params=params)
                for label, spec in BERNOULLI_ESTIMATORS.items() for seed in seeds]

    def table(self, store: Store, planned: Sequence[Planned], quick: bool, width: int) -> str:
        results = planned_results(store, planned)
        first = planned[0].config
        seeds = sorted({p.config.seed for p in planned})
        heading = (f"Bernoulli VAE seeds study: {first.problem_spec}, seeds {','.join(map(str, seeds))}, device "
                   f"{harness.device_description(first.device)}"
                   + (" (--quick smoke test: subsets of the data, not comparable with the papers)" if quick else ""))
        return "\n\n".join([textwrap.fill(heading, width, break_on_hyphens=False),
                             *(table.to_text(width) for table in self.tables(results, planned))])

    def tables(self, results: Results, planned: Sequence[Planned] | None = None) -> list[Table]:
        """One ranking table per step count: of ``planned``, or of the stored study (every label of
        the study at the stored seeds and settings, run or not, as ``reproduce`` planned it)."""
        groups = ([(int(planned[0].config.problem_params.get("steps", 0)), list(planned))] if planned else
                  _completed(_stored_plans(results, "bernoulli-vae", BERNOULLI_PROBLEM, BERNOULLI_ESTIMATORS),
                             "bernoulli-vae", BERNOULLI_ESTIMATORS))
        tables = []
        for steps, part in groups:
            frame, notes, summary = bernoulli_table(results, part)
            tables.append(Table(f"Bernoulli VAE seeds study: linear, protocol disarm, {steps:,} steps",
                                " ".join([summary, *bernoulli_caption(part[0].config.problem_params.get(
                                    "test_samples")), *notes]), frame))
        return tables

    def sections(self, results: Results) -> list[Section]:
        tables = self.tables(results)
        return [Section("bernoulli-vae-seeds", "Bernoulli VAE: seeds enough to rank", tables=tables)] if tables else []


def bernoulli_table(results: Results, planned: Sequence[Planned]) -> tuple[pd.DataFrame, list[str], str]:
    """The ranking of the stored runs of ``planned`` by the final train_set_elbo, with the test
    bound, both variances, the speed and the published number per label."""
    values, ids, notes = _final_by_label(results, planned, "train_set_elbo")
    ranking = rank(values, higher_is_better=True)
    test = _per_label(results, ids, "test_bound")
    speed = _speed(results, ids)
    extra = {label: {"test bound": mean_sd(test[label]), "s / step": speed[label]} for label in ids}
    tail = {label: {"published": _published_text(BERNOULLI_PUBLISHED.get(label, (None, "not found", "")))}
            for label in ids}
    frame = ranking_frame(ranking, _planned_counts(planned), "train ELBO", extra, tail)
    missing = [label for label in ids if label not in ranking.order]
    notes += [f"{label}: no finished run." for label in missing if not any(n.startswith(label) for n in notes)]
    variance = _per_label(results, ids, "disarm_variance")
    shown = [f"{label} {fmt(variance[label].mean(), 3)}" for label in ranking.order if variance[label].size]
    if shown:
        notes.append("disarm_variance at the last log (mean over seeds): " + ", ".join(shown) + ".")
    specs = {p.label: (p.config.estimator, p.config.estimator_params) for p in planned}  # one build per label
    unbiased = {label for label, (name, params) in specs.items() if unbiased_trait({}, name, params)}
    checks = checkpoint_unbiasedness(results, {label: ids[label] for label in ids if label in unbiased})
    if checks:
        notes.append("Unbiasedness at the checkpoints (unbiased estimators; the probe's test against its "
                     "sampled reference): smallest p(unbiased) over checkpoints and seeds, and the encoder-logit "
                     "coordinates left out as unmeasurable (event probability below what the probe's draws "
                     "resolve; per checkpoint, fewest to most): " + "; ".join(checks) + ".")
    return frame, notes, ranking.summary()


def checkpoint_unbiasedness(results: Results, ids: dict[str, list]) -> list[str]:
    """Per label: the smallest unbiased_pvalue (scope all) over every checkpoint of its runs, their
    number, and the range of unmeasurable_coordinates those tests left out."""
    metrics = results.metrics[results.metrics["scope"] == "all"]
    params = results.runs.set_index("run_id")["problem_params_dict"]
    out = []
    for label, run_ids in ids.items():
        mine = metrics[metrics["run_id"].isin(run_ids)]
        sizes = {int(p.get("probe_batch", 0)) * int(p.get("latents", 0)) for p in params.reindex(run_ids).dropna()}
        pvalues = mine.loc[mine["metric"] == "unbiased_pvalue", "value"].astype(float)
        if pvalues.empty:
            continue
        left_out = mine.loc[mine["metric"] == "unmeasurable_coordinates", "value"].astype(float)
        of = f" of {sizes.pop():,}" if len(sizes) == 1 and 0 not in sizes else ""
        out_text = (f", {int(left_out.min())}–{int(left_out.max())}{of} left out" if len(left_out) and left_out.max()
                    else ", none left out")
        out.append(f"{label} {fmt(pvalues.min(), 2)} over {len(pvalues)} tests{out_text}")
    return out


def _planned_counts(planned: Sequence[Planned]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.label] = counts.get(p.label, 0) + 1
    return counts


def bernoulli_caption(test_samples: Any = 100) -> list[str]:
    return ["Ours: mean ± sd over seeds at the last step: train ELBO = one-sample ELBO over the training set "
            f"(train_set_elbo, DisARM's eval_metric/train), test bound = {test_samples}-sample importance-weighted "
            "bound on the "
            "test set (test_bound), nats per example; s / step = wall seconds per training step; disarm_variance "
            "(in the notes) = DisARM's gradient variance (mean over encoder parameters of the EMA variance of the "
            "batch-mean gradient) at the last log.",
            *_published_notes(BERNOULLI_PUBLISHED)]


@register_experiment("categorical-vae-seeds")
class CategoricalVaeSeeds(Experiment):
    """Seeds enough to rank: six estimators train ReinMax's categorical VAE (8x4, 10x30) under its protocol"""

    source = REINMAX_TABLE8 + " (settings); its MNIST VAE numbers: not found in any source available to us"
    published = {}
    seeds = (0, 1, 2)
    quick_seeds = (0,)
    quick_help = (f"smoke test: {QUICK_STEPS} steps on 500 training images, ELBOs on 100, a 5-sample test bound "
                  "(add --seeds 0,1 for a ranking with p-values)")

    def runs(self, quick: bool, seeds: Sequence[int], device: str, steps: int | None = None,
             sizes: Sequence[str] = tuple(SIZES), **settings: Any) -> list[Planned]:
        """Every size x estimator x seed on ``categorical-vae(protocol='reinmax')`` with Table 8's settings."""
        if settings:
            raise UserError(f"categorical-vae-seeds takes no settings {', '.join(settings)}")
        unknown = [s for s in sizes if s not in SIZES]
        if unknown:
            raise UserError(f"sizes: unknown {', '.join(unknown)}; valid: {', '.join(SIZES)}")
        steps = steps if steps is not None else (QUICK_STEPS if quick else CATEGORICAL_STEPS)
        epoch = QUICK_EPOCH_STEPS if quick else EPOCH_STEPS
        planned = []
        for size in sizes:
            categories, latents = SIZES[size]
            for label, (spec, lr, optimizer) in TABLE8[size].items():
                params = {"protocol": "reinmax", "categories": categories, "latents": latents, "steps": steps,
                          "log_every": epoch, "eval_every": steps, "lr": lr, "optimizer": optimizer,
                          "test_samples": CATEGORICAL_TEST_SAMPLES}
                if quick:
                    params.update(CATEGORICAL_QUICK)
                planned += [plan_run(f"{size} {label}", spec, "categorical-vae", seed, device, problem_params=params)
                            for seed in seeds]
        return planned

    def table(self, store: Store, planned: Sequence[Planned], quick: bool, width: int) -> str:
        results = planned_results(store, planned)
        first = planned[0].config
        seeds = sorted({p.config.seed for p in planned})
        heading = (f"Categorical VAE seeds study: {first.problem} protocol reinmax, "
                   f"{first.problem_params['steps']:,} steps per run, seeds {','.join(map(str, seeds))}, device "
                   f"{harness.device_description(first.device)}"
                   + (" (--quick smoke test: subsets of the data, not comparable with the papers)" if quick else ""))
        return "\n\n".join([textwrap.fill(heading, width, break_on_hyphens=False),
                             *(table.to_text(width) for table in self.tables(results, planned))])

    def tables(self, results: Results, planned: Sequence[Planned] | None = None) -> list[Table]:
        """One ranking table per size and step count: of ``planned``, or of the stored study (every
        label of the size at the stored seeds and settings, run or not)."""
        groups = []
        for size, (categories, latents) in SIZES.items():
            specs = {f"{size} {label}": spec for label, (spec, _, _) in TABLE8[size].items()}
            if planned:
                part = [p for p in planned if p.label.split(" ", 1)[0] == size]
                if part:
                    groups.append((size, int(part[0].config.problem_params.get("steps", 0)), part))
                continue
            stored = _stored_plans(results, "categorical-vae",
                                   {"protocol": "reinmax", "categories": categories, "latents": latents}, specs)
            own = {f"{size} {label}": {"lr": lr, "optimizer": optimizer} for label, (_, lr, optimizer) in TABLE8[size].items()}
            groups += [(size, steps, part) for steps, part in _completed(stored, "categorical-vae", specs, own)]
        tables = []
        for size, steps, part in groups:
            frame, notes, summary = categorical_table(results, part)
            tables.append(Table(f"Categorical VAE seeds study: {size}, protocol reinmax, {steps:,} steps",
                                " ".join([summary, *categorical_caption(), *notes]), frame))
        return tables

    def sections(self, results: Results) -> list[Section]:
        tables = self.tables(results)
        return [Section("categorical-vae-seeds", "Categorical VAE: seeds enough to rank", tables=tables)] if tables \
            else []


def categorical_table(results: Results, planned: Sequence[Planned]) -> tuple[pd.DataFrame, list[str], str]:
    """The ranking of the stored runs of ``planned`` by the last logged training loss (-train_elbo:
    the last epoch's mean with log_every = one epoch), with the test loss, speed and published grade."""
    values, ids, notes = _final_by_label(results, planned, "train_elbo")
    values = {label: -v for label, v in values.items()}
    ranking = rank(values, higher_is_better=False)
    test = _per_label(results, ids, "test_elbo", sign=-1.0)
    speed = _speed(results, ids)
    short = {p.label: p.label.split(" ", 1)[1] for p in planned}
    extra = {label: {"test loss": mean_sd(test[label]), "s / step": speed[label]} for label in ids}
    tail = {label: {"published": _published_text(REINMAX_PUBLISHED.get(short[label], (None, "not found", "")))}
            for label in ids}
    frame = ranking_frame(ranking, _planned_counts(planned), "train loss", extra, tail)
    missing = [label for label in ids if label not in ranking.order]
    notes += [f"{label}: no finished run." for label in missing if not any(n.startswith(label) for n in notes)]
    return frame, notes, ranking.summary()


def categorical_caption() -> list[str]:
    return ["Ours: mean ± sd over seeds: train loss = mean -ELBO (BCE at the estimator's one-hot sample plus the "
            "exact KL) over the last epoch's mini-batches (-train_elbo with log_every = one epoch: ReinMax's "
            "'Average loss' of the last epoch), test loss = one-sample -ELBO over the 10,000 test images at the end "
            "(-test_elbo, their test loss), nats per example; s / step = wall seconds per training step. Settings "
            f"per estimator: {REINMAX_TABLE8}; RLOO (K=2) is not in Table 8 (the ReinMax row's lr and optimiser). "
            f"Far fewer steps than their 96,000 unless the heading says otherwise: not comparable with their table.",
            *_published_notes(REINMAX_PUBLISHED)]


def _stored_plans(results: Results, problem: str, fixed: dict[str, Any],
                  specs: dict[str, str]) -> list[tuple[int, list[Planned]]]:
    """The stored runs of ``problem`` whose parameters include ``fixed`` and whose configuration is
    one of ``specs`` (label -> estimator spec) at that run's problem parameters and seed, as
    Planned runs grouped by their step count: the report's view of a study, from the store alone."""
    runs = results.runs[results.runs["problem"].astype(str) == problem]
    groups: dict[int, list[Planned]] = {}
    for _, run in runs.iterrows():
        params = run["problem_params_dict"]
        if any(params.get(k) != v for k, v in fixed.items()):
            continue
        device = (run.get("config") or {}).get("device", "cpu") if isinstance(run.get("config"), dict) else "cpu"
        for label, spec in specs.items():
            try:
                planned = plan_run(label, spec, problem, int(run["seed"]), device, problem_params=params)
            except Exception:  # parameters this code no longer accepts: not a run of the study
                break
            if planned.config.key == run["config_key"]:
                groups.setdefault(int(params.get("steps", 0)), []).append(planned)
                break
    return sorted(groups.items())


def _completed(groups: list[tuple[int, list[Planned]]], problem: str, specs: dict[str, str],
               per_label: dict[str, dict[str, Any]] | None = None) -> list[tuple[int, list[Planned]]]:
    """Each stored group with the study's every label at the group's seeds and settings (a label's
    own settings, ``per_label``, laid over them), as ``reproduce`` plans it: the report's table
    lists the labels that have no run, as the terminal's does."""
    completed = []
    for steps, part in groups:
        first = part[0].config
        stored = {(p.label, p.config.seed): p for p in part}
        seeds = sorted({p.config.seed for p in part})
        completed.append((steps, [stored.get((label, seed)) or plan_run(
            label, spec, problem, seed, first.device,
            problem_params={**first.problem_params, **(per_label or {}).get(label, {})})
            for label, spec in specs.items() for seed in seeds]))
    return completed


__all__ = ["BERNOULLI_ESTIMATORS", "BERNOULLI_PUBLISHED", "BernoulliVaeSeeds", "CATEGORICAL_STEPS",
           "CategoricalVaeSeeds", "PUBLISHED_GRADES", "REINMAX_PUBLISHED", "SIZES", "TABLE8", "bernoulli_table",
           "categorical_table"]
