"""Estimator families (the README's "family (module)" column): the groups the report colours by.

The harness stores each run's family with the run, so the report needs neither this table nor the
estimator's code; this module answers for a class at run time (and for runs stored before that).
"""
from __future__ import annotations

# Built-in estimators by the module that defines them.
FAMILY_BY_MODULE = {
    "reinforce": "score function", "antithetic": "score function",
    "nvil": "control variate", "muprop": "control variate", "rebar": "control variate",
    "gumbel": "relaxation", "straight_through": "straight-through", "slope_annealed_st": "straight-through",
    "gapped_st": "straight-through", "reinmax": "straight-through", "perturbation": "perturbation",
    "exact": "exact", "sts": "non-binary", "noisy_rectifier": "non-binary", "paper_baselines": "non-binary",
    "gaussian_dropout": "non-binary", "arsm": "score function", "indecater": "score function",
    "advantage": "sequence RL", "routers": "router",
}
FAMILY_ORDER = ("exact", "score function", "control variate", "relaxation", "straight-through", "perturbation",
                "non-binary", "sequence RL", "router", "other")
OTHER_FAMILY = "other"


def family_of(cls: type) -> str:
    """A class's family: the ``family`` it declares (a plugin may), else that of the first built-in
    estimator module in its bases (a plugin subclass of a built-in joins its parent's family),
    else 'other'."""
    declared = getattr(cls, "family", None)
    if isinstance(declared, str) and declared:
        return declared
    for base in cls.__mro__:
        top, _, leaf = base.__module__.rpartition(".")
        if top == "estimators" and leaf in FAMILY_BY_MODULE:
            return FAMILY_BY_MODULE[leaf]
    return OTHER_FAMILY
