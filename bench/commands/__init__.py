"""The subcommands of ``python -m bench``, one module each, all registered the same way.

Each module defines ``add_parser(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning the exit status). Raise :class:`bench.errors.UserError` for
a user mistake. Argument types and shared options: :mod:`bench.commands.arguments`.
"""
from __future__ import annotations

import importlib

COMMAND_MODULES = ("bench.commands.listing", "bench.commands.run", "bench.commands.export", "bench.commands.data",
                   "bench.commands.merge", "bench.commands.paper", "bench.commands.report", "bench.commands.reproduce",
                   "bench.commands.vae", "bench.commands.check_advantage")


def add_parsers(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
