"""The command line: ``python -m bench COMMAND``, one module per command under benchcli/commands.

User mistakes (unknown names, malformed specs, invalid parameters, unusable paths) print one line
on stderr and exit with status 2 before anything is written.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

from benchcli import commands
from benchcli.commands.run import DEFAULT_THREADS, plan, summary_table  # noqa: F401  (the public names of `run`)
from bench.errors import Stopped, UserError
from bench.specs import SpecError
from bench.store import StoreError
from estimators.registry import RegistryError

EXIT_USAGE = 2


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already names its default or
    there is none to name (None, False, an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or default == []
                or "default" in text):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise UserError(f"{self.prog}: {message}")


def version_text() -> str:
    """What ``--version`` prints: the package version, where the running code is and its git
    revision (in a checkout), and the Python and torch it runs on."""
    import importlib.metadata
    import platform
    from pathlib import Path

    import torch

    from bench.runconfig import git_revision

    try:
        version = importlib.metadata.version("stochgrad-bench")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    code = Path(__file__).resolve().parent
    revision = git_revision()
    where = f"code in {code}" + (f", git {revision}" if revision else "")
    return f"stochgrad-bench {version} ({where}; Python {platform.python_version()}, torch {torch.__version__})"


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` and exit 0 (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--version", action=VersionAction,
                        help="print the version, where the code runs from (and its git revision) and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands.add_parsers(sub)
    return parser


class Terminated(Stopped):
    """SIGTERM or SIGHUP, handled like Ctrl-C: workers stop, finished runs stay stored."""


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    handled = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, _terminate) for signum in handled}
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UserError, RegistryError, SpecError, StoreError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"{what}; finished runs are stored and the same command resumes", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
