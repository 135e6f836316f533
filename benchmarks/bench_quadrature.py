"""asv time_* / track_*: the cost of exact moments by quadrature (bench/quadrature.py) on the default
problems' hardest cases: REBAR on bernoulli-target(d=4) (8 logistic dimensions, split into one
outer dimension and independent components) and the Gaussian-noise relaxation sigmoid-noise on
bernoulli-quadratic(d=6) (each coordinate additive over the other units given its own). A lost
shortcut shows as a step in time and in evaluations."""
from __future__ import annotations

import re

import estimators
import problems
from bench import quadrature

CASES = {
    "rebar-target-d4": ("rebar", "bernoulli-target", {"d": 4, "t": 0.45, "logit": 0.5, "spread": 2.0}),
    "sigmoid-noise-quadratic-d6": ("sigmoid-noise", "bernoulli-quadratic", {"d": 6}),
}


class Quadrature:
    params = list(CASES)
    param_names = ["case"]
    timeout = 600

    def setup(self, case):
        name, problem, params = CASES[case]
        self.estimator = estimators.build_estimator(name)
        self.problem = problems.build_problem(problem, params)
        self.reference = self.problem.reference()

    def _integrate(self):
        moments, note = quadrature.integrate_exact(self.estimator, self.problem, self.reference)
        if moments is None:
            raise RuntimeError(note)
        return note

    def time_integrate(self, case):
        self._integrate()

    def track_evaluations(self, case):
        return int(re.search(r"([\d,]+) evaluations", self._integrate()).group(1).replace(",", ""))

    track_evaluations.unit = "evaluations"
