"""The command line: ``python -m bench list | run | export``.

User mistakes (unknown names, malformed specs, invalid parameters, unusable paths) print one line
on stderr and exit with status 2 before anything is written.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

import estimators
import problems
from bench import distributed, harness, summary, sweep
from bench.specs import MAX_GRID, SpecError, format_spec, parse_spec_list
from bench.errors import UserError
from bench.files import write_atomically
from bench.store import DEFAULT_DB, Store, StoreError
from estimators.registry import RegistryError

DEFAULT_PROBLEMS = "bernoulli-target(d=4,t=0.45),bernoulli-quadratic(d=6),bernoulli-blackbox(d=8)"
DEFAULT_SAMPLES = 100_000
EXIT_USAGE = 2


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already names its default or
    there is none to name (None, False, an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or default == []
                or "default" in text):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


DEFAULT_THREADS = 1  # measured: see README "Performance"
MAX_SEED = 2**63
PLUGIN_HELP = ("a plugin .py file or module to load; it runs as ordinary Python code with your permissions, "
               "so load only plugins you trust")


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    listing = sub.add_parser("list", allow_abbrev=False, help="estimators and problems, with traits, parameters and source")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--plugin", action="append", default=[], help=PLUGIN_HELP)

    run = sub.add_parser("run", allow_abbrev=False, help="measure estimators on problems and store the results")
    run.add_argument("--estimators", default="all", help="'all' or comma-separated specs name(key=value,...)")
    run.add_argument("--problems", default=DEFAULT_PROBLEMS, help=f"comma-separated specs (default: {DEFAULT_PROBLEMS})")
    run.add_argument("--samples", type=_positive_int, default=DEFAULT_SAMPLES, help="gradient estimates per run")
    run.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds, e.g. 0,1,2")
    run.add_argument("--db", type=Path, default=None, help=f"results database (default: {DEFAULT_DB})")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--warmup", type=_non_negative_int, default=harness.DEFAULT_WARMUP,
                     help="estimates that adapt a stateful estimator's running statistics before measuring")
    run.add_argument("--jobs", type=_positive_int, default=1,
                     help="worker processes running configs in parallel (each gets --threads threads; "
                          "capped at the runs to do and at 1 GiB of available memory per worker)")
    run.add_argument("--threads", type=_positive_int, default=DEFAULT_THREADS,
                     help=f"torch threads per process (default: {DEFAULT_THREADS}, fastest for these small "
                          "problems; recorded in each run's notes)")
    run.add_argument("--run-timeout", type=_positive_float, default=None, metavar="SECONDS",
                     help="a run taking longer is killed and stored as failed; the sweep goes on")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="directory holding datasets (sets STOCHGRAD_BENCH_DATA for this run)")
    run.add_argument("--force", action="store_true", help="recompute runs already in the store")
    run.add_argument("--plugin", action="append", default=[], help=PLUGIN_HELP)
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    run.add_argument("--columns", type=_columns, default=None,
                     help="summary-table columns, comma-separated (default: "
                          f"{', '.join(summary.GRADIENT_DEFAULT)}; for training runs: "
                          f"{', '.join(summary.TRAINING_DEFAULT)}); valid: {', '.join(summary.KNOWN_COLUMNS)}")
    distributed.add_options(run)

    export = sub.add_parser("export", allow_abbrev=False, help="write the stored metrics in long form")
    export.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default: {DEFAULT_DB})")
    export.add_argument("--format", choices=("csv", "parquet"), required=True)
    export.add_argument("--out", type=Path, required=True, help="output file, or - for standard output")

    from bench import commands
    commands.add_parsers(sub)
    return parser


def _int_at_least(minimum: int, kind: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated non-negative integers, got {text!r}") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"must be distinct non-negative integers, got {text!r}")
    if any(seed >= MAX_SEED for seed in seeds):  # the store keeps seeds as 64-bit integers
        raise argparse.ArgumentTypeError(f"must be below 2^63 = {MAX_SEED}, got {text!r}")
    return seeds


def _columns(text: str) -> list[str]:
    try:
        return summary.parse_columns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load_plugins(targets: Sequence[str]) -> None:
    for error in sweep.load_plugins(targets):
        print(f"warning: {error} (skipped)", file=sys.stderr)


# -- list ------------------------------------------------------------------------------------------
def _describe(entry, kind: str) -> dict:
    item = {"name": entry.name, "kind": kind, "source": entry.source, "description": entry.description,
            "parameters": {k: v["default"] for k, v in entry.parameters().items()}}
    if kind == "estimator":
        item["traits"] = {k: getattr(entry.cls, k) for k in
                          ("unbiased", "loss_evals", "needs_loss_backprop", "binary_forward", "randomness",
                           "stateful", "has_parameters", "activation")}
    return item


def command_list(args) -> int:
    _load_plugins(args.plugin)
    items = ([_describe(e, "estimator") for e in estimators.ESTIMATORS.entries()]
             + [_describe(e, "problem") for e in problems.PROBLEMS.entries()])
    broken = [{"kind": b.kind, "source": b.source, "error": b.error}
              for b in estimators.ESTIMATORS.broken + problems.PROBLEMS.broken]
    if args.json:
        print(json.dumps({"items": items, "broken_plugins": broken}, indent=2, default=str))
        return 0
    for kind in ("estimator", "problem"):
        print(f"{kind.upper()}S")
        for item in (i for i in items if i["kind"] == kind):
            params = ", ".join(f"{k}={v!r}" for k, v in item["parameters"].items()) or "-"
            print(f"  {item['name']:<26} {item['description']}")
            print(f"  {'':<26} parameters: {params}")
            if kind == "estimator":
                traits = item["traits"]
                print(f"  {'':<26} traits: unbiased={traits['unbiased']} loss_evals={traits['loss_evals']} "
                      f"needs_loss_backprop={traits['needs_loss_backprop']} binary_forward={traits['binary_forward']} "
                      f"randomness={traits['randomness']} stateful={traits['stateful']} "
                      f"has_parameters={traits['has_parameters']} activation={traits['activation']}")
            print(f"  {'':<26} source: {item['source']}")
        print()
    if broken:
        print("BROKEN PLUGINS (skipped)")
        for b in broken:
            print(f"  {b['source']}: {b['error']}")
    return 0


# -- run -------------------------------------------------------------------------------------------
def _device(text: str, here: bool = True) -> str:
    """The canonical device name; ``here``: it must exist on this machine (not so for a Dask cluster's)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"invalid --device {text!r}: valid: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"invalid --device {text!r}: valid: cpu, cuda, cuda:N")
    if device.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise UserError("--device cuda: CUDA is not available on this machine (torch "
                            f"{torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present")
    return str(device)


def _expand(text: str, registry) -> list[tuple[str, dict]]:
    if text.strip() == "all":
        return [(name, {}) for name in registry.names()]
    specs = parse_spec_list(text)
    for name, _ in specs:
        registry.entry(name)
    return specs


def plan(args) -> list[harness.RunConfig]:
    """Every run of the sweep, validated and with defaults filled in; raises on user error."""
    device = _device(args.device, here=getattr(args, "scheduler", None) is None)
    estimator_specs = _expand(args.estimators, estimators.ESTIMATORS)
    problem_specs = _expand(args.problems, problems.PROBLEMS)
    size = len(estimator_specs) * len(problem_specs) * len(args.seeds)
    if size > MAX_GRID:
        raise UserError(f"the sweep has {size:,} runs ({len(estimator_specs)} estimator specs x {len(problem_specs)} "
                        f"problem specs x {len(args.seeds)} seeds), more than the limit of {MAX_GRID:,}; split it")
    configs = []
    for problem, problem_params in problem_specs:
        for estimator, estimator_params in estimator_specs:
            for seed in args.seeds:
                configs.append(harness.make_config(estimator, estimator_params, problem, problem_params,
                                                   seed, args.samples, device, args.warmup))
    return list({c.key: c for c in configs}.values())


def command_run(args) -> int:
    _load_plugins(args.plugin)
    executor = distributed.sweep_options(args)
    if args.data_dir is not None:
        if not args.data_dir.is_dir() and args.scheduler is None:  # a cluster's workers may see other disks
            raise UserError(f"--data-dir {args.data_dir} is not a directory")
        os.environ["STOCHGRAD_BENCH_DATA"] = str(args.data_dir.resolve())
    configs = plan(args)
    status, path = sweep.run_sweep(configs, args.db, jobs=args.jobs, force=args.force, quiet=args.quiet,
                                   plugins=args.plugin, threads=args.threads, run_timeout=args.run_timeout,
                                   **executor)
    if not args.quiet:
        with Store(path, create=False) as store:
            print(summary_table(store, configs, args.columns))
        print(f"\nresults in {path} (python -m bench export --db {path} --format csv --out results.csv)")
    return status


def summary_table(store: Store, configs: Sequence[harness.RunConfig], columns: Sequence[str] | None = None,
                  width: int | None = None) -> str:
    """Per problem, the estimators ranked by MSE at an equal budget of loss evaluations, seeds
    aggregated, labels showing only non-default parameters (see bench.summary)."""
    return summary.summary_table(store, configs, columns, width, label=_short_label)


def _short_label(name: str, params: dict, kind: str) -> str:
    registry = estimators.ESTIMATORS if kind == "estimator" else problems.PROBLEMS
    return format_spec(name, _non_default(name, params, registry))


def _non_default(name: str, params: dict, registry) -> dict:
    try:
        spec = registry.entry(name).parameters()
    except RegistryError:
        return params
    return {k: v for k, v in params.items() if k not in spec or spec[k]["default"] != v}


# -- export ----------------------------------------------------------------------------------------
def command_export(args) -> int:
    """Write the metrics in long form to a file (through a temporary file and a rename, so a
    failure leaves no partial file) or, with ``--out -``, to standard output."""
    to_stdout = str(args.out) == "-"
    if not to_stdout:
        if not args.out.parent.exists():
            raise UserError(f"directory {args.out.parent} does not exist (for --out {args.out})")
        if args.out.is_dir():
            raise UserError(f"--out {args.out} is a directory; give a file name")
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("parquet export needs pyarrow: pip install 'stochgrad-bench[parquet]'") from None
    with Store(args.db, create=False) as store:
        frame = store.metrics()
    at = frame.columns.get_loc("problem_params") + 1  # full specs: one column tells settings apart
    frame.insert(at, "problem_spec", _specs(frame["problem"], frame["problem_params"]))
    frame.insert(at, "estimator_spec", _specs(frame["estimator"], frame["estimator_params"]))

    def write(handle) -> None:
        if args.format == "csv":
            handle.write(frame.to_csv(index=False).encode("utf-8"))
        else:
            frame.to_parquet(handle, index=False)

    if to_stdout:
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        print(f"wrote {len(frame)} rows from {args.db} to standard output", file=sys.stderr)
    else:
        write_atomically(args.out, write)
        print(f"wrote {len(frame)} rows from {args.db} to {args.out}")
    return 0


def _specs(names: pd.Series, params: pd.Series) -> list[str]:
    """name(k=v,...) with every stored parameter, the form ``run --estimators`` accepts."""
    cache: dict[tuple[str, str], str] = {}

    def spec(name: str, text: str) -> str:
        try:
            return format_spec(name, json.loads(text))
        except (TypeError, ValueError, AttributeError):  # a damaged or crafted row: say so, do not crash
            return f"{name}(unreadable parameters)"

    return [cache.setdefault((n, p), spec(n, p)) for n, p in zip(names, params)]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: workers stop, finished runs stay stored."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    handled = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, _terminate) for signum in handled}
    try:
        args = build_parser().parse_args(argv)
        builtin = {"list": command_list, "run": command_run, "export": command_export}
        return builtin[args.command](args) if args.command in builtin else args.func(args)
    except (UserError, RegistryError, SpecError, StoreError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"{what}; finished runs are stored and the same command resumes", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
