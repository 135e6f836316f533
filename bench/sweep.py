"""Runs a list of configs into the results store, in-process or on local worker processes.

Each finished run is saved (one transaction) as soon as it returns, so an interrupted sweep keeps
what it finished and the same command resumes; a run already finished in the store is skipped
unless ``force``.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch

import estimators
import problems
from bench import distributed, harness
from bench.store import DEFAULT_DB, Store
from estimators.registry import load_plugin


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


def _start_worker(plugins: Sequence[str], threads: int) -> None:
    torch.set_num_threads(threads)
    load_plugins(plugins)


def _results(configs: Sequence[harness.RunConfig], jobs: int, plugins: Sequence[str],
             threads: int | None = None) -> Iterator[harness.RunResult]:
    """Results as they finish: in order in-process, in completion order with worker processes.
    ``threads``: torch threads per process (None: in-process unchanged, workers cores // jobs)."""
    if jobs <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            for config in configs:
                yield harness.run(config)
        finally:
            torch.set_num_threads(previous)
        return
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # torch is not fork-safe once threads exist
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                                initargs=(tuple(plugins), threads)) as pool:
        futures = [pool.submit(harness.run, config) for config in configs]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def run_sweep(configs: Sequence[harness.RunConfig], db: Path | None = None, jobs: int = 1,
              force: bool = False, quiet: bool = False, plugins: Sequence[str] = (),
              threads: int | None = None, scheduler: str | None = None,
              dask_workers: int | None = None) -> tuple[int, Path]:
    """Run ``configs`` into the store; returns (exit status: 1 if any run failed, store path).
    ``threads``: torch intra-op threads per process (None: cores // jobs in workers, unchanged
    in-process); each run records the count it had in its notes. With ``scheduler`` (an address)
    or ``dask_workers`` the runs go to a Dask cluster (:mod:`bench.distributed`); this process
    still saves every result."""
    from tqdm.auto import tqdm

    with open_store(db) as store:
        done = set() if force else store.finished_keys(c.key for c in configs)
        todo = [c for c in configs if c.key not in done]
        versions, revision = harness.environment(), harness.git_revision()
        description = harness.device_description(configs[0].device) if configs else ""
        if done and not quiet:
            print(f"{len(configs) - len(todo)} of {len(configs)} runs already in {store.path}; "
                  "not recomputed (use --force)", file=sys.stderr)
        failed = 0
        bar = tqdm(total=len(todo), unit="run", disable=True if quiet else None, file=sys.stderr)
        if scheduler is not None or dask_workers:
            results = distributed.results(todo, plugins, scheduler, dask_workers, quiet, threads)
        else:
            results = _results(todo, jobs, plugins, threads)
        for result in results:
            config = result.config
            store.save(result, versions, revision, description)
            if result.status == "failed":
                failed += 1
                bar.write(f"failed: {config.estimator_spec} on {config.problem_spec} seed {config.seed}: "
                          f"{result.error}", file=sys.stderr)
            bar.set_description(f"{config.estimator} on {config.problem} seed {config.seed}")
            bar.update(1)
        bar.close()
        return (1 if failed else 0), store.path
