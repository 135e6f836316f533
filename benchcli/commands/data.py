"""``python -m bench data fetch|path NAME``: download the MNIST-family data, or say where it is.

``--dest DIR`` (fetch) and ``--data-dir DIR`` (path) name the same layout as ``run --data-dir DIR``
and ``$STOCHGRAD_BENCH_DATA``: a folder holding one folder per data set, ``DIR/mnist/``,
``DIR/fashion-mnist/``, so what ``fetch --dest DIR`` downloads, ``--data-dir DIR`` finds.

``fetch`` failing on the default mirrors (network or checksum) exits 1; a bad ``--mirror`` or
``--dest``, an unknown name or missing data (``path``) are user mistakes: exit 2. Every failure is
one line on stderr.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bench.errors import UserError
from problems import datasets


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", allow_abbrev=False,
                                 help="download MNIST / Fashion-MNIST, or show where they are found")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="{fetch,path}")
    names = ", ".join(datasets.DATASETS)

    fetch = actions.add_parser("fetch", allow_abbrev=False,
                               help="download and md5-verify a dataset's four files (default: into the user cache)")
    fetch.add_argument("name", help=f"dataset: {names}")
    fetch.add_argument("--mirror", default=None,
                       help="base URL (or local folder) holding the four .gz files; replaces the default mirrors")
    fetch.add_argument("--dest", type=Path, default=None, metavar="DIR",
                       help="download into DIR/NAME/, the layout --data-dir DIR and $STOCHGRAD_BENCH_DATA read "
                            f"(default: the user cache, {datasets.cache_dir('NAME')})")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars or per-file lines")
    fetch.set_defaults(func=command_fetch)

    path = actions.add_parser("path", allow_abbrev=False,
                              help="print the folder a dataset is loaded from (after verifying it)")
    path.add_argument("name", help=f"dataset: {names}")
    path.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                      help="look only in DIR/NAME/ (the layout of fetch --dest DIR and run --data-dir DIR)")
    path.set_defaults(func=command_path)


def _first_missing(path: Path | None) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a fetch would create)."""
    if path is None:
        return None
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def command_fetch(args) -> int:
    if args.dest is not None and args.dest.exists() and not args.dest.is_dir():
        raise UserError(f"--dest {args.dest} exists and is not a directory")
    try:
        dest = None if args.dest is None else args.dest / datasets.dataset_info(args.name).name
    except datasets.DataError as exc:
        raise UserError(str(exc)) from None
    created = _first_missing(dest)
    try:
        directory = datasets.fetch(args.name, mirror=args.mirror, dest=dest, progress=not args.quiet)
    except datasets.DataError as exc:  # FetchError included
        if created is not None:  # a failed fetch leaves no folder it made behind
            shutil.rmtree(created, ignore_errors=True)
        if not isinstance(exc, datasets.FetchError):
            raise UserError(str(exc)) from None
        if args.mirror is not None:
            raise UserError(f"--mirror {args.mirror}: {exc}") from None
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(directory)
    return 0


def command_path(args) -> int:
    try:
        folder = None if args.data_dir is None else args.data_dir / datasets.dataset_info(args.name).name
        splits = datasets.load_dataset(args.name, folder)
    except datasets.DataError as exc:
        raise UserError(str(exc)) from None
    print(splits.directory)
    return 0
