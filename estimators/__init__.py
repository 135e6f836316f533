"""Gradient estimators for layers of stochastic units, one module per family, and their registry."""
from estimators.base import (Estimator, LossFn, Noise, NoiseLaw, NotEnumerable, PathwiseEstimator, ReplayNoise,
                             all_configurations, attach_gradient, parameter_trait)
from estimators.registry import Registry, RegistryError, load_plugin

ESTIMATORS = Registry(
    kind="estimator",
    group="bench.estimators",
    builtin_modules=("estimators.reinforce", "estimators.straight_through", "estimators.sts",
                     "estimators.noisy_rectifier", "estimators.paper_baselines",
                     "estimators.perturbation", "estimators.exact", "estimators.gumbel",
                     "estimators.gapped_st", "estimators.reinmax", "estimators.slope_annealed_st",
                     "estimators.antithetic", "estimators.muprop", "estimators.nvil", "estimators.rebar",
                     "estimators.gaussian_dropout", "estimators.arsm", "estimators.indecater",
                     "estimators.advantage", "estimators.routers"),
)
register_estimator = ESTIMATORS.register


def unit_estimator_names() -> list[str]:
    """Registered estimators that serve layers of binary or categorical units (every one but the
    advantage estimators of sequence problems and the router estimators of mixture-of-experts
    problems, whose ``variables`` traits are 'sequence' and 'router')."""
    return [entry.name for entry in ESTIMATORS.entries()
            if getattr(entry.cls, "variables", "binary") not in ("sequence", "router")]


def build_estimator(name: str, params: dict | None = None) -> Estimator:
    """Instantiate a registered estimator by name with keyword parameters."""
    return ESTIMATORS.build(name, params)


__all__ = ["ESTIMATORS", "Estimator", "LossFn", "Noise", "NoiseLaw", "NotEnumerable", "PathwiseEstimator",
           "ReplayNoise", "Registry", "RegistryError", "all_configurations", "attach_gradient",
           "build_estimator", "load_plugin", "unit_estimator_names", "parameter_trait", "register_estimator"]
