"""``python -m bench export``: the stored metrics in long form, as CSV or Parquet."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.files import write_atomically
from bench.specs import format_spec
from bench.store import DEFAULT_DB, Store

FORMATS = ("csv", "parquet")
PARQUET_SUFFIXES = (".parquet", ".pq")


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", allow_abbrev=False, help="write the stored metrics in long form")
    export.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default: {DEFAULT_DB})")
    export.add_argument("--format", choices=FORMATS, default=None,
                        help="csv or parquet (default: from the --out suffix, .parquet or .pq for parquet; "
                             "csv otherwise and for standard output)")
    export.add_argument("--out", type=Path, required=True, help="output file, or - for standard output")

    export.set_defaults(func=command_export)


def output_format(out: Path, given: str | None) -> str:
    """``--format`` when given, else from the file's suffix: parquet for .parquet / .pq, CSV for
    anything else and for standard output (text a pipe can read)."""
    if given is not None:
        return given
    return "parquet" if str(out) != "-" and out.suffix.lower() in PARQUET_SUFFIXES else "csv"


def command_export(args) -> int:
    """Write the metrics in long form to a file (through a temporary file and a rename, so a
    failure leaves no partial file) or, with ``--out -``, to standard output."""
    to_stdout = str(args.out) == "-"
    args.format = output_format(args.out, args.format)
    if not to_stdout:
        try:
            if not args.out.parent.exists():
                raise UserError(f"directory {args.out.parent} does not exist (for --out {args.out})")
            if args.out.is_dir():
                raise UserError(f"--out {args.out} is a directory; give a file name")
        except OSError as exc:  # a name too long, a path through a file
            raise UserError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("parquet export needs pyarrow: pip install 'stochgrad-bench[parquet]'") from None
    with Store(args.db, create=False) as store:
        frame = store.metrics()
    at = frame.columns.get_loc("problem_params") + 1  # full specs: one column tells settings apart
    frame.insert(at, "problem_spec", _specs(frame["problem"], frame["problem_params"]))
    frame.insert(at, "estimator_spec", _specs(frame["estimator"], frame["estimator_params"]))

    def write(handle) -> None:
        if args.format == "csv":
            handle.write(frame.to_csv(index=False).encode("utf-8"))
        else:
            frame.to_parquet(handle, index=False)

    if to_stdout:
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        print(f"wrote {len(frame)} rows from {args.db} to standard output", file=sys.stderr)
    else:
        write_atomically(args.out, write)
        print(f"wrote {len(frame)} rows from {args.db} to {args.out}")
    return 0


def _specs(names: pd.Series, params: pd.Series) -> list[str]:
    """name(k=v,...) with every stored parameter, the form ``run --estimators`` accepts."""
    cache: dict[tuple[str, str], str] = {}

    def spec(name: str, text: str) -> str:
        try:
            return format_spec(name, json.loads(text))
        except (TypeError, ValueError, AttributeError, RecursionError):  # a damaged or crafted row: say so
            return f"{name}(unreadable parameters)"

    return [cache.setdefault((n, p), spec(n, p)) for n, p in zip(names, params)]
