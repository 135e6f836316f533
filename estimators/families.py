"""Estimator families (the README's "family" column): the groups the report colours by.

Each estimator class declares its ``family`` trait (a subclass inherits its parent's); the harness
stores it with every run, so the report needs neither this module nor the estimator's code.
"""
from __future__ import annotations

from estimators.base import FAMILY_ORDER, OTHER_FAMILY

__all__ = ["FAMILY_ORDER", "OTHER_FAMILY", "family_of"]


def family_of(cls: type) -> str:
    """A class's declared family, 'other' where it declares none (a class not built on Estimator)."""
    declared = getattr(cls, "family", None)
    return declared if isinstance(declared, str) and declared else OTHER_FAMILY
