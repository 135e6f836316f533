"""Runs a list of configs into the results store, on worker processes (local ones, or a Dask
cluster's) or, for configs only this process can build, in-process.

Each finished run is saved (one transaction) as soon as it returns, so an interrupted sweep keeps
what it finished and the same command resumes; a run already finished in the store is skipped
unless ``force``. A run that kills its process or outlives ``run_timeout`` fails alone
(:mod:`bench.workers`).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

import torch

import estimators
import problems
from bench import distributed, harness
from bench.checkpoints import RunFiles
from bench.errors import Stopped, UserError
from bench.specs import MAX_GRID, parse_spec_list
from bench.store import DEFAULT_DB, Store
from bench.workers import (Pool, death_reason, failed_result, load_plugins, rebuildable,  # noqa: F401 (public here)
                           run_guarded)

WORKER_MEMORY_GIB = 1.0  # per-worker estimate for capping --jobs: ~0.35 GB with torch loaded + a run
WORKER_MEMORY_ENV = "STOCHGRAD_BENCH_WORKER_MEMORY_GIB"  # overrides it (big runs: more; tests: less)
MAX_THREADS = 2**31 - 1  # torch.set_num_threads takes a C int
# What a sweep runs when not told otherwise, from the command line and from Python alike. Problems
# chosen by benchmarks/discrimination.py (README "The default problems"): logits of mixed signs away
# from 0, where no two different estimators coincide.
DEFAULT_PROBLEMS = "bernoulli-target(d=4,t=0.45,logit=0.5,spread=2.0),bernoulli-quadratic(d=6),bernoulli-blackbox(d=8)"
DEFAULT_SAMPLES = 100_000
DEFAULT_THREADS = 1  # torch threads per process; measured: see README "Performance"


def _expand(specs: str | Sequence[str], registry) -> list[tuple[str, dict]]:
    """'all', comma-separated specs ``name(key=value,...)`` or a list of them, each name checked
    against ``registry`` (a RegistryError with close matches when unknown)."""
    text = specs if isinstance(specs, str) else ",".join(specs)
    if text.strip() == "all":
        return [(name, {}) for name in registry.names()]
    parsed = parse_spec_list(text)
    for name, _ in parsed:
        registry.entry(name)
    return parsed


def plan_sweep(estimator_specs: str | Sequence[str], problem_specs: str | Sequence[str], seeds: Sequence[int],
               samples: int, device: str = "cpu", warmup: int = harness.DEFAULT_WARMUP) -> list[harness.RunConfig]:
    """Every run of estimators x problems x seeds, validated, defaults filled in, duplicates dropped;
    raises on a user error (unknown name, bad parameter, a grid over MAX_GRID runs)."""
    estimator_list = _expand(estimator_specs, estimators.ESTIMATORS)
    problem_list = _expand(problem_specs, problems.PROBLEMS)
    size = len(estimator_list) * len(problem_list) * len(seeds)
    if size > MAX_GRID:
        raise UserError(f"the sweep has {size:,} runs ({len(estimator_list)} estimator specs x {len(problem_list)} "
                        f"problem specs x {len(seeds)} seeds), more than the limit of {MAX_GRID:,}; split it")
    configs = [harness.make_config(estimator, estimator_params, problem, problem_params, seed, samples, device, warmup)
               for problem, problem_params in problem_list for estimator, estimator_params in estimator_list
               for seed in seeds]
    return list({c.key: c for c in configs}.values())


def open_store(db: Path | None, create: bool = True) -> Store:
    """The given store, or the default one (whose directory is created on first use)."""
    if db is None:
        DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
        db = DEFAULT_DB
    return Store(db, create=create)


def available_memory() -> int | None:
    """Bytes of memory available to new processes, None if unknown: the host's MemAvailable on
    Linux, or less where this process's control group (a container, a batch job's allocation)
    limits it to less (see :func:`cgroup_available`)."""
    host = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = None
    limited = cgroup_available()
    if limited is None:
        return host
    return limited if host is None else min(host, limited)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _inactive_file(stat: Path, field: str) -> int:
    """Reclaimable page cache in a memory.stat file (the kernel frees it before the OOM killer acts)."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == field and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


NO_LIMIT = 2**60  # cgroup v1 reports "no limit" as a number near 2^63


def cgroup_available(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes this process's memory control group (v2, or v1's memory controller) and its ancestors
    still allow (limit - usage + reclaimable cache, the smallest over the hierarchy); None where no
    limit applies or none can be read. Inside a container the group's path may not exist under the
    mount (the container sees its own group as the root): the mount's root is read then."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        if controllers == "":  # v2: limit in memory.max, usage in memory.current
            base, limit_name, usage_name, cache = root, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            base, limit_name, usage_name, cache = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", \
                "total_inactive_file"
        else:
            continue
        folder = base / group.lstrip("/")
        if not (folder / usage_name).exists():
            folder = base
        while True:
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            if limit is not None and limit < NO_LIMIT and usage is not None:
                found.append(max(0, limit - usage + _inactive_file(folder / "memory.stat", cache)))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(found) if found else None


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


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[None]:
    """In the main thread with Python's default Ctrl-C handler, Ctrl-C raises :class:`Stopped`, so
    a KeyboardInterrupt a run raises itself is told apart from the user's (in-process runs)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _results(configs: Sequence[harness.RunConfig], jobs: int, plugins: Sequence[str],
             timeout: float | None = None, threads: int | None = None) -> Iterator[harness.RunResult]:
    """Results as they finish, from worker processes, so that a run that kills its process or
    hangs fails alone (``--jobs 1`` included). In-process, in order, only for configs a worker
    could not rebuild (:func:`rebuildable`). ``threads``: torch threads per process (None:
    in-process unchanged, workers cores // jobs)."""
    if jobs <= 1 and timeout is None and not rebuildable(configs, plugins):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            with _stop_on_signal():
                for config in configs:
                    yield run_guarded(config)
        finally:
            torch.set_num_threads(previous)
        return
    with Pool(jobs, plugins, timeout, threads) as pool:
        yield from pool.results(configs)


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
    if threads is not None and threads > MAX_THREADS:
        raise UserError(f"--threads {threads} is more than torch takes (at most {MAX_THREADS})")
    with open_store(db) as store:
        done = set() if force else store.finished_keys(c.key for c in configs)
        todo = [c for c in configs if c.key not in done]
        versions, revision = harness.environment(), harness.git_revision()
        description = harness.device_description(configs[0].device) if configs else ""
        if done and not quiet:
            print(f"{len(configs) - len(todo)} of {len(configs)} runs already in {store.path}; "
                  "not recomputed (use --force)", file=sys.stderr)
        dask = scheduler is not None or bool(dask_workers)
        if scheduler is not None:  # the cluster's machines and memory are not ours to measure
            workers, why = jobs, None
        else:
            workers, why = capped_jobs(dask_workers or jobs, len(todo), per_worker_gib)
        if why:
            flag = "--dask-workers" if dask_workers else "--jobs"
            print(f"warning: {flag} {dask_workers or jobs} capped at {workers} ({why})", file=sys.stderr)
            if dask_workers:
                dask_workers = workers
        failed = 0
        bar = tqdm(total=len(todo), unit="run", disable=True if quiet else None, file=sys.stderr)
        files = RunFiles.for_store(store.path, keep_models)
        files.discard_finished(done)  # left behind by a command stopped between saving a run and this
        source = (distributed.results(todo, plugins, scheduler, dask_workers, quiet, threads, run_timeout) if dask
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
