"""``python -m bench merge SRC.db... --into DST.db``: gather the runs of stores made on other
machines, by batch-job shards or by older versions into one store.

Runs are keyed by their configuration hash: a run already in the destination is skipped, one with
the same key but different numbers is reported (one line each) and the destination's kept, a
finished run replaces a failed or skipped one. Each source is copied in one transaction, so an
interrupted merge leaves every source either fully merged or not at all; merging again is a no-op.
Sources are only read (an older version is upgraded in a temporary copy).
"""
from __future__ import annotations

import sys
from pathlib import Path

from bench.errors import UserError
from bench.store import Store, check_merge_source, merge_store


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("merge", allow_abbrev=False,
                                   help="copy the runs of other results databases into one, keyed by config hash")
    parser.add_argument("sources", nargs="+", type=Path, metavar="SRC.db", help="results databases to read")
    parser.add_argument("--into", type=Path, required=True, metavar="DST.db",
                        help="results database to add the runs to (created if missing)")
    parser.set_defaults(func=command_merge)


def command_merge(args) -> int:
    """Exit status 1 when a conflict was reported, else 0."""
    for source in args.sources:  # every source checked before anything is written
        if source.exists() and args.into.exists() and source.resolve() == args.into.resolve():
            raise UserError(f"{source} is the destination (--into); give the other stores as sources")
        check_merge_source(source)
    conflicts = 0
    with Store(args.into) as destination:
        for source in args.sources:
            report = merge_store(destination, source)
            for line in report.conflicts:
                print(line, file=sys.stderr)
            conflicts += len(report.conflicts)
            replaced = f", {report.replaced} failed run(s) replaced by finished ones" if report.replaced else ""
            print(f"{source}: {report.copied} run(s) copied{replaced}, {report.present} already present"
                  + (f", {len(report.conflicts)} conflict(s) (destination kept)" if report.conflicts else ""))
        total = destination.connection.execute("SELECT count(*) FROM runs").fetchone()[0]
    print(f"{args.into}: {total} run(s)")
    return 1 if conflicts else 0
