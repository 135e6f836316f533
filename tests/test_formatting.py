"""The one number formatter: the report's and the terminal's styles, written exactly."""
import math

import numpy as np
import pytest

from bench.formatting import REPORT, TERMINAL, estimate, one_digit


@pytest.mark.parametrize("args, style, expected", [
    ((1.23456, 0.0123, ".4g", ".2g"), REPORT, "1.235 ± 0.012"),
    ((1.0, 0.0), REPORT, "1 ± 0"),
    ((float("nan"), 1.0), REPORT, "–"),
    ((None,), REPORT, "–"),
    ((math.inf,), REPORT, "∞"),
    ((-math.inf, 1.0), REPORT, "−∞"),
    ((2.0, math.nan), REPORT, "2"),
    ((0.123456, 0.00456, ".3g", one_digit), TERMINAL, "0.123±0.005"),
    ((1.0, 0.0, ".3g", one_digit), TERMINAL, "1"),
    ((12345.0, 2e-5, ".3g", one_digit), TERMINAL, "1.23e+04±2e-05"),
    ((3.0, 260.0, ".3g", one_digit), TERMINAL, "3±300"),
    ((None, 1.0), TERMINAL, "-"),
    ((-math.inf,), TERMINAL, "-inf"),
])
def test_styles_write_exactly(args, style, expected):
    assert estimate(*args, style=style) == expected


def test_one_digit_is_positional_in_range_and_exponential_outside():
    assert [one_digit(x) for x in (0.00149, 0.0451, 7.2, 9999.0, 0.000999, 12345.0)] == \
        ["0.001", "0.05", "7", "10000", "1e-03", "1e+04"]


def test_the_report_and_the_terminal_summary_share_the_formatter():
    from analysis import report
    from bench import summary

    assert report.estimate is estimate and report.MISSING == REPORT.missing
    assert summary._fmt(np.float64(0.5), 0.02, scale=100.0, digits=3) == estimate(50.0, 2.0, ".3g", one_digit, TERMINAL)
