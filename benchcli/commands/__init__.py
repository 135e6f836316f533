"""The subcommands of ``python -m bench``, one module each, all registered the same way.

Each module defines ``add_parser(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning the exit status). Raise :class:`bench.errors.UserError` for
a user mistake. Argument types and shared options: :mod:`benchcli.commands.arguments`.
"""
from __future__ import annotations

import importlib

COMMAND_MODULES = ("benchcli.commands.listing", "benchcli.commands.run", "benchcli.commands.export", "benchcli.commands.data",
                   "benchcli.commands.merge", "benchcli.commands.paper", "benchcli.commands.report", "benchcli.commands.reproduce",
                   "benchcli.commands.vae", "benchcli.commands.check_advantage")


def add_parsers(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
