"""``python -m bench report``: the HTML bias/variance report and a Markdown summary of a store.

    python -m bench report --db bench-results/results.db --out report [--estimators a,b] [--problems p,q]

Writes OUT/index.html (self-contained: figures embedded, works offline) and OUT/summary.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchcli.commands.arguments import positive_int
from bench.errors import UserError
from bench.store import DEFAULT_DB
from bench.summary import DEFAULT_BUDGET


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", allow_abbrev=False, help="write an HTML report (figures, tables, run metadata) and summary.md",
        description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default: {DEFAULT_DB})")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (created if its parent exists): index.html and summary.md")
    parser.add_argument("--record", type=Path, default=None,
                        help="also (or instead of --out) write a reproduction record into this directory: "
                             "README.md, runs.csv, metrics.csv, summary.md")
    parser.add_argument("--estimators", default=None,
                        help="only these estimators: comma-separated names or specs name(key=value)")
    parser.add_argument("--problems", default=None,
                        help="only these problems: comma-separated names or specs name(key=value)")
    parser.add_argument("--budget", type=positive_int, default=DEFAULT_BUDGET, metavar="B",
                        help="loss evaluations at which biased estimators and deterministic baselines are ranked "
                             f"(default: {DEFAULT_BUDGET}); unbiased ones are ranked by MSE × evaluations")
    parser.set_defaults(func=command_report)


def _output_directory(option: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; give a directory")
    if not path.exists() and not path.parent.exists():
        raise UserError(f"directory {path.parent} does not exist (for {option} {path})")


def command_report(args: argparse.Namespace) -> int:
    if args.out is None and args.record is None:
        raise UserError("report: give --out DIR (the HTML report), --record DIR (a reproduction record) or both")
    for option, path in (("--out", args.out), ("--record", args.record)):
        if path is not None:
            _output_directory(option, path)
    from analysis.frames import NoResults, load_results  # the application layer: heavy imports here
    from analysis.report import figure_count, mathtext_safe, plain_sections, write_report
    from experiments import report_sections

    try:
        results = load_results(args.db, args.estimators, args.problems)
    except NoResults as exc:
        raise UserError(str(exc)) from None
    filters = {"--estimators": args.estimators, "--problems": args.problems}
    finished = int((results.runs["status"] == "finished").sum())
    runs = f"{finished} finished run{'s' if finished != 1 else ''} in {args.db}"
    sections = None
    # The registered experiments' sections (analysis never imports them), '$' safe in figures.
    extra = plain_sections(report_sections(mathtext_safe(results)))
    if args.out is not None:
        page, summary, sections = write_report(results, args.out, filters, experiment_sections=extra,
                                               budget=args.budget)
        figures = figure_count(sections)
        print(f"wrote {page} ({figures} figure{'s' if figures != 1 else ''}) and {summary} from {runs}")
    if args.record is not None:
        from analysis.record import write_record
        from analysis.report import build_sections

        words = ["python", "-m", "bench", "report", "--db", str(args.db), "--record", str(args.record)]
        for option, value in filters.items():
            if value is not None:
                words += [option, value]
        if args.budget != DEFAULT_BUDGET:
            words += ["--budget", str(args.budget)]
        if sections is None:
            sections = build_sections(results, filters, experiment_sections=extra, budget=args.budget)
        paths = write_record(results, args.record, sections, args.record.resolve().name, words)
        print(f"wrote the record {args.record} ({', '.join(p.name for p in paths)}) from {runs}")
    return 0
