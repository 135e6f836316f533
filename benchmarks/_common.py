"""Shared set-up for the asv benchmarks (benchmarks/bench_*.py): seeded, frozen estimators on a
problem, with benchmarks for missing problems or impossible pairs skipped (NotImplementedError is
asv's "skip")."""
from __future__ import annotations

import math

import torch

import estimators
import problems
from bench.harness import seeded_noise
from bench.specs import parse_spec

ESTIMATOR_NAMES = estimators.unit_estimator_names()  # sequence estimators: sequence problems only


def require_problem(name: str) -> None:
    if name not in problems.PROBLEMS.names():
        raise NotImplementedError(f"problem {name!r} is not registered in this version")


MAX_ELEMENTS = 2**26  # unit values one timed call may hold (512 MB in float64)


def prepared(estimator_spec: str, problem_name: str, problem_params: dict, batch: int,
             layers: tuple[int, ...] | None = None):
    """(problem, estimator, noise) ready for ``with estimator.drawing_from(noise):
    problem.sample_gradients(estimator, batch)``: the estimator called once on the seeded ``noise``
    (lazy state and parameters exist, first-call costs paid), then frozen.

    ``layers``: the widths of stacked stochastic layers. A multi-evaluation estimator at every
    layer evaluates the layers below it for each of its evaluations, so the evaluations multiply;
    pairs beyond MAX_ELEMENTS are skipped rather than run out of memory."""
    require_problem(problem_name)
    problem = problems.build_problem(problem_name, problem_params)
    name, params = parse_spec(estimator_spec)
    estimator = estimators.build_estimator(name, params)
    layers = layers or (problem.units,)
    try:
        for units in layers:
            estimator.check_units(units)
    except ValueError as exc:
        raise NotImplementedError(f"{estimator_spec} cannot serve {problem_name}: {exc}") from None
    evaluations = math.prod(estimator.loss_evaluations(units) for units in layers)
    if evaluations * batch * max(layers) > MAX_ELEMENTS:
        raise NotImplementedError(f"{estimator_spec} on {problem_name}: {evaluations:.3g} nested loss evaluations "
                                  f"per estimate, too many to time")
    noise = seeded_noise(0, 0, torch.device("cpu"))
    with estimator.drawing_from(noise):
        problem.sample_gradients(estimator, batch)
    estimator.update_state = False
    estimator.zero_grad(set_to_none=True)
    return problem, estimator, noise
