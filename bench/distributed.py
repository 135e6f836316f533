"""Runs a sweep's configs on a Dask cluster: an existing one (``--scheduler ADDRESS``) or a local
one started for the sweep (``--dask-workers N``).

Workers only compute: each returns its :class:`harness.RunResult` and the driver, the process that
runs the command, stays the only writer of the SQLite store (``sweep.run_sweep`` saves each result
as it arrives). SQLite's locking is not reliable over network file systems, so a store shared by
workers on several machines could be corrupted; one writer keeps it whole.

Each Dask worker runs its configs in a worker process of its own (:class:`bench.workers.Pool`), so
a run that kills its process (``os._exit``, a signal, the OOM killer) or outlives ``--run-timeout``
fails alone, after RETRIES more tries, and the Dask worker and the runs queued on it live on. On
the driver every result is gathered under guard: a run whose result was lost with a worker (or
whose Dask worker died RETRIES + 1 times) is submitted again or, after that, stored failed with a
reason in words; the driver gives up, in one line, after STALL_S with no run finished and none in
progress. Dask is imported lazily, so this module loads without the ``[distributed]`` extra.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from bench import harness, workers
from bench.checkpoints import RunFiles
from bench.errors import UserError
from problems.datasets import ENV_VAR

# Extra attempts for a config whose worker process died (on its Dask worker), whose Dask worker
# died (scheduler ``allowed-failures`` of a local cluster), whose result was lost or whose task raised
# outside the harness (``retries=``), before the config is stored failed.
RETRIES = 2
CONNECT_TIMEOUT_S = 30
INSTALL_HINT = "pip install 'stochgrad-bench[distributed]'"
TASK_PREFIX = "stochgrad-run"
GATHER_TIMEOUT_S = 60  # fetching one finished result from its worker
POLL_S = 1.0  # how often the driver looks for progress while no result arrives
STALL_S = 300.0  # no run finished and none in progress on the cluster this long: give up in one line


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
    if scheduler is not None:  # before anything is written (the store is created next)
        _connect(scheduler).close()
    return {"scheduler": scheduler, "dask_workers": workers}


# -- on the worker --------------------------------------------------------------------------------
_here = threading.local()  # this executor thread's worker process (a Pool of one) and its settings


def _pool_here(plugins: tuple[str, ...], threads: int, timeout: float | None, data_dir: str | None,
               where: str, files: RunFiles | None = None) -> workers.Pool:
    """The worker process of this Dask executor thread, kept across tasks while the settings hold
    (started by this thread, it dies with it); ``files``: the driver's checkpoint and kept-model
    directories, which the worker process inherits through its environment."""
    files = files or RunFiles()
    settings = (plugins, threads, timeout, data_dir, where, files)
    pool = getattr(_here, "pool", None)
    if pool is not None and _here.settings != settings:
        pool.close()
        pool = None
    if pool is None:
        if data_dir is not None:
            os.environ[ENV_VAR] = data_dir  # the worker process inherits it
        with files.exported():
            pool = workers.Pool(1, plugins, timeout, threads, load_error_prefix=f"{where}: ")
        _here.pool, _here.settings = pool, settings
    return pool


def _run_isolated(config: harness.RunConfig, pool: workers.Pool, where: str) -> harness.RunResult:
    """Run ``config`` in ``pool``'s worker process, again (RETRIES more times) when the process died;
    a worker process that cannot start or load the plugins fails the run with that message."""
    started, began = harness.now(), time.perf_counter()
    for attempt in range(1, RETRIES + 2):
        try:
            ((result, died),) = list(pool.events([config]))
        except UserError as exc:
            return workers.failed_result(config, f"{where}: {exc}", started, began)
        if not died or attempt > RETRIES:
            break
    if died:
        result.error = f"{result.error} ({attempt} tries, {where})"
    return result


def run_on_worker(config: harness.RunConfig, plugins: tuple[tuple[str, str], ...], data_dir: str | None,
                  threads: int | None, timeout: float | None = None,
                  files: RunFiles | None = None) -> harness.RunResult:
    """One run on a Dask worker, in a worker process of its own, with where it ran in its notes; a
    plugin that does not load there gives a ``failed`` run with this worker's message. ``files``:
    the driver's checkpoint and kept-model directories (a training run resumes where a worker that
    sees them left off)."""
    import torch
    from distributed import get_worker

    worker = get_worker()
    targets = tuple(str(Path(worker.local_directory) / name) if kind == "file" else name for kind, name in plugins)
    where = f"on worker {worker.address}"
    pool = _pool_here(targets, threads or torch.get_num_threads(), timeout, data_dir, where, files)
    with _host_slot() as counts:
        result = _run_isolated(config, pool, where)
    result.notes.update({"worker": worker.address, "host": socket.gethostname(), "host_runs": max(counts),
                         "worker_device": harness.device_description(config.device)})
    return result


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


# -- on the driver --------------------------------------------------------------------------------
def local_cluster(workers: int, gpu: bool = False, dashboard_address: str | None = ":8787"):
    """A cluster of ``workers`` single-threaded processes on this machine, each advertising one
    GPU resource when ``gpu`` (they share the machine's GPUs, like ``--jobs``)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": RETRIES}), _ctrl_c_ignored():
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=dashboard_address, resources={"GPU": 1} if gpu else None,
                            silence_logs=logging.ERROR)  # not a slow worker's shut-down warnings


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Processes started inside ignore Ctrl-C (the disposition survives exec): Ctrl-C in a terminal
    reaches the whole process group, and the cluster's processes printed tracebacks; the driver
    stops them itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def resources(config: harness.RunConfig) -> dict[str, int] | None:
    """Worker resources a run needs: a GPU run only goes to a worker started with GPU=1."""
    return {"GPU": 1} if config.device.startswith("cuda") else None


def _connect(scheduler: str):
    """A client of the scheduler at ``scheduler``; a one-line UserError when it cannot be reached."""
    from distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, ValueError, TypeError) as exc:  # refused, timed out, malformed address
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {' '.join(str(exc).split())}") from None


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None, gpu: bool, quiet: bool):
    """(client, torch threads per run or None to keep the workers' own setting)."""
    from distributed import Client

    cluster = None
    if scheduler is not None:
        client = _connect(scheduler)
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


def _reason(exc: BaseException) -> str:
    """A Dask failure in words: KilledWorker's message names a task key and worker internals."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return "its Dask worker processes died while holding it, as many times as the scheduler allows"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failed(config: harness.RunConfig, submitted: str, reason: str) -> harness.RunResult:
    return harness.RunResult(config, "failed", [], {}, submitted, harness.now(), 0.0, f"not run on Dask: {reason}")


def _gather(future) -> tuple[harness.RunResult | None, str]:
    """The run's result, or (None, why not): its data lost with a worker, its task cancelled or
    erred on the cluster. Never raises for a future of ours."""
    from distributed import TimeoutError as DaskTimeout

    status = future.status
    if status == "finished":
        try:
            return future.result(timeout=GATHER_TIMEOUT_S), ""
        except (Exception, asyncio.CancelledError) as exc:  # lost with its worker, cancelled, timed out
            return None, "its result was lost" if not isinstance(exc, DaskTimeout) else "gathering it timed out"
    if status == "error":
        try:
            exc = future.exception(timeout=GATHER_TIMEOUT_S)
        except (Exception, asyncio.CancelledError) as error:
            exc = error
        return None, _reason(exc)
    return None, f"its Dask task ended {status} (scheduler restarted or connection lost)"


def results(configs: Sequence[harness.RunConfig], plugins: Sequence[str] = (), scheduler: str | None = None,
            workers: int | None = None, quiet: bool = False, threads: int | None = None,
            timeout: float | None = None) -> Iterator[harness.RunResult]:
    """Results as they finish (like ``sweep._results``), one for every config. A run whose result
    did not come back (lost with its worker, cancelled, KilledWorker) is submitted again, up to
    RETRIES times, then stored failed with the reason in words. With no run finished and none in
    progress on the cluster for STALL_S, a one-line UserError. Stopping early (Ctrl-C, or the
    caller closing the generator) cancels what has not finished. ``threads``: torch threads per
    run (None: the cluster's own choice, see :func:`_client`); ``timeout``: the run time limit."""
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
        resubmitted: dict[str, int] = {}

        def submit(config: harness.RunConfig):
            attempt = resubmitted.get(config.key, 0)
            return client.submit(run_on_worker, config, shipped, data_dir, threads, timeout, files, pure=False,
                                 key=f"{TASK_PREFIX}-{config.key[:16]}-{token}-{attempt}", retries=RETRIES,
                                 resources=resources(config))

        futures = {submit(config): config for config in configs}
        progress = time.monotonic()
        try:
            completed = as_completed(list(futures))
            while futures:
                batch = completed.next_batch(block=False)
                if not batch:
                    with completed.thread_condition:
                        completed.thread_condition.wait(POLL_S)
                    if time.monotonic() - progress > POLL_S and _in_progress(client, futures):
                        progress = time.monotonic()
                    elif time.monotonic() - progress > STALL_S:
                        raise UserError(f"the Dask cluster made no progress for {STALL_S:g} s ({len(futures)} run(s) "
                                        "waiting, none running: are its workers alive?); finished runs are stored "
                                        "and the same command resumes")
                    continue
                progress = time.monotonic()
                for future in batch:
                    config = futures.pop(future, None)
                    if config is None:
                        continue
                    result, why = _gather(future)
                    future.release()
                    if result is not None:
                        yield result
                    elif resubmitted.get(config.key, 0) < RETRIES:
                        resubmitted[config.key] = resubmitted.get(config.key, 0) + 1
                        again = submit(config)
                        futures[again] = config
                        completed.add(again)
                    else:
                        yield _failed(config, submitted, why)
        finally:
            client.cancel(list(futures))


def _in_progress(client, futures) -> bool:
    """Whether a task of ours is being processed by some worker (a long run is progress too)."""
    keys = {future.key for future in futures}
    try:
        return any(keys.intersection(held) for held in client.processing().values())
    except Exception:  # noqa: BLE001 (a scheduler that does not answer is no progress)
        return False
