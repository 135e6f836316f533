"""``python -m bench vae``: train the Bernoulli VAE with each estimator and print the
table of final training ELBO and test bound beside the published numbers.

The shorthand for ``python -m bench reproduce bernoulli-vae`` (experiments/bernoulli_vae.py) with
options of its own: ``--estimators``, ``--architectures``, ``--dataset``, ``--steps``, ``--basket``.
Every (estimator, architecture, seed) is one stored run of the ``bernoulli-vae`` training problem,
so an interrupted command resumes; ``--jobs N`` trains N runs at once, and with ``--device cuda``
they share the GPU. The defaults live in the experiment module (its ESTIMATORS, DEFAULT_STEPS,
DEFAULT_BASKET), imported only when the command runs so that the other commands start as fast
as before; the table's heading says which were used.
"""
from __future__ import annotations

from benchcli.commands import arguments
from benchcli.commands.reproduce import add_run_options, run_experiment

EXPERIMENT = "bernoulli-vae"
DATASETS = ("mnist", "fashion-mnist")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "vae", allow_abbrev=False,
        help="train the Bernoulli VAE with each estimator (x architectures x seeds) and print the ELBO table "
             "beside the published one")
    parser.add_argument("--estimators", default=None,
                        help="comma-separated estimator specs, or 'all' (default: the ten the discrete-VAE papers compare: "
                             "reinforce-loo(K=2), disarm, "
                             "arm, rebar, relax, nvil, muprop, gumbel-softmax, straight-through-sigmoid, reinmax)")
    parser.add_argument("--architectures", default=None,
                        help="comma-separated: linear, nonlinear, two-layer (default: linear)")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist", help="data set (default: mnist)")
    parser.add_argument("--steps", type=arguments.positive_int, default=None,
                        help="training steps per run (default: the experiment's DEFAULT_STEPS; a few with --quick)")
    parser.add_argument("--basket", default=None,
                        help="estimators measured at every checkpoint beside the training one, specs joined by '+', "
                             "'' for none (default: reinforce-loo(K=2)+disarm)")
    add_run_options(parser, seeds_help="comma-separated seeds (default: 0)",
                    quick_help="smoke test: a few steps on 500 training examples, ELBOs on 100 examples, a 5-sample "
                               "test bound")
    arguments.add_plugin_option(parser)
    parser.set_defaults(func=command_vae)


def command_vae(args) -> int:
    import experiments

    arguments.load_plugins(args.plugin)  # plugin estimators train like the built-in ones; workers load them too
    settings = {name: value for name, value in (("estimators", args.estimators), ("architectures", args.architectures),
                                                ("steps", args.steps), ("basket", args.basket))
                if value is not None}
    return run_experiment(experiments.build_experiment(EXPERIMENT), args, dataset=args.dataset, **settings)
