"""Problems with exact (or reference) gradients of an expected loss, one module per family."""
from estimators.registry import Registry, RegistryError
from problems.base import (BernoulliProblem, CategoricalProblem, Checkpoint, Problem, Record, Reference, ResumeError,
                           Snapshot, TrainingProblem, TrainingState)

PROBLEMS = Registry(kind="problem", group="bench.problems",
                    builtin_modules=("problems.bernoulli", "problems.sigmoid_belief_net", "problems.gater",
                                     "problems.mlp", "problems.vae", "problems.categorical",
                                     "problems.sequence", "problems.moe"))
register_problem = PROBLEMS.register


def build_problem(name: str, params: dict | None = None) -> Problem:
    """Instantiate a registered problem by name with keyword parameters."""
    return PROBLEMS.build(name, params)


__all__ = ["PROBLEMS", "BernoulliProblem", "CategoricalProblem", "Checkpoint", "Problem", "Record", "Reference", "RegistryError",
           "ResumeError", "Snapshot", "TrainingProblem", "TrainingState", "build_problem", "register_problem"]
