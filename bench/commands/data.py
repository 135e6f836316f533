"""``python -m bench data fetch|path NAME``: download the MNIST-family data, or say where it is.

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
    fetch.add_argument("--dest", type=Path, default=None,
                       help=f"folder to download into (default: {datasets.cache_dir('NAME')})")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars or per-file lines")
    fetch.set_defaults(func=command_fetch)

    path = actions.add_parser("path", allow_abbrev=False,
                              help="print the folder a dataset is loaded from (after verifying it)")
    path.add_argument("name", help=f"dataset: {names}")
    path.add_argument("--data-dir", type=Path, default=None, help="look only in this folder")
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
    created = _first_missing(args.dest)
    try:
        directory = datasets.fetch(args.name, mirror=args.mirror, dest=args.dest, progress=not args.quiet)
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
        splits = datasets.load_dataset(args.name, args.data_dir)
    except datasets.DataError as exc:
        raise UserError(str(exc)) from None
    print(splits.directory)
    return 0
