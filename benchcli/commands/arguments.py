"""Argument types and shared options of the command line, in one place for every command.

Each type raises ``argparse.ArgumentTypeError`` (argparse turns it into the one-line usage error,
exit 2); :func:`device` raises :class:`bench.errors.UserError`.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Sequence

import torch

from bench.errors import UserError
from bench.sweep import DEFAULT_THREADS  # noqa: F401  (one default for the command line and the Python API)

MAX_SEED = 2**63
PLUGIN_HELP = ("a plugin .py file or module to load; it runs as ordinary Python code with your permissions, "
               "so load only plugins you trust")


MAX_COUNT = 2**63 - 1  # counts are stored as 64-bit integers; a larger one would run "forever" first


def int_at_least(minimum: int, kind: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {text!r}")
        if value > MAX_COUNT:
            raise argparse.ArgumentTypeError(f"must be below 2^63 = {MAX_COUNT + 1}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated non-negative integers, got {text!r}") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"must be distinct non-negative integers, got {text!r}")
    if any(seed >= MAX_SEED for seed in seeds):  # the store keeps seeds as 64-bit integers
        raise argparse.ArgumentTypeError(f"must be below 2^63 = {MAX_SEED}, got {text!r}")
    return seeds


def device(text: str, here: bool = True) -> str:
    """The canonical device name; ``here``: it must exist on this machine (not so for a Dask cluster's)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"invalid --device {text!r}: valid: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"invalid --device {text!r}: valid: cpu, cuda, cuda:N")
    if device.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise UserError("--device cuda: CUDA is not available on this machine (torch "
                            f"{torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present")
    return str(device)





def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads``, the same default and help for every command that runs: one torch thread per
    process (``--jobs N`` then uses N cores)."""
    parser.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                        help=f"torch intra-op threads per process, each worker of --jobs included (default: "
                             f"{DEFAULT_THREADS}: --jobs N then uses N cores; more threads pay only for large "
                             "models on an otherwise idle machine; recorded in each run's notes)")


KEEP_MODELS_HELP = ("keep each training run's final model in DIR (created if missing), one file per run, "
                    "read back with bench.checkpoints.load_model")


def add_keep_models_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-models", type=Path, default=None, metavar="DIR", help=KEEP_MODELS_HELP)


def keep_models(path: Path | None) -> Path | None:
    """``--keep-models DIR``: None, or the directory, made here if missing (a file there, or a
    directory that cannot be made, is a one-line error before any run starts)."""
    if path is None:
        return None
    if path.exists() and not path.is_dir():
        raise UserError(f"--keep-models {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--keep-models {path}: cannot make the directory ({exc.strerror or exc})") from None
    return path


def add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], help=PLUGIN_HELP)


def check_plugin_targets(targets: Sequence[str]) -> None:
    """Raise a one-line UserError for a ``--plugin`` that names nothing: a .py file that does not
    exist (with the close matches beside it), or a module that cannot be found. A plugin that is
    there but fails to load is reported and skipped when it is loaded, never fatal."""
    for target in targets:
        if target.endswith(".py"):
            path = Path(target)
            if path.is_file():
                continue
            folder = path.parent if path.parent.is_dir() else None
            close = difflib.get_close_matches(path.name, [p.name for p in folder.glob("*.py")], n=3) if folder else []
            hint = f"; did you mean {', '.join(str(folder / name) for name in close)}?" if close else ""
            raise UserError(f"--plugin {target}: no such file{hint}")
        try:
            found = importlib.util.find_spec(target)
        except ModuleNotFoundError:
            found = None
        except (ImportError, ValueError):  # there, but broken: reported when it is loaded
            continue
        if found is None:
            raise UserError(f"--plugin {target}: no module named {target!r} can be imported (give a .py file "
                            "or the name of an installed module)")


def load_plugins(targets: Sequence[str]) -> None:
    """Load ``--plugin`` targets: one that names nothing is a user error (exit 2, before anything
    runs); one that fails to load is a warning line, and the others are loaded."""
    from bench import sweep

    check_plugin_targets(targets)
    for error in sweep.load_plugins(targets):
        print(f"warning: {error} (skipped)", file=sys.stderr)
