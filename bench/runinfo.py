"""What a run stores about its estimator and problem, so that analysis needs only the store.

The harness writes :func:`describe` into each run's notes (JSON, no schema change)::

    "kind": "gradient" | "training",
    "estimator": {"family", "module", "traits": {unbiased, loss_evals, ...}, "loss_evaluations",
                  "defaults": {parameter: registered default}},
    "problem": {"trains_model", "module", "units", "dim", "defaults"}

The readers below take a run's parsed notes and return None where a run stored before these keys
existed lacks them; the caller then falls back to the live registries (the old behaviour).
"""
from __future__ import annotations

import json
from typing import Any

import estimators
import problems
from estimators.base import Traits
from estimators.families import family_of
TRAINING, GRADIENT = "training", "gradient"
DESCRIBED = ("kind", "estimator", "problem")  # the notes describe() writes


def _json_safe(value: Any) -> Any:
    """The value as it reads back from the store's JSON (tuples become lists, odd types strings)."""
    return json.loads(json.dumps(value, default=str))


def _defined(obj: Any, name: str) -> Any:
    """An attribute a class may leave undefined (a property raising NotImplementedError): None then."""
    try:
        value = getattr(obj, name)
    except (NotImplementedError, AttributeError):
        return None
    return value if isinstance(value, (int, float, str, bool)) else None


def registered_defaults(registry, name: str) -> dict[str, Any]:
    """The registered constructor defaults of ``name`` (parameters that have one)."""
    return {key: spec["default"] for key, spec in registry.entry(name).parameters().items() if not spec["required"]}


def describe(estimator, problem, estimator_name: str, problem_name: str) -> dict[str, Any]:
    """The notes that describe a built estimator and problem (registered under these names):
    traits read from the instance (a parameter may change a trait), the family, the registered
    defaults, and the run's kind."""
    units = _defined(problem, "units")
    try:
        evaluations = problem.evaluations_per_estimate(estimator) if isinstance(units, int) else None
    except (NotImplementedError, ValueError):  # a formula the estimator does not resolve
        evaluations = None
    record = estimator.traits() if hasattr(estimator, "traits") else None
    if hasattr(record, "as_dict"):
        traits = record.as_dict()
    elif isinstance(record, dict):  # a plugin written before traits were one record returns a dict
        traits = dict(record)
    else:
        traits = {k: getattr(estimator, k, None) for k in Traits.names()}
    family = traits.pop("family", None) or family_of(type(estimator))  # stored beside the traits, as always
    return _json_safe({
        "kind": TRAINING if problem.trains_model else GRADIENT,
        "estimator": {"family": family, "module": type(estimator).__module__,
                      "traits": traits, "loss_evaluations": evaluations,
                      "defaults": registered_defaults(estimators.ESTIMATORS, estimator_name)},
        "problem": {"trains_model": bool(problem.trains_model), "module": type(problem).__module__,
                    "units": units, "dim": _defined(problem, "dim"),
                    "defaults": registered_defaults(problems.PROBLEMS, problem_name)},
    })


# -- reading ---------------------------------------------------------------------------------------
def _block(notes: Any, kind: str) -> dict | None:
    block = notes.get(kind) if isinstance(notes, dict) else None
    return block if isinstance(block, dict) else None


def stored_kind(notes: Any) -> str | None:
    """'training' or 'gradient' as stored; None for a run stored without it."""
    kind = notes.get("kind") if isinstance(notes, dict) else None
    return kind if kind in (TRAINING, GRADIENT) else None


def is_training(notes: Any, guess: bool) -> bool:
    """Whether the run trained a model: the stored kind, ``guess`` only for runs stored without one."""
    kind = stored_kind(notes)
    return guess if kind is None else kind == TRAINING


def stored_defaults(notes: Any, kind: str) -> dict[str, Any] | None:
    """The registered defaults the ``kind`` ('estimator' or 'problem') was built with, if stored."""
    block = _block(notes, kind)
    defaults = block.get("defaults") if block else None
    return defaults if isinstance(defaults, dict) else None


def stored_traits(notes: Any) -> dict[str, Any] | None:
    block = _block(notes, "estimator")
    traits = block.get("traits") if block else None
    return traits if isinstance(traits, dict) else None


def stored_family(notes: Any) -> str | None:
    """The family stored with the run (in its estimator block, or a top-level "family" note)."""
    block = _block(notes, "estimator") or {}
    for family in (block.get("family"), notes.get("family") if isinstance(notes, dict) else None):
        if isinstance(family, str) and family:
            return family
    return None
