"""``python -m bench reproduce``: list the registered experiments, or run one through the store and
print its table.

    python -m bench reproduce --list
    python -m bench reproduce paper-fig2 [--quick] [--device cuda] [--seeds 0,1,2] [--jobs N]

Every run of the experiment is a stored run (resumable: an interrupted command picks up where it
stopped; ``--force`` recomputes), so ``python -m bench report`` and ``export`` see them too.
``python -m bench paper`` is the shorthand for ``reproduce paper-fig2`` with its own options.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterable

from bench import distributed, harness, sweep
from benchcli.commands import arguments
from bench.errors import UserError
from bench.store import DEFAULT_DB, Store
from bench.summary import terminal_width


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce", allow_abbrev=False, description=__doc__.splitlines()[0],
        help="list the registered experiments (--list), or run one through the store and print its table")
    parser.add_argument("name", nargs="?", default=None, help="the experiment to run (see --list)")
    parser.add_argument("--list", action="store_true", help="the registered experiments: name, description, source")
    add_run_options(parser, quick_help="smoke test: the experiment's tiny setting (see --list)",
                    seeds_help="comma-separated seeds (default: the experiment's, 0,1,2 for the built-in ones; "
                               "0 with --quick)")
    parser.add_argument("--plugin", action="append", default=[],
                        help="a plugin .py file or module to load (it runs code: load only what you trust)")
    parser.set_defaults(func=command_reproduce)


def add_run_options(parser: argparse.ArgumentParser, quick_help: str, seeds_help: str) -> None:
    """The options of every command that runs an experiment (``reproduce``, ``paper``)."""
    parser.add_argument("--seeds", type=arguments.seeds, default=None, help=seeds_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--jobs", type=arguments.positive_int, default=1, help="runs trained at once in worker processes")
    arguments.add_threads_option(parser)  # one thread per process by default, as in `run`
    parser.add_argument("--run-timeout", type=arguments.positive_float, default=None, metavar="SECONDS",
                        help="a run taking longer is killed and stored as failed; the others go on")
    parser.add_argument("--db", type=Path, default=None, help=f"results database (default: {DEFAULT_DB})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory holding mnist/ or fashion-mnist/ (sets STOCHGRAD_BENCH_DATA for this run)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--force", action="store_true", help="recompute runs already in the store")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    arguments.add_keep_models_option(parser)
    distributed.add_options(parser)


def command_reproduce(args: argparse.Namespace) -> int:
    import estimators
    import experiments
    import problems
    from estimators.registry import load_plugin

    arguments.check_plugin_targets(args.plugin)  # a mistyped path is a user error
    for target in args.plugin:  # a failure is listed under the experiments' broken plugins
        error = load_plugin(target, (experiments.EXPERIMENTS, estimators.ESTIMATORS, problems.PROBLEMS))
        if error:
            print(f"warning: {error} (skipped)", file=sys.stderr)
    if args.list:
        if args.name is not None:
            raise UserError("reproduce: give an experiment name or --list, not both")
        print(listing(experiments.EXPERIMENTS, terminal_width()))
        return 0
    if args.name is None:
        raise UserError("reproduce: give an experiment name (python -m bench reproduce --list shows them)")
    return run_experiment(experiments.build_experiment(args.name), args)


def listing(registry, width: int) -> str:
    """Name and description of each registered experiment, with where its numbers come from."""
    lines = []
    for entry in registry.entries():
        lines += textwrap.wrap(f"{entry.name:<18} {entry.description}", max(width, 40), subsequent_indent=" " * 19,
                               break_on_hyphens=False)
        for label, text in (("published", entry.cls.source or "none"), ("source", entry.source)):
            lines += textwrap.wrap(f"{label}: {text}", max(width, 40), initial_indent=" " * 19,
                                   subsequent_indent=" " * 21, break_on_hyphens=False,
                                   break_long_words=False)
    if registry.broken:
        lines.append("BROKEN PLUGINS (skipped)")
        lines += [f"  {b.source}: {b.error}" for b in registry.broken]
    return "\n".join(lines)


def run_experiment(experiment, args: argparse.Namespace, **settings: Any) -> int:
    """Run ``experiment``'s runs (``settings``: its own options) into the store, then print its
    table and the wall time; the exit status is 1 if any run failed."""
    executor = distributed.sweep_options(args)
    here = args.scheduler is None  # a Dask cluster's workers may have other devices and disks
    device = arguments.device(args.device, here=here)
    seeds = args.seeds if args.seeds is not None else list(experiment.quick_seeds if args.quick else experiment.seeds)
    keep_models = arguments.keep_models(args.keep_models)
    planned = experiment.runs(quick=args.quick, seeds=seeds, device=device, **settings)
    if not planned:
        raise UserError(f"experiment {experiment.name!r} plans no runs with these settings")
    check_data(datasets_of(p.config for p in planned), args.data_dir, here=here)
    began = time.perf_counter()
    status, db = sweep.run_sweep([p.config for p in planned], args.db, jobs=args.jobs, force=args.force,
                                 quiet=args.quiet, plugins=getattr(args, "plugin", ()), threads=args.threads,
                                 run_timeout=args.run_timeout, keep_models=keep_models, **executor)
    wall = time.perf_counter() - began
    width = terminal_width()
    with Store(db, create=False) as store:
        print(experiment.table(store, planned, args.quick, width))
        runs = store.runs()
    run_time = float(runs.loc[runs["config_key"].isin({p.config.key for p in planned}), "wall_time_s"].sum())
    where = (f"Dask at {args.scheduler}" if args.scheduler else f"{args.dask_workers} Dask workers"
             if args.dask_workers else f"jobs {args.jobs}")
    print(textwrap.fill(f"wall time {wall:.1f} s for {len(planned)} runs ({where}); the stored runs took "
                        f"{run_time:.1f} s of run time; results in {db}", width, break_on_hyphens=False))
    return status


def datasets_of(configs: Iterable[harness.RunConfig]) -> list[str]:
    """The suite's data sets the configs' problems load (a training problem's ``dataset`` attribute):
    a plugin's problem that brings its own data (any other name) is its own business."""
    import problems
    from problems.datasets import DATASETS

    named = {getattr(problems.PROBLEMS.entry(c.problem).cls, "dataset", "") for c in configs}
    return sorted(named & set(DATASETS))


def check_data(datasets: Iterable[str], data_dir: Path | None, here: bool = True) -> None:
    """Point the loader at ``data_dir`` (workers inherit the environment, Dask workers are sent it)
    and fail early, in one line, when a data set is not there; not ``here``: the runs go to a Dask
    cluster whose workers may see other disks, and a worker without the data fails its runs."""
    from problems.datasets import ENV_VAR, DataError, load_dataset

    if data_dir is not None:
        if not data_dir.is_dir() and here:
            raise UserError(f"--data-dir {data_dir} is not a directory")
        os.environ[ENV_VAR] = str(data_dir.resolve())
    if not here:
        return
    for dataset in datasets:
        try:
            load_dataset(dataset)  # parsed and md5-checked once; in-process runs reuse it
        except DataError as exc:
            raise UserError(str(exc)) from None
