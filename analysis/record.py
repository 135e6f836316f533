"""Reproduction records: a small folder per finished study, regenerated from a store by one command.

    python -m bench report --db STORE [--estimators ...] [--problems ...] --record results/NAME

A record holds ``runs.csv`` (one row per run the tables use: full specs, seed, status, timings,
machine), ``metrics.csv`` (their stored values, per epoch where there is one), ``summary.md`` (the
report's Markdown summary) and ``README.md`` (the command that made the runs, the machine, the
versions, the dates and the wall time). No database: the CSVs are the numbers, small enough to commit.
"""
from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.frames import Results
from analysis.report import Section, markdown_table, markdown_text, render_markdown
from bench.files import write_text_atomically
from bench.specs import format_spec

RECORD_FILES = ("README.md", "runs.csv", "metrics.csv", "summary.md")
SIGNIFICANT = "%.8g"  # digits kept in the CSVs: far below any standard error the suite reports


def runs_frame(results: Results) -> pd.DataFrame:
    runs = results.runs.sort_values(["problem", "estimator", "seed", "run_id"])
    return pd.DataFrame({
        "run_id": runs["run_id"],
        "estimator": [format_spec(n, p) for n, p in zip(runs["estimator"], runs["estimator_params_dict"])],
        "problem": [format_spec(n, p) for n, p in zip(runs["problem"], runs["problem_params_dict"])],
        "seed": runs["seed"], "status": runs["status"], "error": runs["error"],
        "started_at": runs["started_at"], "finished_at": runs["finished_at"], "wall_time_s": runs["wall_time_s"],
        "device": runs["device_description"], "git_revision": runs["git_revision"]})


def metrics_frame(results: Results) -> pd.DataFrame:
    columns = ["run_id", "scope", "metric", "epoch", "step", "value", "stderr"]  # runs.csv says which run is which
    frame = results.metrics[columns]
    return frame.sort_values(["run_id", "metric", "scope", "epoch", "step"], na_position="first", kind="stable")


def shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell, in double quotes where that reads better than shlex's."""
    quoted = shlex.quote(word)
    if quoted == word or any(c in word for c in '"$`\\!'):
        return quoted
    return f'"{word}"'


def run_command(runs: pd.DataFrame) -> list[str]:
    """``python -m bench run`` lines that recompute these runs: one per problem and seed set, with
    the specs as labelled (parameters that differ from the defaults or between runs)."""
    lines = []
    for problem, part in runs.groupby("problem_label", sort=True):
        by_seeds: dict[str, list[str]] = {}  # seed set -> the estimators run at exactly those seeds
        for estimator, mine in part.groupby("estimator_label", sort=False):
            by_seeds.setdefault(",".join(str(s) for s in sorted(mine["seed"].unique())), []).append(estimator)
        for seeds, estimators in by_seeds.items():
            words = ["python", "-m", "bench", "run", "--estimators", ",".join(estimators), "--problems", problem,
                     "--seeds", seeds]
            samples = sorted(part[part["estimator_label"].isin(estimators)]["samples"].unique())
            if len(samples) == 1 and samples[0]:
                words += ["--samples", str(samples[0])]
            lines.append(" ".join(shell_word(w) for w in words))
    return lines


def portable(path: str) -> str:
    """A path as a record shows it: relative paths as given, absolute ones by their file name only
    (a record names no machine-specific location)."""
    return Path(path).name if path and Path(path).is_absolute() else path


def time_split(metrics: pd.DataFrame) -> str | None:
    """Training runs' wall time split into steps and evaluation, from their per-epoch
    ``epoch_time_s`` and ``eval_time_s`` records; None where no run stored both."""
    times = metrics[metrics["metric"].isin(["epoch_time_s", "eval_time_s"]) & metrics["epoch"].notna()]
    if times.empty or times["metric"].nunique() < 2:
        return None
    steps, evaluation = (float(times.loc[times["metric"] == m, "value"].sum()) for m in ("epoch_time_s", "eval_time_s"))
    return (f"- training steps {duration(steps)}, evaluation {duration(evaluation)} "
            f"({100 * evaluation / (steps + evaluation):.1f} % of the two; per-epoch values in `metrics.csv`);")


def duration(seconds: float) -> str:
    """12 s, 3.5 min, 1.52 h."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _span(runs: pd.DataFrame) -> tuple[str, str, float]:
    started = pd.to_datetime(runs["started_at"], utc=True, format="ISO8601")
    finished = pd.to_datetime(runs["finished_at"], utc=True, format="ISO8601")
    return (started.min().isoformat(timespec="seconds"), finished.max().isoformat(timespec="seconds"),
            (finished.max() - started.min()).total_seconds())


def _inline(value) -> str:
    """A stored field as one line of Markdown text: HTML shown, not run; no line break that could
    start a heading, list or code block of its own."""
    return " ".join(markdown_text(value).split())


def readme(results: Results, title: str, report_command: Sequence[str]) -> str:
    runs = results.runs
    first, last, elapsed = _span(runs)
    versions = pd.DataFrame([v if isinstance(v, dict) else {} for v in runs["versions"]]).drop_duplicates()
    machines = sorted({_inline(m) for m in runs["device_description"].dropna()})
    revisions = sorted({_inline(r) for r in runs["git_revision"].dropna()})
    statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    lines = [f"# Reproduction record: {title}", "",
             f"Regenerated on {dt.date.today().isoformat()} from `{portable(results.source)}` by", "", "```",
             " ".join(shell_word(portable(w)) for w in report_command), "```", "",
             "## The runs", "", f"{len(runs)} runs ({statuses}), computed by:", "", "```",
             *run_command(runs), "```", "",
             *(["Problems on MNIST data find it as the README's Data section says (or add `--data-dir DIR`).", ""]
               if runs["problem"].astype(str).str.contains("mnist").any() else []),
             "## When, where, how long", "",
             f"- first run started {first}, last finished {last}: {duration(elapsed)} elapsed;",
             f"- sum of the runs' wall times {duration(runs['wall_time_s'].sum())} "
             f"(per run {duration(runs['wall_time_s'].min())} to {duration(runs['wall_time_s'].max())});",
             *filter(None, [time_split(results.metrics)]),
             f"- machine: {'; '.join(machines) or 'not stored'};",
             f"- source revision: {', '.join(revisions) or 'not a git checkout'}.", "",
             "## Versions", "", markdown_table(versions) if not versions.empty else "not stored", "",
             "## Files", "",
             "- `runs.csv`: one row per run (full estimator and problem specs, seed, status, timings, machine);",
             "- `metrics.csv`: every stored value of those runs, long form (per epoch where there is one), by `run_id`;",
             "- `summary.md`: the report's Markdown summary (tables and generated conclusions).", ""]
    return "\n".join(lines)


def write_record(results: Results, directory: str | Path, sections: list[Section], title: str,
                 report_command: Sequence[str]) -> list[Path]:
    """Write the record's four files into ``directory`` (created; its parent must exist), each
    through a temporary file and a rename."""
    directory = Path(directory)
    directory.mkdir(exist_ok=True)
    texts = {"README.md": readme(results, title, report_command),
             "runs.csv": runs_frame(results).to_csv(index=False, float_format=SIGNIFICANT),
             "metrics.csv": metrics_frame(results).to_csv(index=False, float_format=SIGNIFICANT),
             # the summary names the store as the report saw it; the record names it portably
             "summary.md": render_markdown(sections, title).replace(results.source, portable(results.source))
             if results.source else render_markdown(sections, title)}
    paths = []
    for name in RECORD_FILES:
        write_text_atomically(directory / name, texts[name])
        paths.append(directory / name)
    return paths
