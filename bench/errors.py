"""Errors that mean the user asked for something impossible: one line on stderr, exit status 2."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the command line or its inputs; reported as one line with exit status 2."""
