"""``python -m bench run``: measure estimators on problems, store the runs, print the summary."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import estimators
import problems
from bench import distributed, harness, summary, sweep
from benchcli.commands import arguments
from benchcli.commands.arguments import (DEFAULT_THREADS, add_plugin_option, add_threads_option, load_plugins,  # noqa: F401
                                      non_negative_int, positive_float, positive_int, seeds)
from benchcli.commands.reproduce import check_data, datasets_of
from bench.errors import UserError
from bench.specs import format_spec
from bench.store import DEFAULT_DB, Store
from bench.sweep import DEFAULT_PROBLEMS, DEFAULT_SAMPLES  # noqa: F401  (shared with the Python API)
from estimators.registry import RegistryError



def columns(text: str) -> list[str]:
    try:
        return summary.parse_columns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> None:
    run = subparsers.add_parser("run", allow_abbrev=False, help="measure estimators on problems and store the results")
    run.add_argument("--estimators", default="all", help="'all' or comma-separated specs name(key=value,...)")
    run.add_argument("--problems", default=DEFAULT_PROBLEMS, help=f"comma-separated specs (default: {DEFAULT_PROBLEMS})")
    run.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES, help="gradient estimates per run")
    run.add_argument("--seeds", type=seeds, default=[0], help="comma-separated seeds, e.g. 0,1,2")
    run.add_argument("--db", type=Path, default=None, help=f"results database (default: {DEFAULT_DB})")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--warmup", type=non_negative_int, default=harness.DEFAULT_WARMUP,
                     help="estimates that adapt a stateful estimator's running statistics before measuring")
    run.add_argument("--jobs", type=positive_int, default=1,
                     help="worker processes running configs in parallel (each gets --threads threads; "
                          "capped at the runs to do and at 1 GiB of available memory per worker)")
    add_threads_option(run)
    run.add_argument("--run-timeout", type=positive_float, default=None, metavar="SECONDS",
                     help="a run taking longer is killed and stored as failed; the sweep goes on")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="directory holding datasets (sets STOCHGRAD_BENCH_DATA for this run)")
    run.add_argument("--force", action="store_true", help="recompute runs already in the store")
    arguments.add_keep_models_option(run)
    add_plugin_option(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    run.add_argument("--budget", type=positive_int, default=summary.DEFAULT_BUDGET, metavar="B",
                     help="loss evaluations at which the summary ranks biased estimators and deterministic "
                          "baselines: MSE of the average of the estimates B evaluations buy, where bias² counts "
                          f"(default: {summary.DEFAULT_BUDGET}); unbiased ones are ranked by MSE × evaluations")
    run.add_argument("--columns", type=columns, default=None,
                     help="summary-table columns, comma-separated (default: "
                          f"{', '.join(summary.GRADIENT_DEFAULT)}; for training runs: "
                          f"{', '.join(summary.TRAINING_DEFAULT)}); valid: {', '.join(summary.KNOWN_COLUMNS)}")
    distributed.add_options(run)
    run.set_defaults(func=command_run)


def plan(args) -> list[harness.RunConfig]:
    """Every run of the sweep, validated and with defaults filled in; raises on user error."""
    device = arguments.device(args.device, here=getattr(args, "scheduler", None) is None)
    return sweep.plan_sweep(args.estimators, args.problems, args.seeds, args.samples, device, args.warmup)


def command_run(args) -> int:
    load_plugins(args.plugin)
    executor = distributed.sweep_options(args)
    if args.data_dir is not None:
        if not args.data_dir.is_dir() and args.scheduler is None:  # a cluster's workers may see other disks
            raise UserError(f"--data-dir {args.data_dir} is not a directory")
        os.environ["STOCHGRAD_BENCH_DATA"] = str(args.data_dir.resolve())
    configs = plan(args)
    # Data the problems need, loaded and checked once: a missing or corrupt data set is one line and
    # exit 2 here, as in `vae` and `reproduce`, not a failed run per config.
    check_data(datasets_of(configs), None, here=args.scheduler is None)
    status, path = sweep.run_sweep(configs, args.db, jobs=args.jobs, force=args.force, quiet=args.quiet,
                                   plugins=args.plugin, threads=args.threads, run_timeout=args.run_timeout,
                                   keep_models=arguments.keep_models(args.keep_models), **executor)
    if not args.quiet:
        with Store(path, create=False) as store:
            print(summary_table(store, configs, args.columns, budget=args.budget))
        print(f"\nresults in {path} (python -m bench export --db {path} --format csv --out results.csv)")
    return status


def summary_table(store: Store, configs: Sequence[harness.RunConfig], columns: Sequence[str] | None = None,
                  width: int | None = None, budget: int = summary.DEFAULT_BUDGET) -> str:
    """Per problem, the unbiased estimators ranked by MSE at an equal budget of loss evaluations and
    the biased ones by MSE at ``budget`` loss evaluations, seeds aggregated, labels showing only
    non-default parameters (see bench.summary)."""
    return summary.summary_table(store, configs, columns, width, label=_short_label, budget=budget)


def _short_label(name: str, params: dict, kind: str) -> str:
    registry = estimators.ESTIMATORS if kind == "estimator" else problems.PROBLEMS
    return format_spec(name, _non_default(name, params, registry))


def _non_default(name: str, params: dict, registry) -> dict:
    try:
        spec = registry.entry(name).parameters()
    except RegistryError:
        return params
    return {k: v for k, v in params.items() if k not in spec or spec[k]["default"] != v}
