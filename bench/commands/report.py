"""``python -m bench report``: the HTML bias/variance report and a Markdown summary of a store.

    python -m bench report --db bench-results/results.db --out report [--estimators a,b] [--problems p,q]

Writes OUT/index.html (self-contained: figures embedded, works offline) and OUT/summary.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import UserError
from bench.store import DEFAULT_DB


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", allow_abbrev=False, help="write an HTML report (figures, tables, run metadata) and summary.md",
        description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default: {DEFAULT_DB})")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory (created if its parent exists): index.html and summary.md")
    parser.add_argument("--estimators", default=None,
                        help="only these estimators: comma-separated names or specs name(key=value)")
    parser.add_argument("--problems", default=None,
                        help="only these problems: comma-separated names or specs name(key=value)")
    parser.set_defaults(func=command_report)


def command_report(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    if not out.exists() and not out.parent.exists():
        raise UserError(f"directory {out.parent} does not exist (for --out {out})")
    from analysis.frames import NoResults, load_results  # the application layer: heavy imports here
    from analysis.report import figure_count, write_report

    try:
        results = load_results(args.db, args.estimators, args.problems)
    except NoResults as exc:
        raise UserError(str(exc)) from None
    filters = {"--estimators": args.estimators, "--problems": args.problems}
    page, summary, sections = write_report(results, out, filters)
    finished = int((results.runs["status"] == "finished").sum())
    figures = figure_count(sections)
    print(f"wrote {page} ({figures} figure{'s' if figures != 1 else ''}) and {summary} from {finished} finished "
          f"run{'s' if finished != 1 else ''} in {args.db}")
    return 0
