"""The bias/variance report: a self-contained HTML page (figures embedded as PNG) and a Markdown
summary, built from :class:`analysis.frames.Results`. Experiments' sections (the paper's Fig. 2,
the regulariser study) are made by the experiments layer above and handed in by the caller
(``experiment_sections``): analysis never imports experiments.

The page needs no network: no scripts, styles or fonts from elsewhere. A few lines of inline
script record, in ``data-*`` attributes of <body>, any error the page raised, every image's
width, each figure's natural and displayed width, the page's scroll width, the tables wider than
their box and any number in a table cell that wraps across lines, so an automated browser can check
that it loaded, fits and reads (the page works without it).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import math
import re
import textwrap
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis import figures as figs
from analysis.frames import Results, final_values
from analysis.tables import DERIVED_PREFIX, PAIR, combined_stderr, derived_rows, summarise
from bench.errors import UserError
from bench.formatting import REPORT, estimate
from bench.files import write_text_atomically
from bench.summary import DEFAULT_BUDGET, stateful_notes

SUMMARY_COLUMNS = (  # (metric, exact twin or None, column heading)
    ("bias_norm", "exact_bias_norm", "‖bias‖"),
    ("variance", "exact_variance", "variance"),
    ("snr", None, "SNR"),
    ("cosine", None, "cosine"),
    ("loss_evals", None, "loss evals"),
    ("time_per_estimate_s", None, "µs / estimate"),
)
TRAINING_ORDER = ("train_criterion", "train_loss", "valid_error", "test_error", "sparsity_train", "sparsity_test",
                  "trajectory_variance", "epoch_time_s")


@dataclasses.dataclass
class Table:
    """A titled, captioned table of formatted cells (:func:`estimate`), rendered the same way for
    the report (:meth:`to_html`, :meth:`to_markdown`) and the terminal (:meth:`to_text`)."""

    title: str
    caption: str
    frame: pd.DataFrame

    def to_html(self) -> str:
        return _html_table(self)

    def to_markdown(self) -> str:
        return f"### {markdown_text(self.title)}\n\n{markdown_table(self.frame)}\n\n_{markdown_text(self.caption)}_\n"

    def to_text(self, width: int = 100) -> str:
        """Title and caption wrapped to ``width``, then the table (:func:`text_table`)."""
        wrap = lambda text: textwrap.fill(text, width, break_on_hyphens=False)  # noqa: E731
        return "\n".join([wrap(self.title), text_table(self.frame)] + ([wrap(self.caption)] if self.caption else []))


@dataclasses.dataclass
class Section:
    """One part of the report: text, tables, figures and what could not be drawn."""

    key: str
    title: str
    text: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[figs.Figure] = dataclasses.field(default_factory=list)
    missing: list[figs.Missing] = dataclasses.field(default_factory=list)

    def to_markdown(self) -> str:
        return render_markdown([self], self.title).split("\n", 2)[2]

    def to_text(self, width: int = 100) -> str:
        wrap = lambda text: textwrap.fill(text, width, break_on_hyphens=False)  # noqa: E731
        return "\n\n".join([wrap(self.title), *map(wrap, self.text), *(t.to_text(width) for t in self.tables)])


def text_table(frame: pd.DataFrame) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, two spaces apart."""
    cells = [list(map(str, frame.columns))] + [[str(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(frame.columns))]
    return "\n".join("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip()
                     for row in cells)


# -- number formatting: the one formatter of tables and reports --------------------------------
MISSING = REPORT.missing


def fmt(value, digits: int = 4) -> str:
    """A number to ``digits`` significant digits (see :func:`estimate`)."""
    return estimate(value, spec=f".{digits}g")


def fmt_pm(value, error, digits: int = 4) -> str:
    """A mean ± its standard error (or sd): the value to ``digits`` significant digits, the error to two."""
    return estimate(value, error, f".{digits}g", ".2g")


def mean_sd(values, spec: str = ".2f") -> str:
    """Mean ± sample standard deviation (ddof=1) of the finite ``values``, both with ``spec``; no
    '± ...' for one value, '–' for none: the per-seed summaries of the experiments' tables."""
    values = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return MISSING
    return estimate(values.mean(), values.std(ddof=1) if values.size > 1 else None, spec)


# -- tables ----------------------------------------------------------------------------------------
UNBIASED_TITLE, BIASED_TITLE = "unbiased estimators", "biased estimators and deterministic baselines"


def _ranking_caption(budget: int) -> dict[bool, str]:
    """Per group (unbiased?), how its table is ranked."""
    return {True: ("Unbiased estimators (declared trait), ranked by MSE × loss evaluations per estimate: B × the "
                   "mean squared error of the average a budget of B loss evaluations buys, whatever B (lower is "
                   "better), then time."),
            False: (f"Biased estimators and deterministic baselines, ranked by the MSE at {budget:,} loss evaluations "
                    f"(the average of the ⌊{budget:,} / evals⌋ estimates they buy: bias² + variance / ⌊{budget:,} / "
                    "evals⌋; bias² does not average away, so they are ranked apart from unbiased estimators, at "
                    "this stated budget; –: one estimate costs more), then time.")}


def estimator_summary(results: Results, budget: int = DEFAULT_BUDGET) -> list[Table]:
    """Per gradient problem, two tables: the unbiased estimators ranked by MSE × loss evaluations,
    and the biased ones and deterministic baselines ranked by MSE at ``budget`` loss evaluations;
    one row per estimator with the headline metrics (mean over seeds ± s.e.)."""
    metrics = results.gradient
    traits = figs.unbiased_traits(results.runs)
    tables = []
    for problem in figs.ordered(metrics["problem_label"]):
        at = metrics[metrics["problem_label"] == problem]
        columns: dict[str, dict[str, str]] = {}
        counted = summarise(at, "variance")
        seeds = counted.set_index("estimator_label")["n"] if not counted.empty else pd.Series(dtype=int)
        for name, exact, heading in SUMMARY_COLUMNS:
            summary = summarise(at, name)
            scale = 1e6 if name == "time_per_estimate_s" else 1.0
            if not summary.empty:
                columns[f"{heading} (MC)" if exact else heading] = {
                    row.estimator_label: fmt_pm(row.mean * scale, row.se * scale)
                    for row in summary.itertuples()}
            if exact:
                summary = summarise(at, exact)
                if not summary.empty:
                    columns[f"{heading} (exact)"] = {row.estimator_label: fmt(row.mean) for row in summary.itertuples()}
        pvalues = final_values(at)
        pvalues = pvalues[(pvalues["metric"] == "unbiased_pvalue") & (pvalues["scope"] == "all")]
        if not pvalues.empty:
            columns["smallest p(unbiased) over seeds"] = {
                label: fmt(v, 3) for label, v in pvalues.groupby("estimator_label")["value"].min().items()}
        frame = pd.DataFrame(columns)
        frame.insert(0, "runs", [str(int(seeds[label])) if label in seeds else "–" for label in frame.index])
        ranking = ranking_frame(at, traits, budget)
        frame = frame.fillna("–").rename_axis("estimator").reset_index()
        runs = results.runs[results.runs["run_id"].isin(at["run_id"].unique())]
        method = figs.exact_method_text(list(runs["notes"]), list(runs["estimator_label"]))
        for unbiased in (True, False):
            key, heading = ("mse × evals", "MSE × loss evals") if unbiased else ("mse budget", f"MSE at {budget:,} evals")
            group = ranking[ranking["unbiased"] == unbiased]
            part = frame[frame["estimator"].isin(group.index)]
            if part.empty:
                continue
            part = part.set_index("estimator").loc[[label for label in group.index if label in set(part["estimator"])]]
            part.insert(1, heading, [fmt(group.at[label, key]) for label in part.index])
            tables.append(Table(f"{problem}: {UNBIASED_TITLE if unbiased else BIASED_TITLE}",
                                _ranking_caption(budget)[unbiased] + " Mean over seeds ± 1 standard error (jackknife "
                                "over 32 groups, combined over seeds). " + (method + " " if method else "")
                                + "The Monte Carlo ‖bias‖ of an unbiased estimator is its √(variance / n) noise floor: read bias from p(unbiased) or the exact column.",
                                part.reset_index()))
    return tables


def ranking_frame(at: pd.DataFrame, traits: dict[str, str] | None = None,
                   budget: int = DEFAULT_BUDGET) -> pd.DataFrame:
    """Per estimator at one problem (mean over seeds): variance, MSE, the MSE at ``budget`` loss
    evaluations and their products with the cost of one estimate; ``unbiased`` from ``traits``
    (label -> 'unbiased' / 'biased' / 'trait unknown'; unknown counts as biased). Ordered as the
    rankings are: unbiased estimators by MSE × loss evaluations, then biased ones by MSE at the
    budget, each then by time."""
    derived = derived_rows(at, budget)
    both = pd.concat([at, derived], ignore_index=True)
    columns = {"variance": "variance", "mse": DERIVED_PREFIX + "mse", "mse_se": DERIVED_PREFIX + "mse",
               "time": "time_per_estimate_s", "evals": "loss_evals", "mse budget": DERIVED_PREFIX + "mse_budget"}
    frame = pd.DataFrame({key: summarise(both, metric).set_index("estimator_label")["se" if key.endswith("_se")
                                                                                     else "mean"]
                          for key, metric in columns.items()})
    frame["mse × evals"] = frame["mse"] * frame["evals"]
    frame["mse × µs"] = frame["mse"] * frame["time"] * 1e6
    frame["variance × µs"] = frame["variance"] * frame["time"] * 1e6
    frame["variance × loss evals"] = frame["variance"] * frame["evals"]
    frame["unbiased"] = [(traits or {}).get(label) == "unbiased" for label in frame.index]
    frame["rank key"] = frame["mse × evals"].where(frame["unbiased"], frame["mse budget"])
    frame["missing key"] = frame["rank key"].isna()
    frame = frame.sort_values(["unbiased", "missing key", "rank key", "time"], ascending=[False, True, True, True],
                              na_position="last", kind="stable")
    return frame.drop(columns=["rank key", "missing key"])


def table_ranking(results: Results, budget: int = DEFAULT_BUDGET) -> figs.Ranking:
    """The ranking of the report's tables as one function of one problem's metrics, for the figures
    (which list estimators in its order): unbiased estimators first, then the biased ones at
    ``budget``, exactly as :func:`estimator_summary` and :func:`cost_adjusted` order them."""
    traits = figs.unbiased_traits(results.runs)
    traits.update({_escape_dollars(label): trait for label, trait in list(traits.items())})  # figures' labels
    return lambda at: ranking_frame(at, traits, budget)


def cost_adjusted(results: Results, budget: int = DEFAULT_BUDGET) -> list[Table]:
    """Per problem, the unbiased estimators ranked by MSE × loss evaluations per estimate (the MSE
    at an equal budget of loss evaluations), then the biased ones and deterministic baselines by MSE
    at ``budget`` loss evaluations; variance × cost as a secondary view."""
    metrics = results.gradient
    traits = figs.unbiased_traits(results.runs)
    tables = []
    for problem in figs.ordered(metrics["problem_label"]):
        frame = ranking_frame(metrics[metrics["problem_label"] == problem], traits, budget)
        if frame["variance"].isna().all() and frame["mse"].isna().all():
            continue
        on_front = {}
        for column in ("time", "evals"):
            valid = frame[column].notna() & frame["mse"].notna()
            idx = frame.index[valid]
            front = figs.pareto_front(frame.loc[valid, column].tolist(), frame.loc[valid, "mse"].tolist())
            on_front[column] = {idx[i] for i in front}
        out = pd.DataFrame({
            "estimator": frame.index,
            "unbiased": [traits.get(label, "trait unknown") for label in frame.index],
            "variance": [fmt(v) for v in frame["variance"]],
            "MSE": [fmt_pm(v, e, 3) for v, e in zip(frame["mse"], frame["mse_se"])],
            "MSE × loss evals": [fmt(v) for v in frame["mse × evals"]],
            f"MSE at {budget:,} evals": [fmt(v) for v in frame["mse budget"]],
            "MSE × µs": [fmt(v) for v in frame["mse × µs"]],
            "loss evals": [fmt(v) for v in frame["evals"]],
            "µs / estimate": [fmt(v * 1e6) for v in frame["time"]],
            "variance × loss evals": [fmt(v) for v in frame["variance × loss evals"]],
            "variance × µs": [fmt(v) for v in frame["variance × µs"]],
            "Pareto (time / evals)": ["/".join("yes" if label in on_front[c] else "no" for c in ("time", "evals"))
                                      for label in frame.index],
        })
        tables.append(Table(f"Cost-adjusted error: {problem}",
                            "Two groups, unbiased first. " + _ranking_caption(budget)[True] + " "
                            + _ranking_caption(budget)[False] + " Lower is better. MSE = variance + ‖bias‖² of one "
                            "estimate (± 1 s.e.); variance × cost ignores bias and is shown only as a secondary "
                            "view. Pareto: on the MSE-against-cost front.", out))
    return tables


def adaptation_table(results: Results) -> list[Table]:
    """Variance before (step 0) and after the adaptation of estimators with own parameters."""
    metrics = results.gradient
    before = metrics[(metrics["step"] == 0) & metrics["epoch"].isna() & (metrics["metric"] == "variance")
                     & (metrics["scope"] == "all")]
    if before.empty:
        return []
    after = summarise(metrics[metrics["run_id"].isin(before["run_id"])], "variance")
    grouped = before.groupby(list(PAIR))
    start = grouped["value"].mean().rename("before").to_frame()
    start["before_se"] = grouped["stderr"].apply(combined_stderr)
    frame = start.join(after.set_index(list(PAIR))[["mean", "se"]]).reset_index()
    out = pd.DataFrame({"problem": frame["problem_label"], "estimator": frame["estimator_label"],
                        "variance before adaptation": [fmt_pm(v, e) for v, e in zip(frame["before"], frame["before_se"])],
                        "variance after adaptation": [fmt_pm(v, e) for v, e in zip(frame["mean"], frame["se"])],
                        "ratio after / before": [fmt(a / b, 3) if b else "–" for a, b in zip(frame["mean"], frame["before"])]})
    return [Table("Adaptation of estimators with own parameters",
                  "Variance of one estimate at the estimator's initial parameters (step 0) and after the harness's "
                  "Adam adaptation phase; mean over seeds ± 1 standard error.", out)]


def training_table(results: Results) -> list[Table]:
    """End-of-training values (last epoch, or the final record) per training problem and estimator."""
    rows = final_values(results.training)
    rows = rows[rows["scope"] == "all"]
    if rows.empty:
        return []
    tables = []
    names = [m for m in TRAINING_ORDER if m in set(rows["metric"])]
    names += sorted(set(rows["metric"]) - set(names))
    for problem in figs.ordered(rows["problem_label"]):
        at = rows[rows["problem_label"] == problem]
        grouped = at.groupby(["estimator_label", "metric"])["value"]
        stats = pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std(), "n": grouped.count()})
        frame = pd.DataFrame({name: {label: fmt_pm(r["mean"], r["sd"]) for (label, metric), r in stats.iterrows()
                                     if metric == name} for name in names if name in set(at["metric"])})
        seeds = at.groupby("estimator_label")["seed"].nunique()
        frame.insert(0, "seeds", seeds.reindex(frame.index).astype(str))
        frame = frame.fillna("–").rename_axis("estimator").reset_index()
        tables.append(Table(problem, "Final values (last epoch, or the problem's final record): mean ± 1 standard "
                                     "deviation over seeds.", frame))
    return tables


def unfinished_table(results: Results) -> list[Table]:
    runs = results.runs[results.runs["status"] != "finished"]
    if runs.empty:
        return []
    frame = pd.DataFrame({"status": runs["status"], "estimator": runs["estimator_label"],
                          "problem": runs["problem_label"], "seed": runs["seed"].astype(str),
                          "reason": runs["error"].fillna("")})
    return [Table("Runs not finished", "Skipped: the estimator cannot serve the problem; failed: it raised.", frame)]


def exact_absent(results: Results) -> list[str]:
    reasons: dict[tuple[str, str], set[str]] = {}
    withheld = []
    for run in results.finished.itertuples():
        notes = run.notes if isinstance(run.notes, dict) else {}
        reason = notes.get("exact_moments", "")
        if reason.startswith("not computed"):
            reasons.setdefault((reason.removeprefix("not computed: "), run.problem_label), set()).add(run.estimator_label)
        elif "withheld" in reason:
            withheld.append(f"Exact bias and variance withheld for {run.estimator_label} on {run.problem_label} seed "
                            f"{run.seed}: {notes.get('exact_check', 'they disagree with the Monte Carlo moments')}.")
    return [f"Exact bias and variance not computed for {', '.join(sorted(names))} on {problem}: {reason}."
            for (reason, problem), names in sorted(reasons.items())] + sorted(withheld)


def metadata(results: Results, filters: dict[str, str | None]) -> pd.DataFrame:
    """Provenance of the numbers: where, when, with what, from the runs table."""
    runs = results.runs
    items = [("database", results.source or "–"),
             ("report generated", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))]
    for option, value in filters.items():
        if value:
            items.append((f"filter {option}", value))
    items.append(("runs", ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())))
    items.append(("seeds", ", ".join(str(s) for s in sorted(runs["seed"].unique()))))
    samples = sorted(int(s) for s in runs.loc[~runs["training"].astype(bool), "samples"].unique())
    items.append(("estimates per run", ", ".join(f"{s:,}" for s in samples) if samples
                  else "– (training runs only: they log steps and checkpoints, not estimates)"))
    items.append(("run dates (UTC)", f"{runs['started_at'].min()} to {runs['finished_at'].max()}"))
    items.append(("total run time", f"{runs['wall_time_s'].sum():.1f} s"))
    devices = runs["device_description"].fillna(runs["device"]).value_counts()
    items.append(("devices", "; ".join(f"{d} ({n} runs)" for d, n in devices.items())))
    revisions = runs["git_revision"].fillna("not a checkout").value_counts()
    items.append(("git revisions", "; ".join(f"{r} ({n} runs)" for r, n in revisions.items())))
    versions: dict[str, set[str]] = {}
    for stored in runs["versions"]:
        for package, version in (stored or {}).items():
            versions.setdefault(package, set()).add(str(version))
    for package, found in sorted(versions.items()):
        items.append((f"version: {package}", ", ".join(sorted(found))))
    return pd.DataFrame(items, columns=["item", "value"])


# -- assembling ------------------------------------------------------------------------------------
def _escape_dollars(value):
    return value.replace("$", r"\$") if isinstance(value, str) else value


def mathtext_safe(results: Results) -> Results:
    """A copy for drawing figures, in which every '$' of stored names, labels and parameters is
    escaped: matplotlib reads text between two '$' as mathtext and fails on what is not."""
    runs, metrics = results.runs.copy(), results.metrics.copy()
    for frame in (runs, metrics):
        for column in ("estimator", "problem", "estimator_label", "problem_label"):
            if column in frame:
                frame[column] = frame[column].map(_escape_dollars)
    for column in ("estimator_params_dict", "problem_params_dict"):
        if column in runs:
            runs[column] = [{_escape_dollars(k): _escape_dollars(v) for k, v in params.items()}
                            if isinstance(params, dict) else params for params in runs[column]]
    return Results(runs, metrics, results.source)


def plain_sections(sections: Sequence[Section]) -> list[Section]:
    """Sections built from :func:`mathtext_safe` results, with '$' restored in what goes to HTML
    and Markdown (text, tables, figure titles and captions); the figures keep it escaped."""
    for section in sections:
        section.text = [text.replace(r"\$", "$") for text in section.text]
        for table in section.tables:
            table.title, table.caption = table.title.replace(r"\$", "$"), table.caption.replace(r"\$", "$")
            table.frame = table.frame.map(lambda v: v.replace(r"\$", "$") if isinstance(v, str) else v)
            table.frame.columns = [c.replace(r"\$", "$") if isinstance(c, str) else c for c in table.frame.columns]
        for item in [*section.figures, *section.missing]:
            _plain_text(item)
    return list(sections)


def _plain_text(item):
    """Titles, captions and reasons go to HTML and Markdown, not matplotlib: undo the escaping."""
    for field in ("title", "caption", "reason"):
        if isinstance(getattr(item, field, None), str):
            setattr(item, field, getattr(item, field).replace(r"\$", "$"))
    return item


def _stateful_text(results: Results) -> list[str]:
    gradient_runs = results.finished[results.finished["run_id"].isin(results.gradient["run_id"])]
    return stateful_notes(zip(gradient_runs["estimator_label"], gradient_runs["notes"]))


@dataclasses.dataclass(frozen=True)
class BuiltinSection:
    """One built-in section of the report: its figures (keys of ``figures.all_figures``), its
    tables (``tables(results, budget)``) and its text (``text(results)``)."""

    key: str
    title: str
    figures: tuple[str, ...] = ()
    tables: Callable[[Results, int], list[Table]] | None = None
    text: Callable[[Results], list[str]] | None = None


# The report's own sections, in order; the experiments' sections follow, then what the runs lack
# and the provenance (which read the sections before them and the filters).
BUILTIN_SECTIONS = (
    BuiltinSection("summary", "Bias and variance", ("bias-variance",), estimator_summary, _stateful_text),
    BuiltinSection("snr", "Signal-to-noise ratio and cosine", ("snr-cosine",)),
    BuiltinSection("cost", "Variance against cost, and the error at an equal budget",
                   ("mse-frontier", "mse-time", "frontier"), cost_adjusted),
    BuiltinSection("scaling", "How variance scales",
                   ("variance-samples", "variance-estimator-parameters", "variance-dimension", "variance-depth",
                    "variance-width", "variance-scopes"), lambda results, budget: adaptation_table(results)),
    BuiltinSection("training", "Training problems", ("learning-curves", "sparsity-curves"),
                   lambda results, budget: training_table(results)),
)


def build_sections(results: Results, filters: dict[str, str | None] | None = None,
                   experiment_sections: Sequence[Section] = (), budget: int = DEFAULT_BUDGET) -> list[Section]:
    """The report's sections: BUILTIN_SECTIONS, then ``experiment_sections`` (from the experiments
    layer above, e.g. ``experiments.report_sections``), then what the runs lack and the run
    metadata; ``budget``: the loss evaluations at which biased estimators are ranked."""
    filters = filters or {}
    built = {figure.key: _plain_text(figure) for figure in figs.all_figures(mathtext_safe(results),
                                                                            table_ranking(results, budget))}
    sections = []
    for spec in BUILTIN_SECTIONS:
        drawn = [built[k] for k in spec.figures]
        sections.append(Section(spec.key, spec.title, text=spec.text(results) if spec.text else [],
                                tables=spec.tables(results, budget) if spec.tables else [],
                                figures=[f for f in drawn if isinstance(f, figs.Figure)],
                                missing=[f for f in drawn if isinstance(f, figs.Missing)]))
    sections += experiment_sections
    sections.append(Section("absent", "What the reported runs lack",
                            text=[f"{m.title}: not drawn, {m.reason}." for s in sections for m in s.missing]
                            + exact_absent(results), tables=unfinished_table(results)))
    sections.append(Section("metadata", "Run metadata", tables=[Table("Provenance", "From the runs table.",
                                                                      metadata(results, filters))]))
    return sections


NUMBER = re.compile(r"(?<![\w&#.])[−-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:e[−+-]?\d+)?%?")


def _html_cell(value):
    """A table cell for HTML: a value and its error ("1.2e-05 ± 3e-07") may break before the '±' and
    nowhere else (the ± is joined to the error by a no-break space, and :func:`_unbroken_numbers`
    keeps each number whole)."""
    return value.replace(" ± ", " ±\u00a0") if isinstance(value, str) else value


def _unbroken_numbers(body: str) -> str:
    """Each number with a sign or an exponent in the text of an HTML fragment in a <span class='n'>
    that may not wrap: browsers break "2.5e-05" or "-0.3" after the hyphen when a column is narrow
    (digits, points and commas alone never break)."""
    def whole(number: re.Match) -> str:
        text = number.group(0)
        return f"<span class='n'>{text}</span>" if text[0] in "−-" or "e" in text else text

    return re.sub(r">([^<]+)<", lambda m: ">" + NUMBER.sub(whole, m.group(1)) + "<", body)


def _html_table(table: Table) -> str:
    body = _unbroken_numbers(table.frame.map(_html_cell).to_html(index=False, escape=True, na_rep="–", border=0,
                                                                 classes="data"))
    return (f"<div class='table'><h3>{html.escape(table.title)}</h3>{body}"
            f"<p class='caption'>{html.escape(table.caption)}</p></div>")


PAGE_SCRIPT = """(function () {
  var errors = [];
  window.addEventListener('error', function (event) {
    var target = event.target;
    errors.push(target && target.tagName ? 'failed to load ' + target.tagName : String(event.message));
  }, true);
  window.addEventListener('load', function () {
    var widths = Array.prototype.map.call(document.images, function (img) {
      return img.complete ? img.naturalWidth : 0; });
    document.body.setAttribute('data-errors', JSON.stringify(errors));
    document.body.setAttribute('data-image-widths', JSON.stringify(widths));
    document.body.setAttribute('data-page-width', String(document.documentElement.scrollWidth));
    document.body.setAttribute('data-figures', JSON.stringify(Array.prototype.map.call(
      document.querySelectorAll('figure'), function (figure) {
        var img = figure.querySelector('img');
        return {id: figure.id, natural: img ? img.naturalWidth : 0,
                shown: img ? img.getBoundingClientRect().width : 0}; })));
    var split = [];
    Array.prototype.forEach.call(document.querySelectorAll('table.data td'), function (cell) {
      var walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), node;
      while ((node = walker.nextNode())) {
        var number = /[0-9][0-9.,]*(?:e[-+\u2212]?[0-9]+)?/g, match;
        while ((match = number.exec(node.data))) {
          var range = document.createRange();
          range.setStart(node, match.index);
          range.setEnd(node, match.index + match[0].length);
          var tops = {};
          Array.prototype.forEach.call(range.getClientRects(), function (r) { tops[Math.round(r.top)] = 1; });
          if (Object.keys(tops).length > 1) { split.push(match[0]); }
        }
      }
    });
    document.body.setAttribute('data-split-numbers', JSON.stringify(split));
    var wide = Array.prototype.filter.call(document.querySelectorAll('div.table'), function (div) {
      return div.scrollWidth > div.clientWidth + 1; });
    document.body.setAttribute('data-overflowing-tables', JSON.stringify(wide.map(function (div) {
      return div.querySelector('h3') ? div.querySelector('h3').textContent : ''; })));
    document.body.setAttribute('data-loaded', 'true');
  });
})();"""

PAGE_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2125;
       max-width: 1250px; margin: 1.5em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccd; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1em; margin-bottom: .3em; }
table.data { border-collapse: collapse; font-size: .82em; margin: .3em 0; }
table.data th, table.data td { border: 1px solid #d5d8dc; padding: .2em .45em; text-align: right; }
table.data td { white-space: normal; overflow-wrap: normal; }  /* breaks only between words: "1.2e-05" / "± 3e-07" */
table.data span.n { white-space: nowrap; }
table.data th { background: #f1f3f5; white-space: normal; vertical-align: bottom; min-width: 3.5em; }
table.data td:first-child { text-align: left; white-space: normal; min-width: 9em; }
div.table { overflow-x: auto; } figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .caption { font-size: .85em; color: #444; max-width: 70em; }
.missing { color: #7a5200; } nav ul { columns: 2; } code { font-size: .9em; }
"""


def render_html(sections: list[Section], title: str) -> str:
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{html.escape(title)}</title>", f"<script>{PAGE_SCRIPT}</script>",
             f"<style>{PAGE_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<p>Gradient estimators for stochastic and non-smooth units (Bengio, Léonard &amp; Courville 2013): "
             "bias, variance and cost on the same problems and budget. Every Monte Carlo number carries a "
             "standard error; exact values come from enumerating the estimator's discrete randomness, and "
             "integrating its continuous noise by quadrature with a checked tolerance.</p>",
             "<nav><ul>" + "".join(f"<li><a href='#{s.key}'>{html.escape(s.title)}</a></li>" for s in sections)
             + "</ul></nav>"]
    for section in sections:
        parts.append(f"<section id='{section.key}'><h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in section.text]
        for figure in section.figures:
            data = base64.b64encode(figure.png()).decode("ascii")
            parts.append(f"<figure id='fig-{figure.key}'><img alt='{html.escape(figure.title)}' "
                         f"src='data:image/png;base64,{data}'><figcaption><b>{html.escape(figure.title)}.</b> "
                         f"{html.escape(figure.caption)}</figcaption></figure>")
        if section.key != "absent":
            parts += [f"<p class='missing'>Not drawn: {html.escape(m.title)}: {html.escape(m.reason)}.</p>"
                      for m in section.missing]
        parts += [_html_table(table) for table in section.tables]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown_text(value) -> str:
    """Stored names and errors as Markdown text: raw HTML in them (a <script>) is shown, not run."""
    return html.escape(str(value), quote=False)


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        return markdown_text(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
             "| " + " | ".join("---" for _ in frame.columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_markdown(sections: list[Section], title: str) -> str:
    md = markdown_text
    parts = [f"# {md(title)}", ""]
    for section in sections:
        parts += [f"## {md(section.title)}", ""]
        parts += [md(text) + "\n" for text in section.text]
        for figure in section.figures:
            parts += [f"*Figure in index.html: {md(figure.title)}.* {md(figure.caption)}", ""]
        if section.key != "absent":
            parts += [f"*Not drawn: {md(m.title)}: {md(m.reason)}.*\n" for m in section.missing]
        for table in section.tables:
            parts += [table.to_markdown()]
    return "\n".join(parts).rstrip() + "\n"


def write_report(results: Results, out: str | Path, filters: dict[str, str | None] | None = None,
                 title: str = "stochgrad-bench report", experiment_sections: Sequence[Section] = (),
                 budget: int = DEFAULT_BUDGET) -> tuple[Path, Path, list[Section]]:
    """Write ``out/index.html`` and ``out/summary.md`` (``out`` is created; its parent must exist)."""
    out = Path(out)
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report directory {out}: {exc.strerror or exc}") from None
    sections = build_sections(results, filters, experiment_sections, budget)
    page, summary = out / "index.html", out / "summary.md"
    _atomic_write(page, render_html(sections, title))
    _atomic_write(summary, render_markdown(sections, title))
    for figure in (f for s in sections for f in s.figures):
        figure.figure.clear()
    return page, summary, sections


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomically(path, text)  # a temporary file beside it, renamed; removed on failure


def figure_count(sections: Iterable[Section]) -> int:
    return sum(len(s.figures) for s in sections)
