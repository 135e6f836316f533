"""Subcommands of ``python -m bench`` beyond list/run/export, one module each.

Each module defines ``add_parser(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning the exit status). Raise :class:`bench.errors.UserError` for
a user mistake.
"""
from __future__ import annotations

import importlib

COMMAND_MODULES = ("bench.commands.data", "bench.commands.merge", "bench.commands.paper", "bench.commands.report",
                   "bench.commands.reproduce")


def add_parsers(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
