"""Worker processes that run configs and survive them: each worker is one process with its own
pipe, so a worker that dies (a crash, the OOM killer, ``os._exit`` in a plugin) or outlives the
run time limit fails exactly the run it held; it is replaced and the sweep goes on. Used by local
sweeps (``--jobs N``, and ``--jobs 1``) and inside each Dask worker, whose own process then never
dies with a run.

The pool is our own rather than ``concurrent.futures``: that pool breaks as a whole when one
worker dies and cannot say which config killed it. Workers die with their parent (a parent-death
signal on Linux, and a thread watching the parent's pid), and each is the leader of its own
process group, so the processes a run starts end with it.
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
from typing import Any, Iterator, Sequence

import torch

import estimators
import problems
from bench import harness
from bench.errors import Stopped, UserError
from estimators.registry import BUILTIN, load_plugin

STARTUP_FAILURES = 3  # workers in a row that die before they are ready: give up
STOP_GRACE_S = 2.0  # an idle worker asked to exit gets this long before SIGKILL
_PR_SET_PDEATHSIG = 1
MAX_WAIT_S = 86_400.0  # one wait for workers at most (poll() takes at most 2^31 ms, about 24.9 days)
_LOADING, _READY, _DIED = "loading", "ready", "died"


def load_plugins(targets: Sequence[str]) -> list[str]:
    """Load ``--plugin`` targets into the registries; returns the errors of those that failed."""
    errors = []
    for target in targets:
        error = load_plugin(target, (estimators.ESTIMATORS, problems.PROBLEMS))
        if error:
            errors.append(error)
    return errors


def run_guarded(config: harness.RunConfig) -> harness.RunResult:
    """``harness.run``, with whatever a run raises past the harness recorded as a failed run:
    ``SystemExit``, a ``KeyboardInterrupt`` the run raised itself, any other ``BaseException``.
    A signal to this process (:class:`bench.errors.Stopped`) still stops the sweep."""
    started, began = harness.now(), time.perf_counter()
    try:
        return harness.run(config)
    except Stopped:
        raise
    except SystemExit as exc:
        return failed_result(config, f"SystemExit: the run called exit({exc.code!r})", started, began)
    except BaseException as exc:  # noqa: B036 (a plugin's KeyboardInterrupt or BaseException subclass)
        detail = " ".join(str(exc).split())
        return failed_result(config, f"{type(exc).__name__} raised by the run" + (f": {detail}" if detail else ""),
                             started, began)


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
def _kill_group(*_) -> None:
    """End this worker and every process a run started in it (they share its process group; if it
    could not lead a group of its own, it ends alone rather than take its parent's group down)."""
    if os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Exit, with the processes a run started, when the parent process does: a parent-death
    signal (SIGTERM, handled by killing the group) where Linux offers one, and a thread that
    watches the parent's pid everywhere (also covers a parent gone before prctl, and a main
    thread busy in C code when the signal comes)."""
    signal.signal(signal.SIGTERM, _kill_group)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        _kill_group()

    if os.getppid() != parent:
        _kill_group()
    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _worker_main(conn, plugins: Sequence[str], threads: int, parent: int) -> None:
    """Say it started, load the plugins, say ready (with their load errors), then run each config
    received until None or the pipe closes. Its own process group: a run's child processes end
    with it."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; a KeyboardInterrupt here is a run's own
    conn.send(_LOADING)
    torch.set_num_threads(threads)
    conn.send((_READY, load_plugins(plugins)))
    while True:
        try:
            config = conn.recv()
        except EOFError:
            return
        if config is None:
            return
        conn.send(run_guarded(config))


# -- parent side -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let a daemonic process (a Dask worker) start a worker process: multiprocessing refuses by
    default so that daemons leave no orphans, which ours cannot be (they die with their parent)."""
    config = multiprocessing.current_process()._config
    daemonic = config.get("daemon", False)
    config["daemon"] = False
    try:
        yield
    finally:
        if daemonic:
            config["daemon"] = daemonic


class _Worker:
    """One worker process, the parent's end of its pipe, and the run it holds (if any)."""

    def __init__(self, context, plugins: Sequence[str], threads: int):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, tuple(plugins), threads, os.getpid()),
                                       daemon=True, name="bench-worker")
        with _children_allowed():
            self.process.start()
        child.close()
        self.ready = False
        self.load_errors: list[str] = []
        self.config: harness.RunConfig | None = None
        self.started, self.began, self.deadline = "", 0.0, math.inf

    def give(self, config: harness.RunConfig, timeout: float | None) -> None:
        self.conn.send(config)
        self.config, self.started, self.began = config, harness.now(), time.perf_counter()
        self.deadline = time.monotonic() + timeout if timeout else math.inf

    def fail(self, error: str) -> harness.RunResult:
        """The failed result of the run this worker held (it died or was killed)."""
        return failed_result(self.config, error, self.started, self.began)

    def receive(self, ready: list) -> Any:
        """The message waiting from this worker; _DIED if its pipe closed or its process ended
        (a result sent just before dying is still read); None if nothing came."""
        if self.conn not in ready and self.process.sentinel not in ready:
            return None
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        self.process.join(STOP_GRACE_S)
        return _DIED

    def kill(self) -> None:
        """SIGKILL to the worker's process group: the worker and whatever its run started."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (OSError, TypeError):  # not its own group yet (still starting), or already gone
            with contextlib.suppress(OSError):
                self.process.kill()


def _stop(workers: Sequence[_Worker], kill: bool = False) -> None:
    """Ask idle workers to exit and kill busy ones (all of them if ``kill``), together, then
    kill any still alive after STOP_GRACE_S; returns once all are gone."""
    for worker in workers:
        if worker.process.is_alive():
            try:
                if worker.config is None and not kill:
                    worker.conn.send(None)
                else:
                    worker.kill()
            except OSError:
                worker.kill()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.kill()
            worker.process.join()
        worker.conn.close()


class Pool:
    """``jobs`` worker processes (``threads`` torch threads each, default cores // jobs) that run
    configs and survive them: a worker that dies or outlives ``timeout`` fails the run it held and
    is replaced. Close it (or use it as a context manager) to stop the workers; between sweeps
    they stay loaded (a Dask worker keeps one for all its tasks)."""

    def __init__(self, jobs: int, plugins: Sequence[str], timeout: float | None = None, threads: int | None = None,
                 load_error_prefix: str | None = None):
        self.jobs, self.plugins, self.timeout = jobs, tuple(plugins), timeout
        self.load_error_prefix = load_error_prefix  # if set, a plugin that does not load fails every run with
        # this prefix and its error (else the runs go on: the parent reported it and builds what it can)
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.context = multiprocessing.get_context("spawn")  # torch is not fork-safe once threads exist
        self.workers: list[_Worker] = []

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        _stop(self.workers)
        self.workers = []

    def _start(self) -> _Worker:
        return _Worker(self.context, self.plugins, self.threads)

    def events(self, configs: Sequence[harness.RunConfig]) -> Iterator[tuple[harness.RunResult, bool]]:
        """(result, whether its worker died) as runs finish, for every config; an exception (a
        stop, a worker that cannot start) kills the workers holding runs, the others stay."""
        pending = deque(configs)
        while len(self.workers) < self.jobs:
            self.workers.append(self._start())
        workers, startup_deaths = self.workers, 0
        try:
            while pending or any(w.config is not None for w in workers):
                for worker in workers:
                    while worker.ready and worker.config is None and pending and self.load_error_prefix is not None \
                            and worker.load_errors:
                        yield failed_result(pending.popleft(), f"{self.load_error_prefix}{worker.load_errors[0]}",
                                            harness.now(), time.perf_counter()), False
                    if worker.ready and worker.config is None and pending:
                        worker.give(pending.popleft(), self.timeout)
                if not pending and all(w.config is None for w in workers):
                    break
                deadline = min(w.deadline for w in workers)
                wait_s = None if deadline == math.inf else min(MAX_WAIT_S, max(0.0, deadline - time.monotonic()))
                ready = multiprocessing.connection.wait(
                    [w.conn for w in workers] + [w.process.sentinel for w in workers], wait_s)
                for i, worker in enumerate(workers):
                    message = worker.receive(ready)
                    if message == _LOADING:  # its own imports are done; the plugins' count as run time
                        worker.deadline = time.monotonic() + self.timeout if self.timeout else math.inf
                    elif isinstance(message, tuple) and message[:1] == (_READY,):
                        worker.ready, worker.load_errors, worker.deadline, startup_deaths = True, message[1], math.inf, 0
                    elif isinstance(message, harness.RunResult):
                        worker.config, worker.deadline = None, math.inf
                        yield message, False
                    elif message == _DIED or time.monotonic() >= worker.deadline:
                        died = message == _DIED
                        error = death_reason(worker.process.exitcode) if died else f"timed out after {self.timeout:g} s"
                        busy = worker.config is not None
                        _stop([worker], kill=True)
                        workers[i] = self._start()
                        if not worker.ready:
                            if not died:
                                raise UserError(f"loading the plugins ({', '.join(self.plugins)}) in a worker process "
                                                f"took longer than the run time limit of {self.timeout:g} s; "
                                                "does importing them block?")
                            startup_deaths += 1
                            if startup_deaths >= STARTUP_FAILURES:
                                raise UserError(f"worker processes die while starting ({error}); "
                                                "try --jobs 1" if self.jobs > 1 else
                                                f"worker processes die while starting ({error})")
                        if busy:
                            yield worker.fail(error), died
        except BaseException:
            busy = [w for w in workers if w.config is not None or not w.ready]
            _stop(busy, kill=True)
            self.workers = [w for w in workers if w not in busy]
            raise

    def results(self, configs: Sequence[harness.RunConfig]) -> Iterator[harness.RunResult]:
        for result, _ in self.events(configs):
            yield result


def rebuildable(configs: Sequence[harness.RunConfig], plugins: Sequence[str]) -> bool:
    """Whether a fresh process can build every config's estimator and problem: each is built in,
    from an installed entry point, or from one of ``plugins`` (not a class registered only in
    this process, by a notebook or a test)."""
    allowed = {f"file {Path(p)}" if p.endswith(".py") else f"module {p}" for p in plugins}
    for config in configs:
        for registry, name in ((estimators.ESTIMATORS, config.estimator), (problems.PROBLEMS, config.problem)):
            try:
                source = registry.entry(name).source
            except Exception:  # noqa: BLE001 (unknown here: let the worker report it)
                continue
            if not (source == BUILTIN or source.startswith("entry point ") or source in allowed):
                return False
    return True
