"""Errors that mean the user asked for something impossible: one line on stderr, exit status 2;
and the stop a signal asks for."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the command line or its inputs; reported as one line with exit status 2."""


class Stopped(KeyboardInterrupt):
    """A signal to this process (Ctrl-C, SIGTERM, SIGHUP) asking it to stop: finished runs stay
    stored. Told apart from a KeyboardInterrupt that a run raises itself, which fails that run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
