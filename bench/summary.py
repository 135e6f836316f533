"""The table ``python -m bench run`` prints: per problem, the estimators ranked in two groups,
seeds aggregated, sized to fit the terminal.

The ranking numbers are derived per run from stored metrics (:func:`derived_metrics`, shared with
the report): MSE = E‖ĝ − g‖² of one estimate (variance + squared bias); MSE × loss evaluations per
estimate, which for an unbiased estimator is B × the MSE of the average a budget of B loss
evaluations buys, whatever B; and MSE at a budget of B loss evaluations, bias² + variance / m with
m = ⌊B / evaluations⌋ estimates averaged, where bias² does not average away. Unbiased estimators
(the declared trait) are ranked by the first, among themselves; biased ones and deterministic
baselines by the second, in their own block, at a stated budget (``--budget``): equal loss
evaluations equalise only what averages away. Over seeds a value is the mean of the runs' values,
its standard error sqrt(sum se_i^2) / n from the runs' own (jackknife) errors, else the spread
between seeds / sqrt(n). Full detail (every metric, seed, scope, epoch) stays in
``python -m bench export``.
"""
from __future__ import annotations

import difflib
import json
import math
import shutil
import textwrap
from typing import Callable, Sequence

import numpy as np
import pandas as pd

import estimators
from bench.formatting import TERMINAL, estimate, one_digit
from bench.quadrature import QUADRATURE_NOTE, QUADRATURE_TOLERANCE
from bench.runinfo import is_training, stored_defaults, stored_traits
from bench.specs import format_spec

DEFAULT_WIDTH = 100
MAX_LABEL = 32  # estimator labels longer than this are cut with '…' when the table must shrink
DEFAULT_BUDGET = 100  # loss evaluations at which biased estimators are ranked: a mini-batch's worth of one-evaluation estimates

# Derived per-run numbers (not stored): key -> description.
DERIVED = {
    "mse": "mean squared error ‖ĝ − g‖² of one estimate (variance + bias²; the reference's own noise removed)",
    "mse_evals": "MSE × loss evaluations per estimate (equal budget of loss evaluations; lower is better)",
    "mse_time": "MSE × µs per estimate (equal wall time)",
    "bias_sq": "squared bias with the Monte Carlo noise removed, ‖mean − g‖² − variance/n (can be < 0)",
    "mse_budget": ("MSE of the average of the m = ⌊B / evals⌋ estimates a budget of B loss evaluations buys, "
                   "bias² + variance / m (bias² counted from 0; '-' where one estimate costs more than B)"),
}
# Column key -> (heading, value scale, how seeds combine: 'mean' or 'bonferroni').
HEADINGS = {
    "mse_evals": ("MSE×evals", 1.0), "mse": ("MSE", 1.0), "mse_time": ("MSE×µs", 1.0),
    "bias_sq": ("bias²", 1.0), "unbiased_pvalue": ("p(unbiased)", 1.0), "bias_z_max": ("max|z|", 1.0),
    "variance": ("variance", 1.0), "bias_norm": ("‖bias‖ MC", 1.0), "exact_variance": ("exact var", 1.0),
    "exact_bias_norm": ("exact‖bias‖", 1.0), "exact_cosine": ("exact cos", 1.0), "loss_evals": ("evals", 1.0),
    "expert_evals": ("expert evals", 1.0),
    "time_per_estimate_s": ("µs/est", 1e6), "snr": ("SNR", 1.0), "cosine": ("cosine", 1.0),
    "sign_agreement": ("sign agr.", 1.0), "sparsity": ("sparsity", 1.0), "relative_bias": ("rel. bias", 1.0),
    "peak_memory_bytes": ("peak MB", 1e-6), "debiased_bias_sq": ("bias² (stored)", 1.0),
    "train_criterion": ("train crit.", 1.0), "train_error": ("train %", 1.0), "valid_error": ("valid %", 1.0),
    "test_error": ("test %", 1.0), "sparsity_train": ("train sparsity", 1.0),
    "sparsity_test": ("test sparsity", 1.0), "train_loss": ("train loss", 1.0),
    "trajectory_variance": ("traj. var", 1.0), "epoch_time_s": ("s/epoch", 1.0), "mse_budget": ("MSE@B", 1.0),
}
GRADIENT_DEFAULT = ("mse_evals", "mse", "unbiased_pvalue", "loss_evals", "time_per_estimate_s")
BIASED_DEFAULT = ("mse_budget", "bias_sq", "mse", "loss_evals", "unbiased_pvalue", "time_per_estimate_s")
RANK_KEYS = {True: "mse_evals", False: "mse_budget"}  # per group: unbiased, biased
TRAINING_DEFAULT = ("valid_error", "test_error", "train_error", "train_criterion", "train_loss", "sparsity_test",
                    "trajectory_variance", "epoch_time_s")
TRAINING_RANK = ("valid_error", "test_error", "train_criterion", "train_loss")
KNOWN_COLUMNS = tuple(HEADINGS)


def parse_columns(text: str) -> list[str]:
    """``--columns a,b,c``: known column keys, in order; raises ValueError naming close matches."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("give at least one column name")
    for name in names:
        if name not in HEADINGS:
            close = difflib.get_close_matches(name, KNOWN_COLUMNS, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(f"unknown column {name!r}; {hint}valid: {', '.join(KNOWN_COLUMNS)}")
    return list(dict.fromkeys(names))


def terminal_width() -> int:
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


# -- derived numbers, per run ----------------------------------------------------------------------
def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name].astype(float) if name in frame else pd.Series(np.nan, index=frame.index, dtype=float)


def derived_metrics(value: pd.DataFrame, stderr: pd.DataFrame, samples: pd.Series,
                    budget: int = DEFAULT_BUDGET) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the DERIVED columns to wide frames (index: run, columns: metric) of end-of-run values
    and standard errors; ``samples`` is each run's number of estimates, ``budget`` the B of
    ``mse_budget``."""
    value, stderr = value.copy(), stderr.copy()
    v, s = (lambda name: _column(value, name)), (lambda name: _column(stderr, name))
    n = samples.reindex(value.index).astype(float)
    # Squared bias without the noise of the two means: stored for estimated references, else
    # ‖mean − g‖² − Σ Var / n (the reference is exact).
    raw = v("bias_norm") ** 2 - v("variance") / n
    value["bias_sq"] = v("debiased_bias_sq").fillna(raw)
    stderr["bias_sq"] = s("debiased_bias_sq").fillna(2 * v("bias_norm") * s("bias_norm"))
    # MSE: the stored Monte Carlo mean of ‖ĝ − g‖², less the reference's own noise Σ s_i² when the
    # reference is estimated; else variance + debiased bias².
    value["mse"] = (v("mse") - v("reference_stderr_norm").fillna(0.0) ** 2).fillna(v("variance") + value["bias_sq"])
    stderr["mse"] = s("mse").where(v("mse").notna(), np.sqrt(s("variance") ** 2 + stderr["bias_sq"] ** 2))
    for key, cost, scale in (("mse_evals", "loss_evals", 1.0), ("mse_time", "time_per_estimate_s", 1e6)):
        value[key] = value["mse"] * v(cost) * scale
        stderr[key] = stderr["mse"] * v(cost) * scale
    averaged = np.floor(budget / v("loss_evals"))  # estimates the budget buys; NaN without a count
    averaged = averaged.where(averaged >= 1)
    value["mse_budget"] = value["bias_sq"].clip(lower=0) + v("variance") / averaged
    stderr["mse_budget"] = np.sqrt(stderr["bias_sq"].where(value["bias_sq"] > 0, 0.0) ** 2
                                   + (s("variance") / averaged) ** 2)
    return value, stderr


def budget_heading(budget: int) -> str:
    return f"MSE@{budget:,}"


def unbiased_trait(notes: dict, name: str, params: dict) -> bool | None:
    """The ``unbiased`` trait stored with the run (read from the instance: parameters count), else
    that of the estimator built here with the run's parameters; None when neither is known."""
    traits = stored_traits(notes)
    if traits is not None and isinstance(traits.get("unbiased"), bool):
        return traits["unbiased"]
    try:
        return bool(estimators.build_estimator(name, params).unbiased)
    except Exception:  # not registered in this process (a plugin) or no longer valid
        return None


def over_seeds(values: pd.Series, errors: pd.Series, how: str = "mean") -> tuple[float, float]:
    """(value, standard error) of one (estimator, problem) over its seeds."""
    values, errors = values.astype(float), errors.astype(float)
    good = values.notna()
    if not good.any():
        return math.nan, math.nan
    values, errors = values[good], errors[good]
    if how == "bonferroni":  # a p-value: smallest over seeds, corrected for how many were tested
        return float(min(1.0, values.min() * len(values))), math.nan
    if errors.notna().all():
        return float(values.mean()), float(np.sqrt((errors**2).sum()) / len(values))
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def _fmt(value: float, error: float, scale: float = 1.0, digits: int = 3) -> str:
    """The terminal's compact 'value±error' (the one formatter, :func:`bench.formatting.estimate`)."""
    return estimate(None if value is None else value * scale, None if error is None else error * scale,
                    f".{digits}g", one_digit, TERMINAL)


# -- the table ------------------------------------------------------------------------------------
def _final_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, metric) of scope 'all': the end-of-run value (no epoch, no step), else
    the last epoch, then the last step."""
    rows = metrics[metrics["scope"] == "all"].assign(
        _end=lambda f: f["epoch"].isna() & f["step"].isna(),
        _epoch=lambda f: f["epoch"].astype("Float64").fillna(-1.0),
        _step=lambda f: f["step"].astype("Float64").fillna(-1.0))
    rows = rows.sort_values(["_end", "_epoch", "_step"], kind="stable")
    return rows.groupby(["run_id", "metric"], sort=False).tail(1)


def summary_table(store, configs: Sequence, columns: Sequence[str] | None = None, width: int | None = None,
                  label: Callable[[str, dict, str], str] | None = None, budget: int = DEFAULT_BUDGET) -> str:
    """The text printed after ``run``: per gradient problem a block of the unbiased estimators
    ranked by MSE × evals and a block of the biased ones and deterministic baselines ranked by MSE
    at ``budget`` loss evaluations; per training problem one block; seeds aggregated.

    Labels leave out the parameters equal to the defaults stored with the run; for runs stored
    without them, ``label(name, params, kind)`` shortens a spec (default: every parameter)."""
    width = width or terminal_width()
    fallback = label or (lambda name, params, kind: format_spec(name, params))

    def label(name: str, params: dict, kind: str, notes: dict) -> str:
        defaults = stored_defaults(notes, kind)
        if defaults is None:
            return fallback(name, params, kind)
        return format_spec(name, {k: v for k, v in params.items() if k not in defaults or defaults[k] != v})

    runs = store.runs()
    runs = runs[runs["config_key"].isin({c.key for c in configs})]
    if runs.empty:
        return "no runs"
    runs = runs.assign(notes_dict=[_json_object(n) for n in runs["notes"]],
                       config_dict=[_json_object(c) for c in runs["config"]])
    runs["training"] = [is_training(notes, config.get("samples") == 0)  # the guess: runs stored without a kind
                        for notes, config in zip(runs["notes_dict"], runs["config_dict"])]
    for kind in ("estimator", "problem"):
        runs[f"{kind}_label"] = [label(n, json.loads(p), kind, notes) for n, p, notes in
                                 zip(runs[kind], runs[f"{kind}_params"], runs["notes_dict"])]
    runs["unbiased"] = [unbiased_trait(notes, n, json.loads(p)) is True for n, p, notes in
                        zip(runs["estimator"], runs["estimator_params"], runs["notes_dict"])]
    finished = runs[runs["status"] == "finished"]
    metrics = store.metrics(finished["run_id"].tolist()) if len(finished) else None
    final = _final_rows(metrics) if metrics is not None and len(metrics) else pd.DataFrame(
        columns=["run_id", "metric", "value", "stderr"])
    value = final.pivot(index="run_id", columns="metric", values="value")
    stderr = final.pivot(index="run_id", columns="metric", values="stderr")
    value, stderr = derived_metrics(value, stderr, finished.set_index("run_id")["samples"], budget)

    blocks, legend = [], set()
    for training in (False, True):
        part = runs[runs["training"] == training]
        for problem in sorted(part["problem_label"].unique()):
            at = part[part["problem_label"] == problem]
            groups = [None] if training else [group for group in (True, False) if (at["unbiased"] == group).any()]
            for group in groups:
                block, used = _problem_block(at if group is None else at[at["unbiased"] == group], problem, value,
                                             stderr, training, columns, width, group, budget)
                blocks.append(block)
                legend |= used
    text = "\n\n".join(blocks)
    notes = _legend(legend, width, budget) + exact_notes(runs, width) + unmeasurable_notes(runs, width)
    finished = runs[(runs["status"] == "finished") & ~runs["training"]]
    for sentence in stateful_notes(zip(finished["estimator_label"], finished["notes_dict"])):
        notes += ["", *textwrap.wrap(sentence, width)]
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def _block_columns(columns: Sequence[str] | None, training: bool, unbiased: bool | None) -> list[str]:
    """The columns of one block: the chosen ones (``--columns``) or the group's default, the group's
    ranking column first (never the other group's)."""
    if training:
        return list(columns or TRAINING_DEFAULT)
    if columns is None:
        return list(GRADIENT_DEFAULT if unbiased else BIASED_DEFAULT)
    other = RANK_KEYS[not unbiased]
    return [key for key in columns if key != other] or [RANK_KEYS[unbiased]]


def _problem_block(runs: pd.DataFrame, problem: str, value: pd.DataFrame, stderr: pd.DataFrame, training: bool,
                   columns: Sequence[str] | None, width: int, unbiased: bool | None = None,
                   budget: int = DEFAULT_BUDGET) -> tuple[str, set[str]]:
    wanted = _block_columns(columns, training, unbiased)
    rank_key = None if training else RANK_KEYS[unbiased]
    collapsed = _skipped_alike(runs)
    runs = runs[~runs["estimator_label"].isin([label for labels in collapsed.values() for label in labels])]
    rows = []
    for estimator, group in runs.groupby("estimator_label", sort=False):
        done = group[group["status"] == "finished"]
        ids = [i for i in done["run_id"] if i in value.index]
        row = {"estimator": estimator, "seeds": f"{len(done)}" if len(done) == len(group) else f"{len(done)}/{len(group)}"}
        for key in dict.fromkeys([*wanted, *(TRAINING_RANK if training else (rank_key, "time_per_estimate_s"))]):
            if key not in value.columns or not ids:
                row[key] = (math.nan, math.nan)
                continue
            how = "bonferroni" if key == "unbiased_pvalue" else "mean"
            mean, se = over_seeds(value.loc[ids, key], stderr.loc[ids, key], how)
            if training and len(ids) > 1:  # training: the spread between seeds is what matters
                se = float(value.loc[ids, key].astype(float).std(ddof=1))
            row[key] = (mean, se)
        rows.append(row)
    if training:
        rank_key = next((k for k in TRAINING_RANK if any(np.isfinite(r[k][0]) for r in rows)), None)
        title = f"{problem}: training" + (f", ranked by {HEADINGS[rank_key][0]}" if rank_key else "")
    elif unbiased:
        title = f"{problem}: unbiased, ranked by MSE×evals (equal loss evaluations), then time"
    else:
        title = f"{problem}: biased and deterministic, ranked by {budget_heading(budget)} (bias² counts), then time"

    def order(r):
        key = r[rank_key][0] if rank_key else math.nan
        time = r["time_per_estimate_s"][0] if "time_per_estimate_s" in r else math.nan
        return (not np.isfinite(key), key if np.isfinite(key) else 0.0, time if np.isfinite(time) else math.inf)

    rows.sort(key=order)
    shown = [k for k in wanted if any(np.isfinite(r[k][0]) for r in rows)]
    table = {"#": [str(i + 1) if np.isfinite(r[rank_key][0]) else "-" for i, r in enumerate(rows)]} if rank_key else {}
    table["estimator"] = [r["estimator"] for r in rows]
    table["seeds"] = [r["seeds"] for r in rows]
    headings = {key: budget_heading(budget) if key == "mse_budget" else HEADINGS[key][0] for key in shown}
    for key in shown:
        table[headings[key]] = [_fmt(*r[key], scale=HEADINGS[key][1], digits=2 if key == "unbiased_pvalue" else 3)
                                for r in rows]
    lines, dropped = _render(table, width) if rows else ([], [])
    used = {key for key in shown if lines and headings[key] in lines[0]}
    text = textwrap.wrap(title, width) + lines
    if dropped:
        text += textwrap.wrap(f"(not shown, to fit {width} columns: {', '.join(dropped)}; choose with --columns)",
                              width, initial_indent="  ", subsequent_indent="  ")
    unfinished = runs[runs["status"] != "finished"]
    for run in unfinished.itertuples():
        text += textwrap.wrap(f"{run.estimator_label} seed {run.seed} {run.status}: {run.error}", width,
                              initial_indent="  ", subsequent_indent="    ")
    for reason, labels in collapsed.items():
        text += textwrap.wrap(f"skipped, each {reason}: {', '.join(labels)}", width, initial_indent="  ",
                              subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(text), used


def _skipped_alike(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Estimators every run of which was skipped for the same reason as another's (a router estimator
    on a binary problem): reason, the estimator's name left out -> their labels. The summary lists them
    on one line instead of a table row and a line each."""
    alike: dict[str, list[str]] = {}
    for label, group in runs.groupby("estimator_label", sort=False):
        errors = set(group["error"].fillna(""))
        name = f"{group['estimator'].iloc[0]} "
        if (group["status"] == "skipped").all() and len(errors) == 1 and (error := errors.pop()).startswith(name):
            alike.setdefault(error.removeprefix(name).rstrip("."), []).append(label)
    return {reason: labels for reason, labels in alike.items() if len(labels) > 1}


def _render(table: dict[str, list[str]], width: int) -> tuple[list[str], list[str]]:
    """Left-aligned estimator, right-aligned numbers; drops columns from the right (then cuts the
    estimator labels) until the lines fit ``width``. Returns (lines, dropped headings)."""
    table = dict(table)
    dropped: list[str] = []

    def widths():
        return {k: max(len(k), *(len(v) for v in vals)) if vals else len(k) for k, vals in table.items()}

    def total():
        return sum(widths().values()) + 2 * (len(table) - 1)

    keep = 4 if "#" in table else 3  # '#', estimator, seeds and the ranking column always stay
    while total() > width and len(table) > keep:
        last = list(table)[-1]
        dropped.insert(0, last)
        del table[last]
    if total() > width:
        room = max(12, widths()["estimator"] - (total() - width))
        table["estimator"] = [v if len(v) <= room else v[:room - 1] + "…" for v in table["estimator"]]
    w = widths()
    lines = []
    for i in range(-1, len(table["estimator"])):
        cells = []
        for key, values in table.items():
            text = key if i < 0 else values[i]
            cells.append(text.ljust(w[key]) if key == "estimator" else text.rjust(w[key]))
        lines.append("  ".join(cells).rstrip())
    return lines, dropped


def _legend(used: set[str], width: int, budget: int = DEFAULT_BUDGET) -> list[str]:
    explained = {
        "mse_evals": ("MSE × loss evaluations per estimate: for an unbiased estimator, B × the MSE of the average "
                      "a budget of B loss evaluations buys, whatever B (lower is better); it ranks the unbiased "
                      "estimators"),
        "mse_budget": (f"MSE of the average of the m = ⌊{budget:,} / evals⌋ estimates a budget of {budget:,} loss "
                       "evaluations buys (--budget), bias² + variance / m ('-': one estimate costs more); it ranks "
                       "the biased estimators and deterministic baselines, whose bias² does not average away"),
        "mse": DERIVED["mse"], "mse_time": DERIVED["mse_time"],
        "bias_sq": DERIVED["bias_sq"],
        "unbiased_pvalue": "test of E ĝ = g (largest per-coordinate |t|, Bonferroni over coordinates and seeds)",
        "loss_evals": "loss evaluations per estimate", "time_per_estimate_s": "wall time per estimate (µs)",
    }
    headings = {key: budget_heading(budget) if key == "mse_budget" else HEADINGS[key][0] for key in explained}
    text = ("Mean over seeds ± 1 standard error (training: ± 1 sd between seeds). "
            + "; ".join(f"{headings[k]}: {explained[k]}" for k in explained if k in used)
            + ". Every metric, seed and scope: python -m bench export.")
    return textwrap.wrap(text, width)


def stateful_notes(runs) -> list[str]:
    """What the numbers of stateful estimators with running statistics (baselines, firing-rate
    control) describe, one sentence per warm-up: ``runs`` gives (estimator label, stored notes) of
    gradient runs. They are measured with their running statistics frozen after the warm-up, so
    their variance, exact or Monte Carlo, is that of the estimator with the baseline it reached, not
    of an ideal one. A schedule (``schedule`` trait) is held at its declared state instead, which
    the run's notes give."""
    groups: dict[str, set[str]] = {}
    held: dict[str, set[str]] = {}
    for label, notes in runs:
        traits = stored_traits(notes) or {}
        schedule = notes.get("schedule") if isinstance(notes, dict) else None
        if isinstance(schedule, str) and schedule:  # the harness writes it for schedule-carrying estimators only
            held.setdefault(schedule.rstrip("."), set()).add(label)
        elif traits.get("stateful") and not traits.get("schedule"):
            warmup = notes.get("warmup")
            groups.setdefault(f"a warm-up of {warmup}" if warmup else "the warm-up (its size was not recorded)",
                              set()).add(label)
    return [f"{', '.join(sorted(labels))}: stateful, measured with the running statistics frozen after "
            f"{warmup}. Their bias and variance, exact or Monte Carlo, describe the estimator with the baseline it "
            "reached then (itself an estimate from those calls), not with an ideal one such as the exact optimal "
            "baseline of eq. 10."
            for warmup, labels in sorted(groups.items())] + [
        f"{', '.join(sorted(labels))}: a schedule, {schedule}." for schedule, labels in sorted(held.items())]


def unmeasurable_notes(runs: pd.DataFrame, width: int) -> list[str]:
    """Which runs left coordinates out of their tests (events the sampler cannot resolve), and why."""
    lines = []
    for run in runs[runs["status"] == "finished"].itertuples():
        note = run.notes_dict.get("unmeasurable")
        if isinstance(note, str) and note:
            lines += textwrap.wrap(f"{run.estimator_label} on {run.problem_label} seed {run.seed}: {note}", width,
                                   initial_indent="  ", subsequent_indent="    ")
    return ["", "Coordinates left out of the unbiasedness test:", *lines] if lines else []


def exact_notes(runs: pd.DataFrame, width: int) -> list[str]:
    """Why exact moments are missing, per reason, naming each estimator and problem."""
    reasons: dict[str, dict[str, set[str]]] = {}
    withheld: list[str] = []
    for run in runs[runs["status"] == "finished"].itertuples():
        reason = run.notes_dict.get("exact_moments", "")
        if reason.startswith("not computed"):
            by_problem = reasons.setdefault(reason.removeprefix("not computed: "), {})
            by_problem.setdefault(run.problem_label, set()).add(run.estimator_label)
        elif "withheld" in reason:
            withheld.append(f"{run.estimator_label} on {run.problem_label} seed {run.seed}: "
                            f"{run.notes_dict.get('exact_check', 'exact and Monte Carlo moments disagree')}")
    lines = []
    integrated = sorted({f"{run.estimator_label} on {run.problem_label}" for run in runs[runs["status"] == "finished"]
                         .itertuples() if run.notes_dict.get("exact_moments", "").startswith(QUADRATURE_NOTE)})
    if integrated:
        lines += [""] + textwrap.wrap(
            "Exact bias and variance integrated by quadrature over the continuous noise (each coordinate over the "
            "noise it changes with; the discrete draws, and the pieces of noise on which it is constant, enumerated; "
            f"two successive rules agree to {QUADRATURE_TOLERANCE:g} of the estimate's scale; the other exact values "
            f"enumerate every discrete outcome) for: {'; '.join(integrated)}", width)
    if reasons:
        lines += ["", "Exact bias and variance not computed for:"]
        for reason, by_problem in sorted(reasons.items()):
            for problem, names in sorted(by_problem.items()):
                lines += textwrap.wrap(f"{', '.join(sorted(names))} on {problem}: {reason}", width,
                                       initial_indent="  ", subsequent_indent="    ")
    if withheld:
        lines += ["", "Exact bias and variance WITHHELD (they disagree with the Monte Carlo moments):"]
        for text in sorted(withheld):
            lines += textwrap.wrap(text, width, initial_indent="  ", subsequent_indent="    ")
    return lines


def _json_object(text) -> dict:
    """A stored JSON object; {} for one that is not (damaged, crafted, nested too deeply)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
