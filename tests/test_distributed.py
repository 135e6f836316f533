"""Sweeps on a Dask cluster (127.0.0.1 only): the same numbers as in-process, plugins and the data
directory reaching the workers, a worker killed mid-run, the driver killed or interrupted, and GPU
runs that no worker can take refused instead of waiting forever."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bench import distributed as dask_sweep
from bench import harness, sweep
from benchcli.cli import main
from bench.errors import UserError
from bench.store import MACHINE_DEPENDENT_SUFFIXES
from conftest import cli_command, cli_env
from problems.datasets import ENV_VAR

DASK = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not DASK, reason="dask.distributed is not installed "
                                                 "(pip install 'stochgrad-bench[distributed]')")

ESTIMATORS = ("reinforce", "reinforce-ma", "straight-through", "arm")
PROBLEMS = (("bernoulli-target", {"d": 3}), ("bernoulli-quadratic", {"d": 4}))
MACHINE_DEPENDENT = MACHINE_DEPENDENT_SUFFIXES  # times and memory: not compared

PROBE_PLUGIN = '''
"""Test estimators: REINFORCE that sleeps once per run (after writing its pid), one that reports
the data directory it sees, and one that kills its own process."""
import os
import time

import torch

from estimators import register_estimator
from estimators.base import Estimator, attach_gradient


class Reinforce(Estimator):
    needs_loss_backprop = False

    def forward(self, logits, loss_fn):
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        return attach_gradient(loss, logits, (h - probs) * loss.detach().unsqueeze(-1))


@register_estimator("probe-sleepy")
class Sleepy(Reinforce):
    """REINFORCE, after writing this process's pid to pid_file and sleeping once."""

    def __init__(self, seconds: float = 0.0, pid_file: str = ""):
        super().__init__()
        self.seconds, self.pid_file, self.slept = seconds, pid_file, False

    def forward(self, logits, loss_fn):
        if not self.slept:
            self.slept = True
            if self.pid_file:
                with open(self.pid_file, "a") as handle:
                    handle.write(f"{os.getpid()}\\n")
            time.sleep(self.seconds)
        return super().forward(logits, loss_fn)


@register_estimator("probe-env")
class Env(Reinforce):
    """Fails with the data directory it sees."""

    def forward(self, logits, loss_fn):
        raise RuntimeError(f"data dir is {os.environ.get('STOCHGRAD_BENCH_DATA')}")


@register_estimator("probe-exit")
class Exit(Reinforce):
    """Kills the process running it."""

    def forward(self, logits, loss_fn):
        os._exit(3)
'''
WORKER_ONLY_FAILURE = '''
import multiprocessing

if multiprocessing.current_process().name != "MainProcess":
    raise RuntimeError("this plugin explodes on workers")

import torch

from estimators import register_estimator
from estimators.base import Estimator, attach_gradient


@register_estimator("probe-driver-only")
class DriverOnly(Estimator):
    """REINFORCE, loadable only outside Dask's worker processes."""

    needs_loss_backprop = False

    def forward(self, logits, loss_fn):
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        return attach_gradient(loss, logits, (h - probs) * loss.detach().unsqueeze(-1))
'''


def toy_configs(samples: int = 500, seeds=(0, 1, 2)) -> list[harness.RunConfig]:
    """4 estimators x 2 problems x 3 seeds = 24 runs."""
    return [harness.make_config(e, {}, p, params, seed, samples, "cpu", 100)
            for p, params in PROBLEMS for e in ESTIMATORS for seed in seeds]


def stored(db: Path) -> dict[str, tuple]:
    """config key -> (status, error, notes, {(scope, metric, epoch, step): (value, stderr)})."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        con.execute("BEGIN")  # one snapshot for both queries, while the sweep writes
        runs = {key: (status, error, notes, {}) for key, status, error, notes in
                con.execute("SELECT config_key, status, error, notes FROM runs")}
        assert len(runs) == con.execute("SELECT count(*) FROM runs").fetchone()[0]
        for key, scope, metric, epoch, step, value, stderr in con.execute(
                "SELECT r.config_key, m.scope, m.metric, m.epoch, m.step, m.value, m.stderr"
                " FROM metrics m JOIN runs r USING (run_id)"):
            runs[key][3][(scope, metric, epoch, step)] = (value, stderr)
        return runs
    except sqlite3.OperationalError as exc:  # created, schema not yet committed
        if "no such table" in str(exc):
            return {}
        raise
    finally:
        con.close()


def complete(row: tuple) -> bool:
    """A stored gradient run with its moments, its exactness test and its timing."""
    return {"variance", "bias_norm", "unbiased_pvalue", "time_per_estimate_s"} <= {key[1] for key in row[3]}


def numbers(runs: dict[str, tuple]) -> dict[str, dict]:
    return {key: {k: v for k, v in row[3].items() if not k[1].endswith(MACHINE_DEPENDENT)} for key, row in runs.items()}


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on 127.0.0.1, shared by this module's tests."""
    if not DASK:
        pytest.skip("dask.distributed is not installed")
    local = dask_sweep.local_cluster(2, dashboard_address=":0")
    yield local
    local.close()


@pytest.fixture
def probe(tmp_path) -> Path:
    """The probe plugin file, loaded into this process's registries like ``--plugin`` does."""
    path = tmp_path / "probe_plugin.py"
    path.write_text(textwrap.dedent(PROBE_PLUGIN))
    assert sweep.load_plugins([str(path)]) == []
    return path


def probe_config(name: str, seed: int = 0, **params) -> harness.RunConfig:
    return harness.make_config(name, params, "bernoulli-target", {"d": 3}, seed, 500, "cpu", 100)


@needs_dask
def test_same_numbers_as_in_process_and_where_each_run_ran(cluster, tmp_path, one_thread):
    configs = toy_configs()
    assert len(configs) == 24
    here, there = tmp_path / "here.db", tmp_path / "there.db"
    assert sweep.run_sweep(configs, here, quiet=True)[0] == 0
    assert sweep.run_sweep(configs, there, quiet=True, scheduler=cluster.scheduler_address)[0] == 0
    local, remote = stored(here), stored(there)
    assert set(remote) == {c.key for c in configs}
    assert numbers(remote) == numbers(local)
    workers = set(cluster.scheduler_info["workers"])
    for _, _, notes, _ in remote.values():
        notes = json.loads(notes)
        assert notes["worker"] in workers and notes["host"] and notes["host_runs"] >= 1
        assert notes["worker_device"].startswith("cpu")
    # resume: nothing left to do, nothing rewritten
    assert sweep.run_sweep(configs, there, quiet=True, scheduler=cluster.scheduler_address)[0] == 0
    assert stored(there) == remote


@needs_dask
def test_runs_sharing_the_host_are_counted(cluster, tmp_path, probe):
    configs = [probe_config("probe-sleepy", seed, seconds=6.0) for seed in (0, 1)]
    assert sweep.run_sweep(configs, tmp_path / "r.db", quiet=True, plugins=[str(probe)],
                           scheduler=cluster.scheduler_address)[0] == 0
    notes = [json.loads(row[2]) for row in stored(tmp_path / "r.db").values()]
    assert len({n["worker"] for n in notes}) == 2 and [n["host_runs"] for n in notes] == [2, 2]


@needs_dask
def test_plugins_and_data_dir_reach_the_workers(cluster, tmp_path, probe, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "data"))  # after the workers started: sent, not inherited
    configs = [probe_config("probe-sleepy"), probe_config("probe-env")]
    db = tmp_path / "r.db"
    assert sweep.run_sweep(configs, db, quiet=True, plugins=[str(probe)], scheduler=cluster.scheduler_address)[0] == 1
    runs = stored(db)
    assert runs[configs[0].key][0] == "finished"
    assert runs[configs[1].key][:2] == ("failed", f"RuntimeError: data dir is {tmp_path / 'data'}")


@needs_dask
def test_plugin_that_fails_on_the_workers_fails_its_runs_with_their_message(cluster, tmp_path):
    broken = tmp_path / "worker_only_failure.py"
    broken.write_text(WORKER_ONLY_FAILURE)
    module_dir = tmp_path / "driver_only"  # a module plugin importable here, not on the workers
    module_dir.mkdir()
    (module_dir / "probe_driver_module.py").write_text("import estimators  # registers nothing\n")
    sys.path.insert(0, str(module_dir))
    try:
        assert sweep.load_plugins([str(broken), "probe_driver_module"]) == []
        config = harness.make_config("probe-driver-only", {}, "bernoulli-target", {"d": 3}, 0, 500, "cpu", 100)
        for plugins, message in (([str(broken)], "this plugin explodes on workers"),
                                 (["probe_driver_module"], "No module named 'probe_driver_module'")):
            db = tmp_path / f"{len(message)}.db"
            began = time.monotonic()
            status, _ = sweep.run_sweep([config], db, quiet=True, plugins=plugins, scheduler=cluster.scheduler_address)
            assert status == 1 and time.monotonic() - began < 180  # a worker process starts: slow on a loaded machine
            (row,) = stored(db).values()
            assert row[0] == "failed" and row[1].startswith("on worker tcp://127.0.0.1:") and message in row[1]
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("probe_driver_module", None)


@needs_dask
def test_worker_killed_mid_run_every_config_once(cluster, tmp_path, probe):
    """The killed run is retried on a live worker; every config comes back exactly once."""
    pid_file = tmp_path / "pids"
    victim = probe_config("probe-sleepy", seconds=2.0, pid_file=str(pid_file))
    configs = [victim] + toy_configs(seeds=(0,))[:5]
    results: list[harness.RunResult] = []
    thread = threading.Thread(target=lambda: results.extend(
        dask_sweep.results(configs, [str(probe)], scheduler=cluster.scheduler_address, quiet=True)))
    thread.start()
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline and thread.is_alive(), "the victim never started"
        time.sleep(0.02)
    killed = int(pid_file.read_text().split()[0])
    os.kill(killed, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    assert sorted(r.config.key for r in results) == sorted(c.key for c in configs)
    (mine,) = [r for r in results if r.config == victim]
    assert mine.status == "finished" or (mine.status == "failed" and mine.error), (mine.status, mine.error)
    if mine.status == "finished":  # it ran again, in another process
        assert int(pid_file.read_text().split()[-1]) != killed


@needs_dask
def test_run_that_always_kills_its_worker_is_stored_failed_once(cluster, tmp_path, probe):
    """Its worker process dies on every try; the Dask worker holding it lives on."""
    config = probe_config("probe-exit")
    db = tmp_path / "r.db"
    workers = set(cluster.scheduler_info["workers"])
    assert sweep.run_sweep([config], db, quiet=True, plugins=[str(probe)], scheduler=cluster.scheduler_address)[0] == 1
    (row,) = stored(db).values()
    assert row[0] == "failed"
    assert re.fullmatch(rf"worker died: exit code 3 \({dask_sweep.RETRIES + 1} tries, on worker tcp://127\.0\.0\.1:\d+\)",
                        row[1]), row[1]
    assert set(cluster.scheduler_info["workers"]) == workers


CRASH_PLUGIN = '''
"""A REINFORCE that ends the process running it, or raises what ends a Dask worker's thread."""
import os
import signal

import torch

from estimators import register_estimator
from estimators.base import Estimator, attach_gradient


class Stop(BaseException):
    """Not an Exception: a run raising it must still fail alone."""


@register_estimator("crash")
class Crash(Estimator):
    needs_loss_backprop = False

    def __init__(self, action: str = "none"):
        super().__init__()
        self.action = action

    def forward(self, logits, loss_fn):
        if self.action == "exit":
            os._exit(7)
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.action == "interrupt":
            raise KeyboardInterrupt
        if self.action == "base":
            raise Stop("a BaseException subclass")
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        return attach_gradient(loss, logits, (h - probs) * loss.detach().unsqueeze(-1))
'''
GOOD = ("reinforce", "reinforce-ma", "reinforce-loo", "arm", "disarm", "straight-through", "straight-through-sigmoid",
        "gumbel-softmax", "sts", "crash")
BAD_SWEEP = ("--problems", "bernoulli-target(d=3),bernoulli-quadratic(d=4)", "--seeds", "0", "--warmup", "100")
REASON = r"worker died: {} \(3 tries, on worker tcp://127\.0\.0\.1:\d+\)"


@pytest.mark.slow
@needs_dask
def test_runs_that_kill_their_process_fail_alone_in_a_dask_sweep(tmp_path):
    """24 configs, 4 of which end the process running them, on 2 Dask workers: the 20 good runs
    are stored finished (once they were stored 'lost' or never stored), the 4 bad ones failed with
    the reason in words, no traceback."""
    plugin = tmp_path / "crash_plugin.py"
    plugin.write_text(CRASH_PLUGIN)
    db = tmp_path / "r.db"
    estimators = ",".join([*GOOD, "crash(action=exit)", "crash(action=kill)"])
    result = subprocess.run(cli_command("run", "--plugin", plugin, "--estimators", estimators, *BAD_SWEEP,
                                        "--samples", "2000", "--quiet", "--dask-workers", "2", "--db", db),
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "KilledWorker" not in result.stderr, result.stderr
    rows = list(stored(db).values())
    assert len(rows) == 24
    finished = [row for row in rows if row[0] == "finished"]
    failed = sorted(row[1] for row in rows if row[0] == "failed")
    assert len(finished) == 20 and all(complete(row) for row in finished)
    assert len(failed) == 4
    assert all(re.fullmatch(REASON.format("exit code 7"), reason) for reason in failed[:2]), failed
    assert all(re.fullmatch(REASON.format(r"killed by SIGKILL \(out of memory\?\)"), reason) for reason in failed[2:]), failed


@needs_dask
def test_a_runs_own_interrupt_or_base_exception_fails_it_alone_on_dask(cluster, tmp_path):
    plugin = tmp_path / "crash_plugin.py"
    plugin.write_text(CRASH_PLUGIN)
    assert sweep.load_plugins([str(plugin)]) == []
    configs = [probe_config("crash", action=action) for action in ("interrupt", "base", "none")]
    db = tmp_path / "r.db"
    workers = set(cluster.scheduler_info["workers"])
    assert sweep.run_sweep(configs, db, quiet=True, plugins=[str(plugin)], scheduler=cluster.scheduler_address)[0] == 1
    runs = stored(db)
    assert [runs[c.key][:2] for c in configs] == [
        ("failed", "KeyboardInterrupt raised by the run"),
        ("failed", "Stop raised by the run: a BaseException subclass"), ("finished", None)]
    assert set(cluster.scheduler_info["workers"]) == workers


@needs_dask
def test_a_result_lost_before_it_is_gathered_is_computed_again(tmp_path, monkeypatch):
    """The first gather of each result fails as if its worker died holding it: each run is
    submitted again and stored once, finished; none is stored 'lost' or raises out of result()."""
    calls: list[str] = []
    real = dask_sweep._gather

    def losing(future):
        if future.key.endswith("-0"):
            calls.append(future.key)
            return None, "its result was lost"
        return real(future)

    monkeypatch.setattr(dask_sweep, "_gather", losing)
    configs = toy_configs(seeds=(0,))[:3]
    db = tmp_path / "r.db"
    local = dask_sweep.local_cluster(1, dashboard_address=":0")
    try:
        assert sweep.run_sweep(configs, db, quiet=True, scheduler=local.scheduler_address)[0] == 0
    finally:
        local.close()
    assert len(calls) == 3
    assert {key: row[0] for key, row in stored(db).items()} == {c.key: "finished" for c in configs}


@needs_dask
def test_a_cluster_with_no_worker_is_given_up_on_in_one_line(tmp_path, monkeypatch):
    from distributed import LocalCluster

    monkeypatch.setattr(dask_sweep, "STALL_S", 3.0)
    empty = LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0")
    db = tmp_path / "r.db"
    try:
        began = time.monotonic()
        with pytest.raises(UserError, match=r"made no progress for 3 s \(1 run\(s\) waiting, none running"):
            sweep.run_sweep(toy_configs(seeds=(0,))[:1], db, quiet=True, scheduler=empty.scheduler_address)
        assert time.monotonic() - began < 60
    finally:
        empty.close()
    assert stored(db) == {}


@needs_dask
def test_gpu_runs_without_a_gpu_worker_are_refused_not_left_waiting(cluster, tmp_path):
    config = harness.RunConfig("reinforce", {}, "bernoulli-target", {"d": 3, "t": 0.45, "logit": 0.0}, 0, 500,
                               "cuda", 100)
    assert dask_sweep.resources(config) == {"GPU": 1} and dask_sweep.resources(toy_configs()[0]) is None
    with pytest.raises(UserError, match="no worker of the Dask cluster .* has a GPU resource"):
        sweep.run_sweep([config], tmp_path / "r.db", quiet=True, scheduler=cluster.scheduler_address)
    assert stored(tmp_path / "r.db") == {}


# -- the command line --------------------------------------------------------------------------------
SWEEP = ("run", "--estimators", ",".join(ESTIMATORS), "--problems", "bernoulli-target(d=3),bernoulli-quadratic(d=4)",
         "--seeds", "0,1,2", "--samples", "1000000", "--warmup", "100", "--dask-workers", "2")
# 1,000,000 samples: the 24 runs take about 4 s on two workers, so the sweep is surely still running when
# it is stopped (at 20,000 they were all done 0.3 s after the first started)


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C's default disposition, as in a terminal. A test run started in
    the background by a shell without job control inherits SIGINT ignored, and a Python started with
    SIGINT ignored keeps ignoring it (no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_and_stop(db: Path, cwd: Path, after_runs: int, sig: int, group: bool = False) -> subprocess.Popen:
    """Start the sweep, wait for ``after_runs`` stored runs, send ``sig`` (to its whole process group
    if ``group``, as Ctrl-C in a terminal does); its worker processes end too."""
    import psutil

    process = subprocess.Popen(cli_command(*SWEEP, "--quiet", "--db", db), cwd=cwd, env=cli_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint, start_new_session=group)
    try:
        deadline = time.monotonic() + 180
        while len(stored(db) if db.exists() else {}) < after_runs:
            assert process.poll() is None, f"the sweep ended before it was stopped: {process.stderr.read()}"
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.02)
        children = psutil.Process(process.pid).children(recursive=True)
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"worker processes outlived the driver: {alive}"
    return process


def test_without_dask_the_options_say_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=3)", "--samples", "10",
                 "--dask-workers", "2", "--db", str(tmp_path / "r.db")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --dask-workers needs dask.distributed: pip install 'stochgrad-bench[distributed]'\n"
    assert not (tmp_path / "r.db").exists()


@needs_dask
@pytest.mark.parametrize("args, message", [
    (("--jobs", "2", "--dask-workers", "2"), "--jobs and --dask-workers exclude each other"),
    (("--scheduler", "tcp://127.0.0.1:9", "--dask-workers", "2"), "not allowed with argument"),
    (("--dask-workers", "0"), "must be a positive integer"),
    (("--scheduler", "tcp://127.0.0.1:9"), "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
])
def test_option_mistakes_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(dask_sweep, "CONNECT_TIMEOUT_S", 2)
    assert main(["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=3)", "--samples", "10",
                 "--quiet", "--db", str(tmp_path / "r.db"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "r.db").exists()  # an unreachable scheduler is found before the store is made


@needs_dask
def test_paper_sends_its_runs_to_the_scheduler_and_leaves_the_data_to_the_workers(tmp_path, capsys, monkeypatch):
    """No MNIST here is no reason to stop: the cluster's workers may have it."""
    monkeypatch.setattr(dask_sweep, "CONNECT_TIMEOUT_S", 2)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nothing"))
    assert main(["paper", "--quick", "--quiet", "--data-dir", str(tmp_path / "on-the-workers"),
                 "--scheduler", "tcp://127.0.0.1:9", "--db", str(tmp_path / "r.db")]) == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert main(["paper", "--quick", "--jobs", "2", "--dask-workers", "2", "--db", str(tmp_path / "r.db")]) == 2
    assert "--jobs and --dask-workers exclude each other" in capsys.readouterr().err


@pytest.mark.slow
@needs_dask
def test_driver_killed_then_the_same_command_resumes(tmp_path):
    db = tmp_path / "r.db"
    start_and_stop(db, tmp_path, 4, signal.SIGKILL)
    kept = stored(db)
    assert 4 <= len(kept) < 24 and all(row[0] == "finished" for row in kept.values())
    result = subprocess.run(cli_command(*SWEEP, "--db", db), cwd=tmp_path, env=cli_env(), capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert f"{len(kept)} of 24 runs already in" in result.stderr
    runs = stored(db)
    assert len(runs) == 24 and all(row[0] == "finished" for row in runs.values())
    assert all(runs[key] == row for key, row in kept.items()), "a run stored before the kill was changed"
    assert all(complete(row) for row in runs.values())


@pytest.mark.slow
@needs_dask
def test_ctrl_c_cancels_and_leaves_the_store_consistent(tmp_path):
    db = tmp_path / "r.db"
    process = start_and_stop(db, tmp_path, 2, signal.SIGINT, group=True)
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr
    assert "interrupted; finished runs are stored" in stderr
    assert "Traceback" not in stderr, stderr  # the cluster's processes ignore Ctrl-C; the driver stops them
    runs = stored(db)
    assert 2 <= len(runs) < 24 and all(row[0] == "finished" for row in runs.values())
    assert all(complete(row) for row in runs.values())
