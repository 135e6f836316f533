"""Runs a list of configs into the results store, in-process or on local worker processes.

Each finished run is saved (one transaction) as soon as it returns, so an interrupted sweep keeps
what it finished and the same command resumes; a run already finished in the store is skipped
unless ``force``.

The worker pool is our own rather than ``concurrent.futures``: that pool breaks as a whole when one
worker dies and cannot say which config killed it. Here each worker is one process with its own
pipe, so a worker that dies (a crash, the OOM killer, ``os._exit`` in a plugin) or outlives
``run_timeout`` fails exactly the run it held; it is replaced and the sweep goes on. Workers die
with the parent (parent-death signal on Linux, and a thread watching the parent's pid).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import torch

import estimators
import problems
from bench import distributed, harness
from bench.checkpoints import RunFiles
from bench.errors import UserError
from bench.store import DEFAULT_DB, Store
from estimators.registry import load_plugin

WORKER_MEMORY_GIB = 1.0  # per-worker estimate for capping --jobs: ~0.35 GB with torch loaded + a run
WORKER_MEMORY_ENV = "STOCHGRAD_BENCH_WORKER_MEMORY_GIB"  # overrides it (big runs: more; tests: less)
STARTUP_FAILURES = 3  # workers in a row that die before they are ready: give up
STOP_GRACE_S = 2.0  # a terminated worker gets this long before SIGKILL
_PR_SET_PDEATHSIG = 1
_READY = "ready"


def open_store(db: Path | None, create: bool = True) -> Store:
    """The given store, or the default one (whose directory is created on first use)."""
    if db is None:
        DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
        db = DEFAULT_DB
    return Store(db, create=create)


def load_plugins(targets: Sequence[str]) -> list[str]:
    """Load ``--plugin`` targets into the registries; returns the errors of those that failed."""
    errors = []
    for target in targets:
        error = load_plugin(target, (estimators.ESTIMATORS, problems.PROBLEMS))
        if error:
            errors.append(error)
    return errors


def available_memory() -> int | None:
    """Bytes of memory available to new processes (MemAvailable on Linux), None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def worker_memory_gib() -> float:
    """The per-worker memory estimate: $STOCHGRAD_BENCH_WORKER_MEMORY_GIB, else WORKER_MEMORY_GIB."""
    text = os.environ.get(WORKER_MEMORY_ENV)
    if text is None:
        return WORKER_MEMORY_GIB
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{WORKER_MEMORY_ENV} must be a positive number of GiB, got {text!r}")
    return value


def capped_jobs(jobs: int, runs: int, per_worker_gib: float = WORKER_MEMORY_GIB) -> tuple[int, str | None]:
    """``jobs`` capped at the number of runs and at available memory / ``per_worker_gib``;
    returns (jobs, why it was capped, or None)."""
    capped, reasons = jobs, []
    if capped > max(1, runs):
        capped = max(1, runs)
        reasons.append(f"{runs} run(s) to do")
    memory, per_worker = available_memory(), per_worker_gib
    if memory is not None and capped > 1 and capped * per_worker * 2**30 > memory:
        capped = max(1, min(capped, int(memory // (per_worker * 2**30))))
        reasons.append(f"{memory / 2**30:.1f} GiB of memory available, about {per_worker:g} GiB per worker")
    return capped, "; ".join(reasons) or None


def run_guarded(config: harness.RunConfig) -> harness.RunResult:
    """``harness.run``, with a ``SystemExit`` raised inside the run recorded as a failed run."""
    started, began = harness.now(), time.perf_counter()
    try:
        return harness.run(config)
    except SystemExit as exc:
        return failed_result(config, f"SystemExit: the run called exit({exc.code!r})", started, began)


def failed_result(config: harness.RunConfig, error: str, started: str, began: float) -> harness.RunResult:
    return harness.RunResult(config, "failed", [], {}, started, harness.now(), time.perf_counter() - began, error)


def death_reason(exitcode: int | None) -> str:
    """Why a worker process ended, from its exit code (negative: killed by that signal)."""
    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker died: killed by {name}" + (" (out of memory?)" if -exitcode == signal.SIGKILL else "")
    return f"worker died: exit code {exitcode}"


# -- worker side -----------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Exit when the parent process does: a parent-death signal where Linux offers one, and a
    thread that watches the parent's pid everywhere (also covers a parent gone before prctl)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _worker_main(conn, plugins: Sequence[str], threads: int, parent: int) -> None:
    """Load the plugins, say ready, then run each config received until None or the pipe closes."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    torch.set_num_threads(threads)
    load_plugins(plugins)
    conn.send(_READY)
    while True:
        try:
            config = conn.recv()
        except EOFError:
            return
        if config is None:
            return
        conn.send(run_guarded(config))


# -- parent side -----------------------------------------------------------------------------------
class _Worker:
    """One worker process, the parent's end of its pipe, and the run it holds (if any)."""

    def __init__(self, context, plugins: Sequence[str], threads: int):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, tuple(plugins), threads, os.getpid()),
                                       daemon=True, name="bench-worker")
        self.process.start()
        child.close()
        self.ready = False
        self.config: harness.RunConfig | None = None
        self.started, self.began, self.deadline = "", 0.0, math.inf

    def give(self, config: harness.RunConfig, timeout: float | None) -> None:
        self.conn.send(config)
        self.config, self.started, self.began = config, harness.now(), time.perf_counter()
        self.deadline = time.monotonic() + timeout if timeout else math.inf

    def fail(self, error: str) -> harness.RunResult:
        """The failed result of the run this worker held (it died or was killed)."""
        return failed_result(self.config, error, self.started, self.began)



def _stop(workers: Sequence[_Worker], kill: bool = False) -> None:
    """Ask idle workers to exit and terminate busy ones (all of them if ``kill``), together, then
    SIGKILL any still alive after STOP_GRACE_S; returns once all are gone."""
    for worker in workers:
        if worker.process.is_alive():
            try:
                if worker.config is None and not kill:
                    worker.conn.send(None)
                else:
                    worker.process.terminate()
            except OSError:
                worker.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def _pool_results(configs: Sequence[harness.RunConfig], jobs: int, plugins: Sequence[str],
                  timeout: float | None, threads: int | None = None) -> Iterator[harness.RunResult]:
    """Results as they finish, from ``jobs`` worker processes (``threads`` torch threads each,
    default cores // jobs); a worker that dies or times out yields a failed result for the run it
    held and is replaced."""
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # torch is not fork-safe once threads exist
    pending = deque(configs)
    workers = [_Worker(context, plugins, threads) for _ in range(jobs)]
    startup_deaths = 0
    try:
        while pending or any(w.config is not None for w in workers):
            for worker in workers:
                if worker.ready and worker.config is None and pending:
                    worker.give(pending.popleft(), timeout)
            deadline = min(w.deadline for w in workers)
            wait_s = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait(
                [w.conn for w in workers] + [w.process.sentinel for w in workers], wait_s)
            for i, worker in enumerate(workers):
                message, died = None, False
                if worker.conn in ready or worker.process.sentinel in ready:
                    try:  # a result sent just before dying is still read
                        message = worker.conn.recv() if worker.conn.poll() else None
                    except (EOFError, OSError):
                        message = None
                    if message is None:  # its pipe closed or its process ended
                        worker.process.join(STOP_GRACE_S)
                        died = True
                if message == _READY:
                    worker.ready, startup_deaths = True, 0
                elif message is not None:
                    worker.config, worker.deadline = None, math.inf
                    yield message
                elif died or time.monotonic() >= worker.deadline:
                    error = death_reason(worker.process.exitcode) if died else f"timed out after {timeout:g} s"
                    busy = worker.config is not None
                    _stop([worker], kill=True)
                    if not worker.ready:
                        startup_deaths += 1
                        if startup_deaths >= STARTUP_FAILURES:
                            raise UserError(f"worker processes die while starting ({error}); "
                                            "try --jobs 1")
                    workers[i] = _Worker(context, plugins, threads)
                    if busy:
                        yield worker.fail(error)
    finally:
        _stop(workers)


def _results(configs: Sequence[harness.RunConfig], jobs: int, plugins: Sequence[str],
             timeout: float | None = None, threads: int | None = None) -> Iterator[harness.RunResult]:
    """Results as they finish: in order in-process, in completion order with worker processes.
    A run time limit needs a process that can be killed, so it always uses workers. ``threads``:
    torch threads per process (None: in-process unchanged, workers cores // jobs)."""
    if jobs <= 1 and timeout is None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            for config in configs:
                yield run_guarded(config)
        finally:
            torch.set_num_threads(previous)
        return
    yield from _pool_results(configs, jobs, plugins, timeout, threads)


def run_sweep(configs: Sequence[harness.RunConfig], db: Path | None = None, jobs: int = 1,
              force: bool = False, quiet: bool = False, plugins: Sequence[str] = (),
              threads: int | None = None, run_timeout: float | None = None, scheduler: str | None = None,
              dask_workers: int | None = None, keep_models: Path | None = None) -> tuple[int, Path]:
    """Run ``configs`` into the store; returns (exit status: 1 if any run failed, store path).

    ``jobs`` is capped at the number of runs to do and at what memory allows (a one-line warning
    says so); a run longer than ``run_timeout`` seconds is killed and stored as failed.
    ``threads``: torch intra-op threads per process (None: cores // jobs in workers, unchanged
    in-process); each run records the count it had in its notes. With ``scheduler`` (an address)
    or ``dask_workers`` the runs go to a Dask cluster (:mod:`bench.distributed`); this process
    still saves every result. Training runs checkpoint beside the store and resume from there
    (:mod:`bench.checkpoints`; a run's checkpoint goes once the run is stored); ``keep_models``: a
    directory where each training run keeps its final model."""
    from tqdm.auto import tqdm

    per_worker_gib = worker_memory_gib()
    with open_store(db) as store:
        done = set() if force else store.finished_keys(c.key for c in configs)
        todo = [c for c in configs if c.key not in done]
        versions, revision = harness.environment(), harness.git_revision()
        description = harness.device_description(configs[0].device) if configs else ""
        if done and not quiet:
            print(f"{len(configs) - len(todo)} of {len(configs)} runs already in {store.path}; "
                  "not recomputed (use --force)", file=sys.stderr)
        dask = scheduler is not None or bool(dask_workers)
        if dask and run_timeout is not None:
            raise UserError("--run-timeout applies to local workers; a Dask cluster has its own limits "
                            "(leave out --scheduler/--dask-workers or --run-timeout)")
        workers, why = (jobs, None) if dask else capped_jobs(jobs, len(todo), per_worker_gib)
        if why:
            print(f"warning: --jobs {jobs} capped at {workers} ({why})", file=sys.stderr)
        failed = 0
        bar = tqdm(total=len(todo), unit="run", disable=True if quiet else None, file=sys.stderr)
        files = RunFiles.for_store(store.path, keep_models)
        files.discard_finished(done)  # left behind by a command stopped between saving a run and this
        source = (distributed.results(todo, plugins, scheduler, dask_workers, quiet, threads) if dask
                  else _results(todo, workers, plugins, run_timeout, threads))
        with files.exported(), contextlib.closing(source) as results:  # stops workers
            for result in results:
                config = result.config
                store.save(result, versions, revision, description)
                files.discard(result)
                if result.status == "failed":
                    failed += 1
                    bar.write(f"failed: {config.estimator_spec} on {config.problem_spec} seed {config.seed}: "
                              f"{result.error}", file=sys.stderr)
                bar.set_description(f"{config.estimator} on {config.problem} seed {config.seed}")
                bar.update(1)
        bar.close()
        return (1 if failed else 0), store.path
