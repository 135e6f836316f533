"""Runs a sweep's configs on a Dask cluster: an existing one (``--scheduler ADDRESS``) or a local
one started for the sweep (``--dask-workers N``).

Workers only compute: each returns its :class:`harness.RunResult` and the driver, the process that
runs the command, stays the only writer of the SQLite store (``sweep.run_sweep`` saves each result
as it arrives). SQLite's locking is not reliable over network file systems, so a store shared by
workers on several machines could be corrupted; one writer keeps it whole.

A worker that dies while running a config has the config retried (a bounded count), then recorded
``failed`` with the reason; every submitted config yields exactly one result. Dask is imported
lazily, so this module loads without the ``[distributed]`` extra.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import estimators
import problems
from bench import harness
from bench.checkpoints import RunFiles
from bench.errors import UserError
from estimators.registry import load_plugin
from problems.datasets import ENV_VAR

# Extra attempts for a config whose worker died (scheduler ``allowed-failures`` of a local cluster)
# or whose task raised outside the harness (``retries=``), before the config is stored failed.
RETRIES = 2
CONNECT_TIMEOUT_S = 30
INSTALL_HINT = "pip install 'stochgrad-bench[distributed]'"
TASK_PREFIX = "stochgrad-run"


# -- command-line options -------------------------------------------------------------------------
def add_options(parser) -> None:
    """``--scheduler`` and ``--dask-workers`` for a command that runs a sweep."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (needs the [distributed] extra)")
    group.add_argument("--dask-workers", metavar="N", type=_workers, default=None,
                       help="run on a local Dask cluster of N worker processes (dashboard, retries)")


def _workers(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def sweep_options(args) -> dict:
    """The executor arguments of ``sweep.run_sweep``, checked: Dask installed, not mixed with --jobs."""
    scheduler, workers = args.scheduler, args.dask_workers
    if scheduler is None and workers is None:
        return {}
    flag = "--scheduler" if scheduler is not None else "--dask-workers"
    if getattr(args, "jobs", 1) > 1:
        raise UserError(f"--jobs and {flag} exclude each other (Dask workers replace local worker processes)")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError(f"{flag} needs dask.distributed: {INSTALL_HINT}") from None
    return {"scheduler": scheduler, "dask_workers": workers}


# -- on the worker --------------------------------------------------------------------------------
_loaded: dict[str, str | None] = {}  # plugin (uploaded file name or module) -> load error or None
_loading = threading.Lock()


def _load_plugins_here(plugins: Sequence[tuple[str, str]], directory: str) -> str | None:
    """Load the sweep's plugins into this worker's registries once; the first error, if any."""
    with _loading:
        for kind, name in plugins:
            if name not in _loaded:
                target = str(Path(directory) / name) if kind == "file" else name
                _loaded[name] = load_plugin(target, (estimators.ESTIMATORS, problems.PROBLEMS))
            if _loaded[name]:
                return _loaded[name]
    return None


def _running_folder() -> Path:
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"stochgrad-bench-running-{user}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _count_running(folder: Path) -> int:
    """Dask runs in progress on this host: one marker file each; those of dead processes are removed."""
    count = 0
    for marker in folder.glob("*-*"):
        pid = marker.name.split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            count += 1
        else:
            marker.unlink(missing_ok=True)
    return count


HOST_POLL_S = 0.25  # how often a run counts the runs beside it (a shorter one nested inside can be missed)


@contextlib.contextmanager
def _host_slot() -> Iterator[list[int]]:
    """Mark one run in progress on this host; yields the counts of runs in progress seen at its
    start, every HOST_POLL_S while it runs, and at its end (a run that starts and ends inside
    this one is seen by the polling, not by the two ends)."""
    import threading

    folder = _running_folder()
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{os.getpid()}-{uuid.uuid4().hex}"
    marker.touch()
    counts = [_count_running(folder)]
    done = threading.Event()

    def poll() -> None:
        while not done.wait(HOST_POLL_S):
            counts.append(_count_running(folder))

    watcher = threading.Thread(target=poll, daemon=True, name="bench-host-runs")
    watcher.start()
    try:
        yield counts
    finally:
        done.set()
        watcher.join()
        counts.append(_count_running(folder))
        marker.unlink(missing_ok=True)


def run_on_worker(config: harness.RunConfig, plugins: tuple[tuple[str, str], ...], data_dir: str | None,
                  threads: int | None, files: RunFiles | None = None) -> harness.RunResult:
    """One run on a Dask worker, with where it ran in its notes; a plugin that does not load here
    gives a ``failed`` run with this worker's message. ``files``: the driver's checkpoint and
    kept-model directories (a training run resumes where a worker that sees them left off)."""
    import torch
    from distributed import get_worker

    worker = get_worker()
    if data_dir is not None:
        os.environ[ENV_VAR] = data_dir
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    with _host_slot() as counts:
        started, began = harness.now(), time.perf_counter()
        error = _load_plugins_here(plugins, worker.local_directory)
        if error:
            result = harness.RunResult(config, "failed", [], {}, started, harness.now(),
                                       time.perf_counter() - began, f"on worker {worker.address}: {error}")
        else:
            result = harness.run(config, files=files or RunFiles())
    result.notes.update({"worker": worker.address, "host": socket.gethostname(), "host_runs": max(counts),
                         "worker_device": harness.device_description(config.device)})
    return result


# -- on the driver --------------------------------------------------------------------------------
def local_cluster(workers: int, gpu: bool = False, dashboard_address: str | None = ":8787"):
    """A cluster of ``workers`` single-threaded processes on this machine, each advertising one
    GPU resource when ``gpu`` (they share the machine's GPUs, like ``--jobs``)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": RETRIES}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=dashboard_address, resources={"GPU": 1} if gpu else None,
                            silence_logs=logging.ERROR)  # not a slow worker's shut-down warnings


def resources(config: harness.RunConfig) -> dict[str, int] | None:
    """Worker resources a run needs: a GPU run only goes to a worker started with GPU=1."""
    return {"GPU": 1} if config.device.startswith("cuda") else None


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None, gpu: bool, quiet: bool):
    """(client, torch threads per run or None to keep the workers' own setting)."""
    from distributed import Client

    cluster = None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, ValueError, TypeError) as exc:  # refused, timed out, malformed address
            raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {' '.join(str(exc).split())}") from None
        threads = None
    else:
        cluster = local_cluster(workers, gpu)
        client = Client(cluster)
        threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        if not quiet:
            print(f"dask: scheduler {client.scheduler.address}, {len(client.scheduler_info()['workers'])} "
                  f"worker(s), dashboard {client.dashboard_link}", file=sys.stderr)
        yield client, threads
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check_gpu_workers(client, scheduler: str | None) -> None:
    """A GPU run on a cluster whose workers all lack a GPU resource would wait forever: refuse it.
    A cluster with no workers yet (an adaptive one still scaling up) is given the benefit of the doubt."""
    found = client.scheduler_info()["workers"].values()
    if found and not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in found):
        raise UserError(f"--device cuda: no worker of the Dask cluster at {scheduler} has a GPU resource; "
                        "start GPU workers with: dask worker ADDRESS --resources GPU=1")


def _ship_plugins(client, plugins: Sequence[str], folder: Path) -> tuple[tuple[str, str], ...]:
    """Upload plugin files (under a name unique to their content, so an edited file is reloaded);
    modules are imported by name on each worker."""
    shipped = []
    for target in plugins:
        if target.endswith(".py"):
            path = Path(target)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            copy = folder / f"stochgrad_plugin_{digest}_{path.name}"
            shutil.copyfile(path, copy)
            client.upload_file(str(copy), load=False)
            shipped.append(("file", copy.name))
        else:
            shipped.append(("module", target))
    return tuple(shipped)


def _lost(config: harness.RunConfig, future, submitted: str) -> harness.RunResult:
    """The failed run of a future that did not return a result (its workers died, or it was cancelled)."""
    if future.status == "error":
        exc = future.exception()
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    else:
        reason = f"the Dask task ended {future.status} (scheduler restarted or connection lost)"
    return harness.RunResult(config, "failed", [], {}, submitted, harness.now(), 0.0, f"not run on Dask: {reason}")


def results(configs: Sequence[harness.RunConfig], plugins: Sequence[str] = (), scheduler: str | None = None,
            workers: int | None = None, quiet: bool = False,
            threads: int | None = None) -> Iterator[harness.RunResult]:
    """Results as they finish (like ``sweep._results``), one for every config. Stopping early
    (Ctrl-C, or the caller closing the generator) cancels what has not finished. ``threads``:
    torch threads per run (None: the cluster's own choice, see :func:`_client`)."""
    if not configs:
        return
    from distributed import as_completed

    gpu = any(resources(c) for c in configs)
    data_dir = os.environ.get(ENV_VAR)
    files = RunFiles.from_environment()
    with _client(scheduler, workers, gpu, quiet) as (client, cluster_threads), \
            tempfile.TemporaryDirectory(prefix="stochgrad-plugins-") as folder:
        if gpu:
            _check_gpu_workers(client, scheduler or client.scheduler.address)
        shipped = _ship_plugins(client, plugins, Path(folder))
        threads = threads or cluster_threads
        token, submitted = uuid.uuid4().hex[:8], harness.now()
        futures = {client.submit(run_on_worker, config, shipped, data_dir, threads, files, pure=False,
                                 key=f"{TASK_PREFIX}-{config.key[:16]}-{token}", retries=RETRIES,
                                 resources=resources(config)): config for config in configs}
        try:
            for future in as_completed(futures):
                if future.status == "finished":
                    yield future.result()
                else:
                    yield _lost(futures[future], future, submitted)
        finally:
            client.cancel(list(futures))
