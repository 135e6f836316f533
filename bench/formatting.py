"""The one number formatter of every table the suite prints: a value, and its error where there is
one, in a named style (the report's, or the terminal summary's compact one)."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Union

import numpy as np
import pandas as pd

Spec = Union[str, Callable[[float], str]]  # a format spec ('.4g') or a function of the number


@dataclasses.dataclass(frozen=True)
class NumberStyle:
    """How missing values, infinities and the error are written."""

    missing: str
    infinity: str
    negative_infinity: str
    separator: str
    zero_error: bool  # write '± 0' (True) or leave a zero error out (False)


REPORT = NumberStyle(missing="–", infinity="∞", negative_infinity="−∞", separator=" ± ", zero_error=True)
TERMINAL = NumberStyle(missing="-", infinity="inf", negative_infinity="-inf", separator="±", zero_error=False)


def _written(number: float, spec: Spec) -> str:
    return spec(number) if callable(spec) else f"{number:{spec}}"


def estimate(value, error=None, spec: Spec = ".4g", error_spec: Spec | None = None,
             style: NumberStyle = REPORT) -> str:
    """``value ± error`` with format specs (``error_spec`` defaults to ``spec``): the style's mark for
    a missing or NaN value and for infinities, and no error where it is missing, NaN or infinite (or
    zero, where the style says so). Every 'mean ± sd' and '± s.e.' of the tables comes from here."""
    if value is None or value is pd.NA:
        return style.missing
    value = float(value)
    if math.isnan(value):
        return style.missing
    if math.isinf(value):
        return style.infinity if value > 0 else style.negative_infinity
    text = _written(value, spec)
    if error is not None and not pd.isna(error) and np.isfinite(float(error)):
        error = float(error)
        if style.zero_error or error > 0:
            text += style.separator + _written(error, error_spec or spec)
    return text


def one_digit(error: float) -> str:
    """An error to one significant digit, positional between 1e-3 and 1e4 ('0.05', '300'), else '2e-05'."""
    if 1e-3 <= error < 1e4:
        return np.format_float_positional(error, precision=1, unique=False, fractional=False).rstrip(".")
    return f"{error:.0e}"
