"""The test lanes (tests/conftest.py): every test is in exactly one lane, the slow lane's tests say
their kind, and the fast lane runs a function of every package module."""
from __future__ import annotations

import subprocess
import sys

import pytest

import conftest
from conftest import REPO_ROOT, cli_env


@pytest.mark.fast  # its own source holds the literals it tests
def test_literal_sample_counts_mark_a_test_statistical():
    for source in ("samples=20000", "n = 200_000", "10**5", "1e6", "samples=10_000"):
        assert conftest._many_samples(source), source
    for source in ("samples=4096", "data_seed=12345", "2**20", "0.12345", "2**63", "10 ** 18", "1e-6", "5000"):
        assert not conftest._many_samples(source), source


def test_every_test_is_in_exactly_one_lane(request):
    items = request.session.items
    assert items, "collected nothing"
    for item in items:
        fast = item.get_closest_marker("fast") is not None
        slow = item.get_closest_marker("slow") is not None
        kinds = [kind for kind in conftest.LANE_KINDS if item.get_closest_marker(kind) is not None]
        assert fast != slow, item.nodeid
        assert bool(kinds) == slow, (item.nodeid, kinds)


def test_the_slow_lane_names_real_tests():
    for module in list(conftest.SLOW_TESTS) + list(conftest.SLOW_MODULES) + list(conftest.SLOW_FIXTURES):
        assert (REPO_ROOT / "tests" / module).is_file(), module


def test_a_shared_fixture_that_runs_a_command_puts_its_tests_in_the_slow_lane(request):
    """test_cli's module-scoped 'sweep' starts python -m bench (its source shows it); test_report's
    'report_dir' writes a whole report (SLOW_FIXTURES): no test using either is in the fast lane."""
    for item in request.session.items:
        module = item.path.name
        fixtures = set(getattr(item, "fixturenames", ()))
        if module == "test_cli.py" and fixtures & {"sweep", "listing"}:
            assert item.get_closest_marker("subprocess") is not None, item.nodeid
            assert item.get_closest_marker("fast") is None, item.nodeid
        if module == "test_report.py" and "report_dir" in fixtures:
            assert item.get_closest_marker("end_to_end") is not None, item.nodeid
            assert item.get_closest_marker("fast") is None, item.nodeid


@pytest.mark.subprocess
def test_the_fast_lane_runs_a_function_of_every_package_module():
    """The whole fast lane under --check-modules: it passes, and reaches every package module."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "fast", "--check-modules", "-q",
                           "-p", "no:cacheprovider"], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    tail = done.stdout[-3000:]
    assert done.returncode == 0, tail
    modules = len(conftest.package_modules())
    assert f"--check-modules: {modules} of {modules} package modules exercised" in done.stdout, tail
