"""bench.errors: a user mistake is an ordinary exception; a stop asked by a signal is not, so no
broad ``except Exception`` in the harness can swallow it, and it names its signal."""
from __future__ import annotations

import signal

import pytest

from bench.errors import Stopped, UserError


def test_a_stop_escapes_broad_handlers_and_names_its_signal():
    with pytest.raises(Stopped) as info:
        try:
            raise Stopped(signal.SIGTERM)
        except Exception:  # what a run's error handling catches
            pytest.fail("a signal's stop was caught as an ordinary error")
    assert info.value.signum == signal.SIGTERM and isinstance(info.value, KeyboardInterrupt)


def test_a_user_mistake_is_an_ordinary_exception():
    assert issubclass(UserError, Exception) and not issubclass(UserError, KeyboardInterrupt)
