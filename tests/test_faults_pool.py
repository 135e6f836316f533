"""The sweep survives faults: dead or stuck workers, signals to the parent, a killed parent, too
many ``--jobs``. A file plugin's ``fault`` estimator misbehaves on request; every sweep is tiny
(``bernoulli-target(d=2)``, 500 estimates), so each test costs the torch imports of its processes."""
from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from bench import harness, sweep
from bench.errors import UserError
from estimators.base import Estimator
from conftest import cli_command, cli_env, run_cli

FAULT_PLUGIN = '''
"""An estimator that misbehaves on request, to test the worker pool."""
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from estimators import register_estimator
from estimators.base import Estimator, attach_gradient


class Halt(BaseException):
    """A BaseException that is not an Exception."""


@register_estimator("fault")
class Fault(Estimator):
    """REINFORCE, after doing ``action`` on its first call: none; exit (os._exit(7)); kill (SIGKILL
    to itself); sysexit (raise SystemExit(3)); interrupt (raise KeyboardInterrupt); base (raise a
    BaseException subclass); sleep (touch started-<pid> in the cwd, sleep 300 s); spawn (start a
    `sleep 300` child, its pid in child-<pid>, then sleep)."""

    needs_loss_backprop = False

    def __init__(self, action: str = "none"):
        super().__init__()
        self.action = action

    def forward(self, logits, loss_fn):
        if self.action == "exit":
            os._exit(7)
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.action == "sysexit":
            raise SystemExit(3)
        if self.action == "interrupt":
            raise KeyboardInterrupt
        if self.action == "base":
            raise Halt("not an Exception")
        if self.action == "spawn":
            child = subprocess.Popen(["sleep", "300"])
            Path(f"child-{child.pid}").touch()
            Path(f"started-{os.getpid()}").touch()
            time.sleep(300)
        if self.action == "sleep":
            Path(f"started-{os.getpid()}").touch()
            time.sleep(300)
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        return attach_gradient(loss, logits, (h - probs) * loss.detach().unsqueeze(-1))
'''
TINY = ("--problems", "bernoulli-target(d=2)", "--samples", "500", "--quiet")
GONE_WITHIN_S = 10.0
PROGRESS_TIMEOUT_S = 120.0
WORKER_MEMORY_ENV = "STOCHGRAD_BENCH_WORKER_MEMORY_GIB"


@pytest.fixture(autouse=True)
def small_worker_memory(monkeypatch):
    """Two workers whatever the other processes on this machine hold: the --jobs memory cap counts
    a worker as 0.01 GiB (CLI subprocesses inherit the environment)."""
    monkeypatch.setenv(WORKER_MEMORY_ENV, "0.01")


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "fault_plugin.py"
    path.write_text(FAULT_PLUGIN)
    return path


def fault_sweep(plugin: Path, actions: str, *args) -> tuple:
    return ("run", "--plugin", plugin, "--estimators", f"fault(action={actions})", *TINY,
            "--db", plugin.parent / "results.db", *args)


def stored(db: Path) -> dict[tuple[str, int], tuple[str, str | None]]:
    """(estimator params JSON, seed) -> (status, error), read-only while a sweep may be writing."""
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
        try:
            rows = con.execute("SELECT estimator_params, seed, status, error FROM runs").fetchall()
        except sqlite3.OperationalError:  # created, schema not yet committed
            return {}
    return {(params, seed): (status, error) for params, seed, status, error in rows}


def by_action(db: Path) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list] = {}
    for (params, _), row in stored(db).items():
        out.setdefault(params.split('"')[3], []).append(row)
    return out


def alive(pid: int) -> bool:
    """Running and not a zombie (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> set[int]:
    """Direct children of ``pid``: the workers and multiprocessing's resource tracker."""
    try:
        import psutil
    except ImportError:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(stat.parent.name))
        return found
    return {child.pid for child in psutil.Process(pid).children()}


def wait_until(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the sweep ended before {what}: exit {process.returncode}\n{process.stderr.read()}")
        assert time.monotonic() < deadline, f"no progress: waited {PROGRESS_TIMEOUT_S} s for {what}"
        time.sleep(0.1)


def assert_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid for pid in pids if alive(pid)}
    assert not left, f"processes {left} outlived their parent by {GONE_WITHIN_S} s"


def sleepers(cwd: Path) -> set[int]:
    return {int(path.name.split("-")[1]) for path in cwd.glob("started-*")}


class Sweep(subprocess.Popen):
    """A ``python -m bench`` process; ``family()`` records its children, killed at the end even
    when a test fails (an implementation that leaves orphans must not leave them on the machine)."""

    recorded: set[int]

    def family(self) -> set[int]:
        found = children(self.pid)
        self.recorded |= found
        return found


@contextlib.contextmanager
def started(args, cwd: Path):
    """A sweep with Ctrl-C handled as usual (even if this shell ignores it); it, its recorded
    children and every sleeping worker are killed on the way out."""
    ignoring = signal.signal(signal.SIGINT, signal.default_int_handler)  # caught here: default after exec
    try:  # (no preexec_fn: it can deadlock a child forked from a process with threads)
        process = Sweep(cli_command(*args), cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, ignoring)
    process.recorded = set()
    try:
        yield process
    finally:
        process.kill()
        for pid in sleepers(cwd) | process.recorded:
            if alive(pid) and "multiprocessing" in command_line(pid):  # not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=30)


# -- a run that kills its worker -------------------------------------------------------------------
@pytest.mark.parametrize("action, jobs, reason", [
    ("exit", 2, "worker died: exit code 7"),
    ("kill", 2, "worker died: killed by SIGKILL (out of memory?)"),
    ("sysexit", 2, "SystemExit: the run called exit(3)"),
    ("sysexit", 1, "SystemExit: the run called exit(3)"),
    ("exit", 1, "worker died: exit code 7"),  # --jobs 1 runs in a worker process too
    ("kill", 1, "worker died: killed by SIGKILL (out of memory?)"),
    ("interrupt", 1, "KeyboardInterrupt raised by the run"),  # the run's own, not Ctrl-C
    ("base", 1, "Halt raised by the run: not an Exception"),
])
def test_dead_worker_fails_its_run_and_the_sweep_goes_on(plugin, action, jobs, reason):
    """Both workers die on the first two configs; the pool is rebuilt and the last two finish."""
    result = run_cli(*fault_sweep(plugin, f"{action}|none", "--seeds", "0,1", "--jobs", jobs), cwd=plugin.parent)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    runs = by_action(plugin.parent / "results.db")
    assert runs == {action: [("failed", reason)] * 2, "none": [("finished", None)] * 2}
    assert result.stderr.count(reason) == 2, result.stderr


# -- a run that hangs ------------------------------------------------------------------------------
@pytest.mark.parametrize("jobs", [1, 2])
def test_run_timeout_kills_the_run_and_the_sweep_goes_on(plugin, jobs):
    # The plugin sleeps 300 s; the command's own limit (240 s, generous for a loaded machine's
    # start-up) is below that, so finishing at all shows the sleep was cut short.
    result = run_cli(*fault_sweep(plugin, "sleep|none", "--run-timeout", "1.5", "--jobs", jobs), cwd=plugin.parent,
                     timeout=2 * PROGRESS_TIMEOUT_S)
    assert result.returncode == 1, result.stderr
    assert by_action(plugin.parent / "results.db") == {"sleep": [("failed", "timed out after 1.5 s")],
                                                        "none": [("finished", None)]}
    assert sleepers(plugin.parent) and not any(alive(pid) for pid in sleepers(plugin.parent))


def test_run_timeout_must_be_positive(tmp_path):
    for command in ("run", "paper"):
        result = run_cli(command, "--run-timeout", "0", cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: python -m bench {command}: argument --run-timeout: must be a positive number of seconds, got '0'"]


# -- the parent killed or signalled ----------------------------------------------------------------
def test_workers_die_with_a_killed_parent(plugin):
    """kill -9 of the parent while both workers sleep in a run: workers and resource tracker go too."""
    with started(fault_sweep(plugin, "sleep", "--seeds", "0,1", "--jobs", "2"), plugin.parent) as process:
        wait_until(lambda: len(sleepers(plugin.parent)) == 2, process, "both workers started their runs")
        family = process.family()
        assert sleepers(plugin.parent) <= family
        process.kill()
        process.wait(timeout=30)
        assert_gone(family)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_to_the_parent_stops_the_sweep_and_keeps_finished_runs(plugin, signum):
    """The signal reaches the parent alone while one worker is stuck in a run: it exits promptly
    with 128 + signum, one line saying so, the finished run stored and no worker left."""
    db = plugin.parent / "results.db"
    with started(fault_sweep(plugin, "sleep|none", "--jobs", "2"), plugin.parent) as process:
        wait_until(lambda: sleepers(plugin.parent) and ("finished", None) in stored(db).values(), process,
                   "one run finished and the other started")
        workers = process.family()
        process.send_signal(signum)
        try:
            _, stderr = process.communicate(timeout=GONE_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{signal.Signals(signum).name} did not stop the sweep within {GONE_WITHIN_S} s")
        assert process.returncode == 128 + signum, stderr
        assert stderr.strip().splitlines()[-1].endswith("finished runs are stored and the same command resumes")
        assert "Traceback" not in stderr
        assert by_action(db) == {"none": [("finished", None)]}
        assert_gone(workers)


# -- --jobs capped ---------------------------------------------------------------------------------
def test_jobs_capped_at_the_runs_to_do(tmp_path):
    result = run_cli("run", "--estimators", "reinforce,straight-through", *TINY, "--jobs", "1000",
                     "--db", tmp_path / "results.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [
        "warning: --jobs 1000 capped at 2 (2 run(s) to do)"]


def test_jobs_capped_at_available_memory(tmp_path, monkeypatch, capsys, one_thread):
    """With 2.5 GiB available and 1 GiB per worker, --jobs 4 runs 2 workers; with 0.5 GiB, in-process."""
    monkeypatch.delenv(WORKER_MEMORY_ENV)
    monkeypatch.setattr(sweep, "available_memory", lambda: int(2.5 * 2**30))
    assert sweep.capped_jobs(4, 10) == (2, "2.5 GiB of memory available, about 1 GiB per worker")
    assert sweep.capped_jobs(2, 10) == (2, None)
    assert sweep.capped_jobs(8, 10, 0.5) == (5, "2.5 GiB of memory available, about 0.5 GiB per worker")
    monkeypatch.setenv(WORKER_MEMORY_ENV, "0.5")
    assert sweep.worker_memory_gib() == 0.5
    monkeypatch.setenv(WORKER_MEMORY_ENV, "lots")
    with pytest.raises(UserError, match="STOCHGRAD_BENCH_WORKER_MEMORY_GIB must be a positive number of GiB"):
        sweep.run_sweep([], tmp_path / "never.db")
    assert not (tmp_path / "never.db").exists()
    monkeypatch.delenv(WORKER_MEMORY_ENV)
    monkeypatch.setattr(sweep, "available_memory", lambda: 2**29)
    configs = [harness.make_config("reinforce", {}, "bernoulli-target", {"d": 2}, seed, 500) for seed in (0, 1)]
    status, _ = sweep.run_sweep(configs, tmp_path / "results.db", jobs=4, quiet=True)
    assert status == 0
    assert capsys.readouterr().err.splitlines() == [
        "warning: --jobs 4 capped at 1 (2 run(s) to do; 0.5 GiB of memory available, about 1 GiB per worker)"]


def test_workers_that_die_while_starting_are_one_line_error(tmp_path):
    """A plugin that kills every worker process on import: after three such deaths, one line, exit 2."""
    plugin = tmp_path / "deadly_plugin.py"
    plugin.write_text("import multiprocessing, os\n\nif multiprocessing.parent_process() is not None:\n"
                      "    os._exit(5)\n")
    result = run_cli("run", "--plugin", plugin, "--estimators", "reinforce", *TINY, "--seeds", "0,1",
                     "--jobs", "2", "--db", tmp_path / "results.db", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: worker processes die while starting (worker died: exit code 5); try --jobs 1"]


# -- a run's own KeyboardInterrupt in-process, and Ctrl-C ----------------------------------------------
class _Interrupting(Estimator):
    """Raises KeyboardInterrupt itself, or sends this process SIGINT (a real Ctrl-C)."""

    def __init__(self, signal_it: bool = False):
        super().__init__()
        self.signal_it = signal_it

    def forward(self, logits, loss_fn):
        if self.signal_it:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        raise KeyboardInterrupt


@pytest.fixture
def interrupting(monkeypatch):
    import estimators

    estimators.ESTIMATORS.ensure_loaded()
    monkeypatch.setattr(estimators.ESTIMATORS, "_entries", dict(estimators.ESTIMATORS._entries))
    estimators.register_estimator("test-interrupting", "test only")(_Interrupting)


def test_in_process_a_runs_keyboard_interrupt_fails_it_and_ctrl_c_still_stops(interrupting, tmp_path, one_thread):
    """Registered only in this process, the estimator cannot be rebuilt by a worker: the sweep runs
    in-process, where its own KeyboardInterrupt is a failed run and the sweep goes on, while a
    SIGINT to the process stops the sweep (finished runs stored)."""
    configs = [harness.make_config(name, params, "bernoulli-target", {"d": 2}, 0, 500)
               for name, params in (("test-interrupting", {}), ("reinforce", {}))]
    assert not sweep.rebuildable(configs, [])
    db = tmp_path / "r.db"
    assert sweep.run_sweep(configs, db, quiet=True)[0] == 1
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT estimator, coalesce(error, status) FROM runs"))
    assert rows == {"test-interrupting": "KeyboardInterrupt raised by the run", "reinforce": "finished"}
    stopped = [harness.make_config("reinforce", {}, "bernoulli-target", {"d": 2}, 1, 500),
               harness.make_config("test-interrupting", {"signal_it": True}, "bernoulli-target", {"d": 2}, 0, 500)]
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(stopped, tmp_path / "s.db", quiet=True)
    with sqlite3.connect(tmp_path / "s.db") as con:
        assert con.execute("SELECT seed, status FROM runs").fetchall() == [(1, "finished")]


# -- hangs and leftovers -----------------------------------------------------------------------------------
def test_a_plugin_whose_import_blocks_in_the_workers_is_bounded_by_the_run_timeout(tmp_path):
    plugin = tmp_path / "blocking_plugin.py"
    plugin.write_text("import multiprocessing, time\n\nif multiprocessing.parent_process() is not None:\n"
                      "    time.sleep(300)\n")
    result = run_cli("run", "--plugin", plugin, "--estimators", "reinforce", *TINY, "--run-timeout", "3",
                     "--db", tmp_path / "results.db", cwd=tmp_path, timeout=2 * PROGRESS_TIMEOUT_S)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: loading the plugins (") and "took longer than the run time limit of 3 s" in line


def test_processes_a_run_starts_end_with_its_timeout(plugin):
    result = run_cli(*fault_sweep(plugin, "spawn|none", "--run-timeout", "3"), cwd=plugin.parent,
                     timeout=2 * PROGRESS_TIMEOUT_S)
    assert result.returncode == 1, result.stderr
    assert by_action(plugin.parent / "results.db") == {"spawn": [("failed", "timed out after 3 s")],
                                                        "none": [("finished", None)]}
    spawned = {int(path.name.split("-")[1]) for path in plugin.parent.glob("child-*")}
    assert spawned
    assert_gone(spawned)


# -- memory caps from the control group --------------------------------------------------------------------
def fake_cgroup(root: Path, version: int, limit: str, usage: int, cache: int = 0) -> Path:
    """A /sys/fs/cgroup tree and a /proc/self/cgroup file naming this process's group in it."""
    if version == 2:
        group = root / "user.slice" / "job"
        group.mkdir(parents=True)
        (group / "memory.max").write_text(limit + "\n")
        (group / "memory.current").write_text(f"{usage}\n")
        (group / "memory.stat").write_text(f"anon 1\ninactive_file {cache}\n")
        (root / "user.slice" / "memory.max").write_text("max\n")
        (root / "user.slice" / "memory.current").write_text("1\n")
        membership = "0::/user.slice/job\n"
    else:  # v1 in a container: the group's path does not exist under the mount, its root is read
        (root / "memory").mkdir(parents=True)
        (root / "memory" / "memory.limit_in_bytes").write_text(limit + "\n")
        (root / "memory" / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (root / "memory" / "memory.stat").write_text(f"total_inactive_file {cache}\n")
        membership = "4:memory:/process_api/abc\n3:cpuset:/\n"
    path = root.parent / f"cgroup-{version}"
    path.write_text(membership)
    return path


@pytest.mark.parametrize("version", [1, 2])
def test_the_memory_cap_reads_the_control_groups_limit(tmp_path, monkeypatch, version):
    root = tmp_path / f"v{version}" / "cgroup"
    membership = fake_cgroup(root, version, str(3 * 2**30), 2**30, cache=2**28)
    assert sweep.cgroup_available(root, membership) == 2 * 2**30 + 2**28  # limit - usage + reclaimable cache
    unlimited = tmp_path / f"u{version}" / "cgroup"
    assert sweep.cgroup_available(unlimited, fake_cgroup(unlimited, version, "max" if version == 2 else str(2**63 - 4096),
                                                         2**30)) is None
    # a 3 GB group on a host with much more free: --jobs 16 runs 2 workers of 1 GiB
    monkeypatch.delenv(WORKER_MEMORY_ENV)
    monkeypatch.setattr(sweep, "cgroup_available", lambda: 2 * 2**30 + 2**28)
    assert sweep.available_memory() == 2 * 2**30 + 2**28
    assert sweep.capped_jobs(16, 100) == (2, "2.2 GiB of memory available, about 1 GiB per worker")


def test_a_run_timeout_beyond_what_poll_takes_is_fine(monkeypatch, one_thread):
    """--run-timeout above about 24.9 days (2^31 ms) overflowed the wait for workers."""
    from bench import workers

    waits, real_wait = [], workers.multiprocessing.connection.wait

    def wait(objects, timeout=None):
        waits.append(timeout)
        return real_wait(objects, timeout)

    monkeypatch.setattr(workers.multiprocessing.connection, "wait", wait)
    config = harness.make_config("reinforce", {}, "bernoulli-target", {"d": 2}, 0, 500)
    with workers.Pool(1, [], timeout=3e6, threads=1) as pool:  # about 35 days
        (result,) = pool.results([config])
    assert result.status == "finished", result.error
    assert any(w is not None for w in waits) and all(w is None or w <= workers.MAX_WAIT_S for w in waits)
