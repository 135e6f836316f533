"""The paper's Fig. 2 (right): the seven gaters of the MNIST conditional-computation experiment
(Bengio, Léonard & Courville 2013, sec. 5), each row an ``mnist-gater`` (or
``fashion-mnist-gater``) training run over seeds, beside the published numbers.

``python -m bench paper`` (its shorthand, with ``--dataset`` and ``--epochs``) and ``python -m
bench reproduce paper-fig2`` run it; the report's section "The paper's Fig. 2 beside ours" reads
any stored gater runs, whichever command made them.
"""
from __future__ import annotations

import textwrap
from typing import Any, Sequence

import pandas as pd

from analysis.frames import Results, final_values, params_include, registered_defaults
from analysis.report import Section, Table, estimate, mean_sd
from bench import harness
from bench.specs import format_spec, parse_spec
from bench.store import Store
from experiments import register_experiment
from experiments.base import Experiment, Planned, plan_run, planned_results
from problems.gater import DEFAULT_EPOCHS

SOURCE = ("Bengio, Léonard & Courville (2013), Estimating or Propagating Gradients Through Stochastic Neurons "
          "for Conditional Computation, arXiv:1308.3432, Fig. 2 (right), MNIST")

# (label, estimator spec, problem parameters): the seven rows of Fig. 2 (right), in its order.
PAPER_ROWS: tuple[tuple[str, str, dict], ...] = (
    ("Noisy Rectifier", "noisy-rectifier(std=1.0)", {}),
    ("Straight-through", "straight-through", {}),
    ("Smooth Times Stoch.", "sts(beta_noise=40.1)", {}),
    ("Stoch. Binary Neuron", "reinforce-optimal", {}),
    ("Baseline Rectifier", "rectifier", {}),
    ("Baseline Sigmoid+Noise", "sigmoid-noise(std=1.0)", {"gate_units": 200, "sparsity_target": 0.0}),
    ("Baseline Sigmoid", "sigmoid", {"gate_units": 200, "sparsity_target": 0.0}),
)

# Published Fig. 2 (right): label -> (training criterion, valid error %, test error %).
PAPER_TABLE: dict[str, tuple[float, float, float]] = {
    "Noisy Rectifier": (6.7e-4, 1.52, 1.87),
    "Straight-through": (3.3e-3, 1.42, 1.39),
    "Smooth Times Stoch.": (4.4e-3, 1.86, 1.96),
    "Stoch. Binary Neuron": (9.9e-3, 1.78, 1.89),
    "Baseline Rectifier": (6.3e-5, 1.66, 1.60),
    "Baseline Sigmoid+Noise": (1.8e-3, 1.88, 1.87),
    "Baseline Sigmoid": (3.2e-3, 1.97, 1.92),
}

QUICK = {"epochs": 1, "train_subset": 2000, "eval_subset": 2000}
OFF_BY = 0.5  # points of test error beyond which a row's difference from the paper needs explaining
# The table's columns of ours: (metric, heading, format); the paper's numbers sit under ours in the
# same column (the criterion to its published two digits).
COLUMNS = (("train_criterion", "train criterion", ".2e"), ("valid_error", "valid %", ".2f"),
           ("test_error", "test %", ".2f"), ("sparsity_test", "test sparsity", ".3f"))
PAPER_FORMATS = (".1e", ".2f", ".2f")


@register_experiment("paper-fig2")
class PaperFig2(Experiment):
    """The paper's Fig. 2 (right): seven MNIST gaters beside the published numbers"""

    source = SOURCE
    published = PAPER_TABLE
    quick_help = "smoke test: 1 epoch on the first 2,000 training examples, errors on 2,000 valid/test"

    def runs(self, quick: bool, seeds: Sequence[int], device: str, dataset: str = "mnist",
             epochs: int | None = None, **settings: Any) -> list[Planned]:
        """Every row x seed on ``{dataset}-gater``, seed by seed (the first seed's table completes
        first); ``epochs`` overrides the default (1 with ``quick``)."""
        overrides = dict(QUICK) if quick else {}
        if epochs is not None:
            overrides["epochs"] = epochs
        return [plan_run(label, spec, f"{dataset}-gater", seed, device, problem_params={**params, **overrides})
                for seed in seeds for label, spec, params in PAPER_ROWS]

    def tables(self, results: Results, planned: Sequence[Planned] | None = None) -> list[Table]:
        """The Fig. 2 tables (:func:`report_tables`) of the stored gater runs, the planned ones
        when ``planned`` (``planned_results`` holds only those)."""
        return report_tables(results)[0]

    def sections(self, results: Results) -> list[Section]:
        """The Fig. 2 section, for a store with gater runs only (a record of another study has none)."""
        if gater_runs(results).empty:
            return []
        tables, notes = report_tables(results)
        return [Section("paper", "The paper's Fig. 2 beside ours", text=notes, tables=tables)]

    def table(self, store: Store, planned: Sequence[Planned], quick: bool, width: int) -> str:
        """A heading (setting, seeds, device), the report's table of the planned runs as text and
        the report's verdict on them."""
        first = planned[0].config
        seeds = sorted({p.config.seed for p in planned})
        heading = textwrap.fill(
            f"Fig. 2 (right) re-run on {first.problem}: {first.problem_params['epochs']} epoch(s), seeds "
            f"{','.join(map(str, seeds))}, device {harness.device_description(first.device)}"
            + (" (--quick smoke test)" if quick else ""), width,
            break_on_hyphens=False)
        tables, notes = report_tables(planned_results(store, planned))
        return "\n\n".join([heading, *(table.to_text(width) for table in tables),
                              *(textwrap.fill(line, width, break_on_hyphens=False) for line in notes)])


# -- the verdict -----------------------------------------------------------------------------------
def verdict(test_errors: dict[str, Sequence[float]], table: dict = PAPER_TABLE) -> list[str]:
    """Sentences comparing our final test errors (label -> one value per seed) with the paper's:
    per row ours - paper (flagged beyond ``OFF_BY`` points), then whether the paper's ordering of
    the rows holds: Kendall's tau between the two orderings and every pair of rows we reverse,
    with both gaps and, with several seeds, whether our gap exceeds the seed-to-seed spread."""
    from scipy import stats

    published = published_numbers(table)
    ours = {label: [float(v) for v in values] for label, values in test_errors.items()
            if len(values) and label in published and published[label][2] is not None}
    if not ours:
        return []
    mean = {label: sum(v) / len(v) for label, v in ours.items()}
    sd = {label: float(pd.Series(v).std()) if len(v) > 1 else None for label, v in ours.items()}
    paper = {label: published[label][2] for label in ours}

    def signed(x: float) -> str:
        return f"{x:+.2f}"

    diffs = [f"{label} {signed(mean[label] - paper[label])}" + (" (beyond ±0.5)" if abs(mean[label] - paper[label]) > OFF_BY
                                                                  else "") for label in ours]
    off = [label for label in ours if abs(mean[label] - paper[label]) > OFF_BY]
    lines = ["Test error, ours − paper (points): " + "; ".join(diffs) + "."]
    lines.append(f"{len(off)} of {len(ours)} rows differ from the paper by more than {OFF_BY} points"
                 + (f": {', '.join(off)}." if off else "."))
    labels = list(ours)
    if len(labels) >= 2:
        tau = stats.kendalltau([paper[label] for label in labels], [mean[label] for label in labels])
        by_paper = " < ".join(sorted(labels, key=paper.get))
        by_ours = " < ".join(sorted(labels, key=mean.get))
        pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:] if paper[a] != paper[b]]
        reversed_pairs = []
        for a, b in pairs:
            lo, hi = (a, b) if paper[a] < paper[b] else (b, a)
            if mean[lo] > mean[hi]:
                spread = [sd[lo], sd[hi]]
                beyond = (" beyond the seeds' spread" if all(x is not None for x in spread)
                          and mean[lo] - mean[hi] > max(spread) else "")
                reversed_pairs.append(f"{lo} vs {hi} (paper {paper[lo]:.2f} < {paper[hi]:.2f}, ours "
                                      f"{mean[lo]:.2f} > {mean[hi]:.2f}{beyond})")
        lines.append(f"Ordering by test error, paper: {by_paper}; ours: {by_ours}.")
        lines.append(f"The paper's ordering holds for {len(pairs) - len(reversed_pairs)} of {len(pairs)} pairs of rows "
                     f"(Kendall's tau {tau.statistic:.2f})"
                     + (": reversed " + "; ".join(reversed_pairs) + "." if reversed_pairs else "."))
    return lines


# -- the report section ------------------------------------------------------------------------------
def published_numbers(table) -> dict[str, tuple]:
    """label -> (train criterion, valid %, test %) from a mapping of tuples or of dicts, or rows."""
    out: dict[str, tuple] = {}
    if isinstance(table, dict):
        items = table.items()
    elif table:
        items = ((row[0], tuple(row[1:])) for row in table)
    else:
        items = ()
    for label, values in items:
        if isinstance(values, dict):
            values = tuple(values.get(k) for k in ("train_criterion", "valid_error", "test_error"))
        out[label] = tuple(values)[:3]
    return out


def gater_runs(results: Results) -> pd.DataFrame:
    """The runs of problems named ``*gater`` (mnist-gater, fashion-mnist-gater, a plugin's)."""
    runs = results.runs
    return runs[runs["problem"].astype(str).str.endswith("gater")]


def report_tables(results: Results, rows=PAPER_ROWS, table=PAPER_TABLE) -> tuple[list[Table], list[str]]:
    """The paper's Fig. 2 (right) beside ours, and the verdict sentences: per gater setting, one
    table with two rows per PAPER_ROWS entry, ours (finished / stored seeds, mean ± sd over the
    finished seeds of the last epoch) and below it the estimator spec with the paper's numbers.
    The terminal (``paper``, ``reproduce paper-fig2``) and the report both show these tables.

    Gater runs are those of problems named ``*gater`` (mnist-gater, fashion-mnist-gater); a run
    belongs to a row when its estimator and problem parameters include the row's. One table per
    setting: the problem parameters no row sets (those that differ from the defaults are shown)."""
    gaters = gater_runs(results)
    if gaters.empty:
        return [], ["No gater runs in this store (python -m bench paper runs the seven rows of Fig. 2)."]
    published = published_numbers(table)
    final = final_values(results.training)
    final = final[final["scope"] == "all"]
    row_keys = {key for _, _, problem_params in rows for key in problem_params}
    matched: dict[str, dict[str, list]] = {}
    protocol: dict[str, tuple[str, dict]] = {}
    for label, spec, problem_params in rows:
        name, params = parse_spec(spec) if isinstance(spec, str) else spec
        hits = gaters[[r.estimator == name and params_include(r.estimator_params_dict, params)
                       and params_include(r.problem_params_dict, problem_params)
                       for r in gaters.itertuples()]]
        for run in hits.itertuples():
            defaults = registered_defaults("problem", run.problem) or {}
            shared = {k: v for k, v in run.problem_params_dict.items()  # the setting all rows share
                      if k not in row_keys and (k not in defaults or defaults[k] != v)}
            setting = format_spec(run.problem, shared)
            matched.setdefault(setting, {}).setdefault(label, []).append(run)
            protocol[setting] = (run.problem, shared)
    if not matched:
        return [], ["This store has gater runs, but none with the estimators and settings of the paper's rows."]
    tables, notes = [], []
    for setting, by_label in sorted(matched.items()):
        records, test_errors, unfinished = [], {}, []
        for label, spec, _ in rows:
            paper = published.get(label, (None, None, None))
            found = by_label.get(label, [])
            ids = [run.run_id for run in found if run.status == "finished"]
            unfinished += [f"{label} seed {run.seed} {run.status}: {run.error or 'no reason stored'}"
                           for run in found if run.status != "finished"]
            ours = final[final["run_id"].isin(ids)]
            tests = ours.loc[ours["metric"] == "test_error", "value"].astype(float)
            if len(tests):
                test_errors[label] = list(tests)
            record = {"model / estimator": label, "seeds": f"{len(ids)}/{len(found)}" if found else "0"}
            paper_record = {"model / estimator": "  " + (spec if isinstance(spec, str) else format_spec(*spec)),
                            "seeds": "paper"}
            for i, (metric, heading, spec_format) in enumerate(COLUMNS):
                record[heading] = mean_sd(ours.loc[ours["metric"] == metric, "value"], spec_format)
                paper_record[heading] = (estimate(paper[i], spec=PAPER_FORMATS[i]) if i < len(PAPER_FORMATS)
                                         else "")
            records += [record, paper_record]
        why, differs = comparability(*protocol[setting])
        title = f"Fig. 2 (right) vs {setting}" + (f" (not comparable with the paper: {why})" if why else "")
        caption = ("Ours: final epoch, mean ± 1 standard deviation over the finished seeds (seeds: finished / "
                   "stored runs); below each row, the estimator and the paper's numbers: Bengio, Léonard & "
                   "Courville (2013), Fig. 2 (right), MNIST. Errors in %; train criterion = training NLL (nats per "
                   "example; the paper's may be defined differently, see problems/gater.py); test sparsity = "
                   "fraction of test-time gates exactly zero.")
        if why:
            caption = f"Not comparable with the paper: {why}. " + caption
        if differs:
            caption += f" This setting differs from our reproduction of the paper's protocol in {differs}."
        if unfinished:
            caption += " Not finished: " + "; ".join(unfinished) + "."
        tables.append(Table(title, caption, pd.DataFrame(records)))
        lines = (verdict(test_errors, table) if not why else  # no verdict on numbers that cannot stand beside it
                 [f"No comparison with the paper's test errors: not comparable ({why})."])
        notes += [f"{setting}: {line}" if len(matched) > 1 else line for line in lines]
    return tables, notes


def comparability(problem: str, shared: dict) -> tuple[str, str]:
    """(why a gater setting's numbers cannot stand beside the paper's, '' when they can; the other
    parameters in which it differs from the paper's protocol as reproduced here, '' when none).
    Not comparable: another problem than the paper's MNIST gater, training or evaluation on a subset
    (the --quick smoke test does both), or fewer epochs than the reproduction's DEFAULT_EPOCHS;
    ``shared``: the setting's parameters that differ from the defaults."""
    reasons = []
    if problem != "mnist-gater":
        reasons.append(f"{problem} is not the paper's MNIST gater (mnist-gater)")
    if shared.get("train_subset"):
        reasons.append(f"trained on {shared['train_subset']:,} of the 50,000 training examples")
    if shared.get("eval_subset"):
        reasons.append(f"errors on {shared['eval_subset']:,} of the 10,000 validation and test examples")
    epochs = shared.get("epochs")
    if isinstance(epochs, int) and epochs < DEFAULT_EPOCHS:
        reasons.append(f"{epochs} epoch{'s' if epochs != 1 else ''} of training")
    if all(shared.get(key) == value for key, value in QUICK.items()) and problem.endswith("mnist-gater"):
        reasons.insert(0, "the --quick smoke test")
    said = {"train_subset", "eval_subset"} | ({"epochs"} if isinstance(epochs, int) and epochs < DEFAULT_EPOCHS else set())
    differs = ", ".join(f"{key}={value!r}" for key, value in sorted(shared.items()) if key not in said)
    return "; ".join(reasons), differs


__all__ = ["DEFAULT_EPOCHS", "PAPER_ROWS", "PAPER_TABLE", "PaperFig2", "QUICK", "SOURCE", "comparability",
           "published_numbers", "report_tables", "verdict"]
