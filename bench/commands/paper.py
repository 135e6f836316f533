"""``python -m bench paper``: re-run the paper's Fig. 2 (right), the seven gaters of the MNIST
conditional-computation experiment, over seeds, and print it beside the published numbers.

Every (row, seed) is one stored run of the ``mnist-gater`` (or ``fashion-mnist-gater``) training
problem, so an interrupted command resumes, and ``python -m bench export`` gives the learning
curves (``epoch`` column). ``--jobs N`` trains N runs at once in worker processes; with
``--device cuda`` they share the GPU (each keeps its whole data set on it).
"""
from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pandas as pd

from bench import distributed, harness
from bench.cli import _device, _positive_float, _positive_int, _seeds
from bench.summary import terminal_width
from bench.errors import UserError
from bench.specs import parse_spec
from bench.store import Store
from problems.gater import DEFAULT_EPOCHS, PAPER_ROWS, PAPER_TABLE

DATASETS = ("mnist", "fashion-mnist")
QUICK = {"epochs": 1, "train_subset": 2000, "eval_subset": 2000}
FINAL_METRICS = ("train_criterion", "valid_error", "test_error", "sparsity_test")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "paper", allow_abbrev=False,
        help="re-run the paper's Fig. 2 table (seven MNIST gaters x seeds) and print it beside the published one")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist", help="data set (default: mnist)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help=f"training epochs per run (default: {DEFAULT_EPOCHS}; 1 with --quick)")
    parser.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default: 0,1,2; 0 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--jobs", type=_positive_int, default=1, help="runs trained at once in worker processes")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads per process (default: cores / jobs; recorded in each run's notes)")
    parser.add_argument("--run-timeout", type=_positive_float, default=None, metavar="SECONDS",
                        help="a run taking longer is killed and stored as failed; the others go on")
    parser.add_argument("--db", type=Path, default=None, help="results database (default: bench-results/results.db)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory holding mnist/ or fashion-mnist/ (sets STOCHGRAD_BENCH_DATA for this run)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 epoch on the first 2,000 training examples, errors on 2,000 valid/test")
    parser.add_argument("--force", action="store_true", help="recompute runs already in the store")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    distributed.add_options(parser)
    parser.set_defaults(func=command_paper)


def plan(args) -> list[tuple[str, harness.RunConfig]]:
    """(row label, config) for every row x seed, validated, defaults filled in."""
    device = _device(args.device, here=args.scheduler is None)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    overrides = dict(QUICK) if args.quick else {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    problem = f"{args.dataset}-gater"
    planned = []
    for label, spec, params in PAPER_ROWS:
        estimator, estimator_params = parse_spec(spec)
        for seed in seeds:
            config = harness.make_config(estimator, estimator_params, problem, {**params, **overrides},
                                         seed, 0, device, 0)
            planned.append((label, config))
    return planned


def check_data(dataset: str, data_dir: Path | None, here: bool = True) -> None:
    """Point the loader at ``data_dir`` (workers inherit the environment, Dask workers are sent it)
    and fail early, in one line, when the data set is not there; not ``here``: the runs go to a Dask
    cluster whose workers may see other disks, and a worker without the data fails its runs."""
    from problems.datasets import ENV_VAR, DataError, load_dataset

    if data_dir is not None:
        if not data_dir.is_dir() and here:
            raise UserError(f"--data-dir {data_dir} is not a directory")
        os.environ[ENV_VAR] = str(data_dir.resolve())
    if not here:
        return
    try:
        load_dataset(dataset)  # parsed and md5-checked once; in-process runs reuse it
    except DataError as exc:
        raise UserError(str(exc)) from None


def command_paper(args) -> int:
    from bench.sweep import run_sweep

    executor = distributed.sweep_options(args)
    planned = plan(args)
    check_data(args.dataset, args.data_dir, here=args.scheduler is None)
    began = time.perf_counter()
    status, db = run_sweep([config for _, config in planned], args.db, jobs=args.jobs, force=args.force,
                           quiet=args.quiet, threads=args.threads, run_timeout=args.run_timeout, **executor)
    wall = time.perf_counter() - began
    with Store(db, create=False) as store:
        table, run_time = paper_table(store, planned)
    epochs = planned[0][1].problem_params["epochs"]
    seeds = sorted({config.seed for _, config in planned})
    width = terminal_width()
    print(textwrap.fill(f"Fig. 2 (right) re-run on {planned[0][1].problem}: {epochs} epoch(s), seeds "
                        f"{','.join(map(str, seeds))}, device {harness.device_description(planned[0][1].device)}"
                        + (" (--quick smoke test: 2,000 examples, not comparable with the paper)" if args.quick
                           else ""), width))
    print(render(table, width))
    print(textwrap.fill("Ours: mean ± sd over seeds of the last epoch; below each row, the estimator and the "
                        "published MNIST numbers (paper). Errors in %; criterion = training NLL (nats per example); "
                        "sparsity = fraction of test-time gates exactly zero.", width))
    where = (f"Dask at {args.scheduler}" if args.scheduler else f"{args.dask_workers} Dask workers"
             if args.dask_workers else f"jobs {args.jobs}")
    print(textwrap.fill(f"wall time {wall:.1f} s for {len(planned)} runs ({where}); the stored runs took "
                        f"{run_time:.1f} s of run time; results in {db}", width, break_on_hyphens=False))
    return status


def paper_table(store: Store, planned: list[tuple[str, harness.RunConfig]]) -> tuple[pd.DataFrame, float]:
    """One row per paper row: mean ± sd over seeds of the final-epoch metrics, and the paper's."""
    runs = store.runs()
    label_of = {config.key: label for label, config in planned}
    runs = runs[runs["config_key"].isin(label_of)]
    metrics = store.metrics(runs["run_id"].tolist()) if len(runs) else pd.DataFrame(
        columns=["run_id", "metric", "value", "epoch"])
    final = _final_epoch(metrics)
    rows = []
    for label, spec, _ in PAPER_ROWS:
        mine = runs[runs["config_key"].map(label_of) == label]
        row = {"model": label, "estimator": spec}
        finished = mine[mine["status"] == "finished"]
        row["seeds"] = f"{len(finished)}/{len(mine)}" if len(mine) else "0"
        values = final[final["run_id"].isin(finished["run_id"])]
        for metric in FINAL_METRICS:
            series = values.loc[values["metric"] == metric, "value"].astype(float)
            row[metric] = _mean_sd(series, metric)
        paper = PAPER_TABLE[label]
        row["paper train"], row["paper valid"], row["paper test"] = f"{paper[0]:.1e}", f"{paper[1]:.2f}", f"{paper[2]:.2f}"
        unfinished = mine[mine["status"] != "finished"]
        if len(unfinished):
            row["note"] = "; ".join(f"seed {r.seed} {r.status}: {r.error}" for r in unfinished.itertuples())
        rows.append(row)
    table = pd.DataFrame(rows).fillna("").rename(columns={
        "train_criterion": "train criterion", "valid_error": "valid %", "test_error": "test %",
        "sparsity_test": "test sparsity"})
    return table, float(runs["wall_time_s"].sum()) if len(runs) else 0.0


OURS = ("train criterion", "valid %", "test %", "test sparsity")
PAPER = ("paper train", "paper valid", "paper test")


def render(table: pd.DataFrame, width: int) -> str:
    """Two lines per paper row, to stay within ``width`` (at least 90) columns: the model, seeds
    and our numbers; below it, indented, the estimator spec and the paper's numbers under ours."""
    first = [max(len("model / estimator"), *(len(m) for m in table["model"]), *(2 + len(e) for e in table["estimator"]))]
    first.append(max(len("seeds"), len("paper"), *(len(s) for s in table["seeds"])))
    numbers = [max(len(c), *(len(v) for v in table[c]), *(len(v) for v in table[p]) if p else [0])
               for c, p in zip(OURS, (*PAPER, None))]
    widths = first + numbers

    def line(cells):
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    out = [line(["model / estimator", "seeds", *OURS])]
    for row in table.to_dict("records"):
        out.append(line([row["model"], row["seeds"], *(row[c] for c in OURS)]))
        out.append(line(["  " + row["estimator"], "paper", *(row[p] for p in PAPER)]))
        if row.get("note"):
            out += textwrap.wrap(row["note"], max(width, 40), initial_indent="    ", subsequent_indent="      ")
    return "\n".join(out)


def _final_epoch(metrics: pd.DataFrame) -> pd.DataFrame:
    """Each run's per-epoch metrics at its last epoch."""
    curves = metrics[metrics["epoch"].notna()]
    if curves.empty:
        return curves
    last = curves.groupby("run_id")["epoch"].transform("max")
    return curves[curves["epoch"] == last]


def _mean_sd(series: pd.Series, metric: str) -> str:
    if series.empty:
        return "-"
    fmt = "{:.2e}" if metric == "train_criterion" else ("{:.3f}" if metric == "sparsity_test" else "{:.2f}")
    text = fmt.format(series.mean())
    if len(series) > 1:
        text += " ± " + fmt.format(series.std(ddof=1))
    return text
