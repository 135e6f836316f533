"""Shared fixtures: run ``python -m bench`` in a subprocess, and a fresh results-database path."""
from __future__ import annotations

import functools
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 300


def fashion_mnist_installed() -> bool:
    from problems.datasets import DataError, locate

    try:
        locate("fashion-mnist")
    except DataError:
        return False
    return True


def find_mnist() -> Path | None:
    """MNIST for the tests: ``../shared/data/mnist`` beside the checkout, else wherever the
    loader's own search order finds it ($STOCHGRAD_BENCH_DATA, the user cache); None if nowhere."""
    from problems.datasets import DataError, locate

    shared = REPO_ROOT.parent / "shared" / "data" / "mnist"
    if shared.is_dir():
        return shared
    try:
        return locate("mnist")
    except DataError:
        return None


MNIST_DIR = find_mnist()
MNIST_DATA_ROOT = None if MNIST_DIR is None else MNIST_DIR.parent  # holds mnist/: what --data-dir takes
needs_mnist = pytest.mark.skipif(MNIST_DIR is None, reason="MNIST not found in ../shared/data/mnist, "
                                 "$STOCHGRAD_BENCH_DATA/mnist or the cache (python -m bench data fetch mnist)")

needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist_installed(),
                                         reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def cli_env() -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout first on the path, whatever the cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "bench", *map(str, args)]


def run_cli(*args, cwd: Path | str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``python -m bench *args`` in ``cwd``; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli(tmp_path):
    """``run_cli`` with the working directory set to this test's tmp_path."""
    return functools.partial(run_cli, cwd=tmp_path)


@pytest.fixture
def db_path(tmp_path) -> Path:
    """A results-database path that does not exist yet."""
    return tmp_path / "results.db"


@pytest.fixture
def one_thread():
    """One torch thread: on a busy shared machine two OpenMP threads can run many times slower on
    small matrices, and no tested result depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def synthetic(monkeypatch):
    """A small stand-in for MNIST (no data set needed): 784 uniform pixels, labels from a fixed
    linear map; 640 training, 200 validation, 200 test examples, served to every MNIST problem."""
    from problems import training

    g = torch.Generator().manual_seed(7)
    w = torch.randn(784, 10, generator=g)

    def split(n):
        x = torch.rand(n, 784, generator=g)
        return x, (x - 0.5).matmul(w).argmax(-1)

    data = {"train": split(640), "valid": split(200), "test": split(200)}
    monkeypatch.setattr(training, "load_splits", lambda dataset: data)
    return data


@pytest.fixture
def invoke(monkeypatch, capfd, tmp_path):
    """``benchcli.cli.main(argv)`` in tmp_path; returns (exit code, stdout, stderr)."""
    from benchcli.cli import main

    def call(*argv) -> tuple[int, str, str]:
        monkeypatch.chdir(tmp_path)
        capfd.readouterr()
        code = main([str(a) for a in argv])
        out, err = capfd.readouterr()
        return code, out, err

    return call


def one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user error: exit 2 and exactly one line on stderr, holding each fragment."""
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# -- test lanes -------------------------------------------------------------------------------------
# Every test is in exactly one lane. The slow lane holds four kinds of test, each with its marker:
# 'subprocess' (runs python -m bench, pip or worker processes), 'end_to_end' (a whole command in the
# test's process: a report with its figures, a reproduction), 'mnist' (reads the real data set),
# 'training' (trains a model for epochs or steps), 'statistical' (draws enough samples for a
# statistical test or a closed-form comparison at a stated error rate), and 'matrix' (the further
# cases of a parametrized test: the fast lane runs the first case that is none of the other kinds, so
# every test function still runs there once). Each of those also carries 'slow'; every other test
# carries 'fast'. `python -m pytest -m fast` is the inner-loop lane;
# `python -m pytest` (what CI runs) runs both. The markers are applied here, from what a test uses
# (fixtures, the calls in its source and in the source of the shared fixtures it uses, the skip reason
# of `needs_mnist`), plus the tables below for tests and fixtures that take long without saying so; a
# test file may also mark tests itself.
LANE_KINDS = ("subprocess", "end_to_end", "mnist", "training", "statistical", "matrix")
SPAWNS = re.compile(r"\brun_cli\(|\bcli\(|\bsubprocess\.|\bcli_command\(|\bPopen\(|[\"']--jobs[\"']|"
                    r"\bmultiprocessing\b|\bProcessPoolExecutor\b")
READS_MNIST = re.compile(r"\bMNIST_DIR\b|\bMNIST_DATA_ROOT\b")
TRAINS = re.compile(r"\bsynthetic\b")

# Tests that run long for a reason their source does not show (many samples, many steps): by test
# module, then the test function's name (all its parameter cases), with the kind. A name here that no
# longer exists fails the collection, so the table cannot go stale silently.
SLOW_TESTS: dict[str, dict[str, str]] = {
    "test_estimators.py": {"test_unbiased_estimators_pass_the_z_test": "statistical",
                           "test_biased_estimators_are_detected": "statistical",
                           "test_monte_carlo_variance_matches_enumeration": "statistical",
                           "test_perturbation_estimators_are_unbiased_for_their_smoothed_target": "statistical",
                           "test_optimal_baseline_beats_moving_average_on_coupled_units": "statistical"},
    "test_categorical_vae.py": {"test_discrete_unbiased_estimators_match_enumeration_by_replay": "statistical",
                                "test_short_training_improves_the_elbo_and_records_everything": "training",
                                "test_training_is_deterministic_for_a_seed": "training"},
    "test_categorical_estimators.py": {"test_unbiased_categorical_estimators_pass_a_z_test": "statistical"},
    "test_categorical.py": {"test_polynomial_programming_training_records_the_exact_loss_and_improves": "training"},
    "test_analysis.py": {"test_rankings_and_front_use_mse_at_equal_budget": "statistical"},
    "test_metrics.py": {"test_debiased_squared_bias_is_unbiased_under_reference_noise": "statistical"},
    # Measured: each took over 2.6 s of CPU in the fast lane (the busy machine's wall time several times that).
    "test_report_readable.py": {"test_figures_list_estimators_in_the_ranking_tables_order": "end_to_end",
                                "test_no_text_leaves_a_figure_or_falls_below_legible": "end_to_end",
                                "test_cost_figures_are_faceted_by_family_and_name_every_point": "end_to_end"},
    "test_report.py": {"test_summary_tables_hold_the_stored_numbers": "end_to_end",
                       "test_figure_text_is_not_clipped": "end_to_end",
                       "test_training_and_paper_sections": "end_to_end"},
    "test_trust.py": {"test_budget_is_an_option_of_run_and_report": "end_to_end",
                      "test_the_summary_ranks_unbiased_estimators_among_themselves": "end_to_end"},
    "test_runinfo.py": {"test_a_store_without_descriptions_still_renders": "end_to_end"},
    "test_regulariser_analysis.py": {"test_report_has_the_section_only_with_mlp_runs": "end_to_end",
                                     "test_reference_floor_absent_is_not_said": "end_to_end"},
    "test_new_user.py": {"test_no_verdict_on_nets_still_at_high_error": "end_to_end",
                         "test_the_summary_and_report_say_a_stateful_estimator_is_measured_frozen": "end_to_end"},
    "test_faults_store.py": {"test_malformed_json_in_a_stored_run_does_not_crash_report_or_export": "end_to_end",
                             "test_report_survives_dollars_and_escapes_html": "end_to_end",
                             # Measured on the busy 2-core machine: 9-13 s wall each (whole commands; a
                             # report each, or a sweep filling the disk page by page).
                             "test_disk_full_during_a_sweep_is_one_line_and_nothing_is_claimed": "end_to_end",
                             "test_report_to_a_full_disk_leaves_no_partial_file": "end_to_end",
                             "test_readers_open_the_store_read_only_and_leave_no_files": "end_to_end"},
    # Measured on the busy 2-core machine, 8-20 s wall each; a lighter fast test of each module remains.
    "test_harness.py": {"test_worker_processes_store_the_same_numbers_as_in_process": "subprocess"},
    "test_sequence.py": {"test_double_normalisation_is_caught": "statistical",
                         "test_unbiased_declarations_are_true": "statistical",
                         "test_training_records_exact_curves": "training"},
    "test_api.py": {"test_readme_example_gives_the_command_lines_numbers": "end_to_end",
                    "test_rank_is_the_order_the_command_line_prints": "end_to_end"},
    # Measured on the busy 2-core machine, 2-8 s wall each: closed-form comparisons over several nets,
    # thousands of reference samples, training steps, a whole `report --record`.
    "test_mlp.py": {"test_flip_estimator_is_unbiased_for_the_enumerated_gradient": "statistical",
                    "test_sampled_reference_has_standard_errors_and_covers_the_truth": "statistical"},
    "test_sigmoid_belief_net.py": {
        "test_straight_through_bias_grows_with_depth": "statistical",
        "test_large_net_reference_is_estimated_seeded_and_cached": "statistical",
        "test_harness_marks_the_large_net_reference_as_estimated": "statistical",
        "test_training_lowers_the_exact_loss_and_yields_the_documented_records": "training"},
    "test_gater.py": {"test_fashion_mnist_gater_trains": "training"},
    # `run` in the test's process starts its worker process (spawned: a fresh interpreter importing
    # torch), 10 s wall per case; test_paper_passes_threads_to_the_sweep stays fast.
    "test_measurement.py": {"test_run_sets_and_records_the_thread_count": "subprocess"},
    "test_regulariser_generalisation.py": {"test_record_regenerated_from_a_store": "end_to_end"},
}
# Shared fixtures whose setup is a whole command although their source does not start a process: by
# test module, then the fixture's name, with the kind; every test that uses one is in the slow lane
# (a module- or session-scoped fixture's setup is charged to whichever of its tests runs first).
# Stale names fail the collection as for SLOW_TESTS.
SLOW_FIXTURES: dict[str, dict[str, str]] = {
    "test_report.py": {"report_dir": "end_to_end"},  # a whole report with its figures: 68 s wall, measured
    "test_trust.py": {"blackbox_store": "statistical"},  # 4,000 estimates of 9 estimators on d=8: 8 s wall
    # `run` in the test's process still starts its worker process (a fresh interpreter importing torch):
    # 4,000 estimates of 3 estimators, 9 s wall of setup.
    "test_api.py": {"cli_frame": "subprocess"},
}
# Whole test modules of one kind (their fixtures start the processes: a Dask cluster, a worker pool).
SLOW_MODULES = {"test_distributed.py": "subprocess", "test_faults_pool.py": "subprocess",
                "test_packaging.py": "subprocess"}
# A literal count of 10,000 or more in a test's source (not a seed, not a decimal): Monte Carlo samples.
LITERAL = re.compile(r"(\w*)\s*[=:(,]?\s*(?<![\d.])(\d{1,3}(?:_\d{3})+|\d{5,}|10\s*\*\*\s*\d+|[1-9]e\d+)(?![\d.])")


def _many_samples(source: str) -> bool:
    for word, number in LITERAL.findall(source):
        if "seed" in word.lower():
            continue
        value = eval(number.replace("_", ""), {"__builtins__": {}})  # digits, '**' or 'e' only
        if 10_000 <= value <= 10**9:
            return True
    return False


@functools.lru_cache(maxsize=None)
def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


@functools.lru_cache(maxsize=None)
def _spawning_helpers(module) -> frozenset[str]:
    """Names of a test module's own functions whose source starts a process (one level deep)."""
    names = set()
    for name, obj in vars(module).items():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("test_"):
            if SPAWNS.search(_source(obj)):
                names.add(name)
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def _kinds_from_source(function, module) -> frozenset[str]:
    """The kinds a test function's own source shows: a process started (directly or through one of
    its module's helpers), the real MNIST read, a model trained on the synthetic stand-in."""
    source = _source(function)
    kinds = set()
    if SPAWNS.search(source) or (module is not None and any(
            re.search(rf"\b{name}\(", source) for name in _spawning_helpers(module))):
        kinds.add("subprocess")
    if READS_MNIST.search(source):
        kinds.add("mnist")
    if TRAINS.search(source):
        kinds.add("training")
    if _many_samples(source):
        kinds.add("statistical")
    return frozenset(kinds)


def _fixture_kinds(item) -> set[str]:
    """The kinds shown by the shared (module-, class- or session-scoped) fixtures of the test
    directory that a test uses, read from their source as for a test function, plus SLOW_FIXTURES."""
    kinds: set[str] = set()
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return kinds
    tests_dir = REPO_ROOT / "tests"
    for name in getattr(item, "fixturenames", ()):
        definitions = info.name2fixturedefs.get(name) or ()
        if not definitions:
            continue
        definition = definitions[-1]  # the one in effect for this test
        function = getattr(definition, "func", None)
        try:
            path = Path(inspect.getsourcefile(function)).resolve()
        except TypeError:
            continue
        if path.parent != tests_dir:
            continue
        table = SLOW_FIXTURES.get(path.name, {})
        if name in table:
            kinds.add(table[name])
        if definition.scope != "function":
            kinds |= _kinds_from_source(function, sys.modules.get(function.__module__))
    return kinds


def lane_kinds(item) -> set[str]:
    """The slow-lane kinds of one collected test (empty: the test is fast)."""
    kinds = {kind for kind in LANE_KINDS if item.get_closest_marker(kind) is not None}
    if item.get_closest_marker("fast") is not None and not kinds:  # marked fast by hand: no guessing
        return kinds
    fixtures = set(getattr(item, "fixturenames", ()))
    function = getattr(item, "function", None)
    if function is not None:
        kinds |= _kinds_from_source(function, getattr(item, "module", None))
    if "cli" in fixtures:
        kinds.add("subprocess")
    kinds |= _fixture_kinds(item)
    if any("MNIST" in str(mark.kwargs.get("reason", ""))
                                         and "Fashion" not in str(mark.kwargs.get("reason", ""))
                                         for mark in item.iter_markers("skipif")):
        kinds.add("mnist")
    if "synthetic" in fixtures:
        kinds.add("training")
    module_name = Path(str(item.fspath)).name
    if module_name in SLOW_MODULES:
        kinds.add(SLOW_MODULES[module_name])
    table = SLOW_TESTS.get(module_name, {})
    if function is not None and function.__name__ in table:
        kinds.add(table[function.__name__])
    if item.get_closest_marker("slow") is not None and not kinds:
        kinds.add("statistical")
    return kinds


def pytest_collection_modifyitems(config, items):
    """Put every test in its lane (see LANE_KINDS): the kinds' markers and 'slow', or 'fast'."""
    seen: dict[str, object] = {}  # test module file name -> the module, for the stale-name check
    first_case: set[tuple] = set()  # the test functions whose fast case is chosen
    for item in items:
        function = getattr(item, "function", None)
        if getattr(item, "module", None) is not None:
            seen.setdefault(Path(str(item.fspath)).name, item.module)
        kinds = lane_kinds(item)
        if not kinds and getattr(item, "callspec", None) is not None:
            key = (str(item.fspath), getattr(item.cls, "__name__", None), item.originalname)
            if key in first_case:
                kinds.add("matrix")
            first_case.add(key)
        for kind in sorted(kinds):
            item.add_marker(kind)
        item.add_marker("slow" if kinds else "fast")
    stale = [f"{module}::{name}" for table in (SLOW_TESTS, SLOW_FIXTURES) for module, names in table.items()
             if module in seen for name in names if not hasattr(seen[module], name)]
    if stale:
        raise pytest.UsageError(f"conftest.SLOW_TESTS or SLOW_FIXTURES names tests or fixtures that do not exist: "
                                f"{', '.join(stale)}")


# -- which package modules the fast lane exercises ---------------------------------------------------
PACKAGES = ("estimators", "problems", "bench", "analysis", "experiments")


def pytest_addoption(parser):
    parser.addoption("--check-modules", action="store_true",
                     help="fail unless every module of the packages had a function run by the selected tests "
                          "(imports at collection do not count); use with -m fast")


def package_modules() -> dict[str, Path]:
    """Every module of the packages, by file: what the fast lane must reach."""
    return {str(path.resolve()): path.relative_to(REPO_ROOT) for package in PACKAGES
            for path in sorted((REPO_ROOT / package).rglob("*.py"))}


class _ModuleRecorder:
    """Records the files of the package functions that run (a global trace function on call events
    only, so local tracing stays off); started after collection so imports do not count."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self.reached: set[str] = set()

    def trace(self, frame, event, arg):
        filename = frame.f_code.co_filename
        if filename in self.files and frame.f_code.co_name != "<module>":
            self.reached.add(filename)
        return None

    def start(self) -> None:
        import threading

        sys.settrace(self.trace)
        threading.settrace(self.trace)

    def stop(self) -> None:
        import threading

        sys.settrace(None)
        threading.settrace(None)


def pytest_collection_finish(session):
    if session.config.getoption("--check-modules"):
        recorder = _ModuleRecorder(package_modules())
        session.config._module_recorder = recorder
        recorder.start()


def pytest_sessionfinish(session, exitstatus):
    recorder = getattr(session.config, "_module_recorder", None)
    if recorder is None:
        return
    recorder.stop()
    missed = sorted(str(path) for filename, path in recorder.files.items()
                    if filename not in recorder.reached and path.name != "__main__.py"
                    and Path(filename).read_text().count("def ") > 0)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = (f"--check-modules: {len(recorder.files) - len(missed)} of {len(recorder.files)} package modules "
            f"exercised" + (f"; none of the selected tests runs a function of: {', '.join(missed)}" if missed else ""))
    if reporter is not None:
        reporter.write_line(line)
    if missed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
