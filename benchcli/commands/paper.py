"""``python -m bench paper``: re-run the paper's Fig. 2 (right), the seven gaters of the MNIST
conditional-computation experiment, over seeds, and print it beside the published numbers.

The shorthand for ``python -m bench reproduce paper-fig2`` (experiments/paper_fig2.py) with two
options of its own, ``--dataset`` and ``--epochs``. Every (row, seed) is one stored run of the
``mnist-gater`` (or ``fashion-mnist-gater``) training problem, so an interrupted command resumes,
and ``python -m bench export`` gives the learning curves (``epoch`` column). ``--jobs N`` trains N
runs at once in worker processes; with ``--device cuda`` they share the GPU (each keeps its whole
data set on it).
"""
from __future__ import annotations

from benchcli.commands import arguments
from benchcli.commands.reproduce import add_run_options, run_experiment
from problems.gater import DEFAULT_EPOCHS

EXPERIMENT = "paper-fig2"
DATASETS = ("mnist", "fashion-mnist")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "paper", allow_abbrev=False,
        help="re-run the paper's Fig. 2 table (seven MNIST gaters x seeds) and print it beside the published one")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist", help="data set (default: mnist)")
    parser.add_argument("--epochs", type=arguments.positive_int, default=None,
                        help=f"training epochs per run (default: {DEFAULT_EPOCHS}; 1 with --quick)")
    add_run_options(parser, seeds_help="comma-separated seeds (default: 0,1,2; 0 with --quick)",
                    quick_help="smoke test: 1 epoch on the first 2,000 training examples, errors on 2,000 "
                               "valid/test")
    parser.set_defaults(func=command_paper)


def command_paper(args) -> int:
    import experiments

    return run_experiment(experiments.build_experiment(EXPERIMENT), args, dataset=args.dataset, epochs=args.epochs)
