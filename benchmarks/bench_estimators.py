"""asv time_*: gradient estimates per second for every registered estimator.

Each timed call draws one batch of frozen, seeded estimates (the estimator's forward pass, the
loss, and the backward pass to the logits or the network parameters), so estimates per second =
batch / reported seconds: 1000 on bernoulli-target(d=100), 200 on a 3-layer sigmoid belief net
of width 50. Skipped: pairs the estimator cannot serve (exact beyond 20 units) and stacked
multi-evaluation estimators whose nested evaluations would not fit in memory (finite-difference
on the 3-layer net: (2 x 50)^3 evaluations per estimate).
"""
from __future__ import annotations

from ._common import ESTIMATOR_NAMES, prepared

TARGET_BATCH = 1000
SBN_BATCH = 200


class BernoulliTarget:
    """bernoulli-target(d=100): 100 independent units, L = sum_i (h_i - 0.45)^2."""

    params = [ESTIMATOR_NAMES]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        self.problem, self.estimator, self.noise = prepared(estimator, "bernoulli-target", {"d": 100}, TARGET_BATCH)

    def time_1000_estimates(self, estimator):
        with self.estimator.drawing_from(self.noise):
            self.problem.sample_gradients(self.estimator, TARGET_BATCH)


class SigmoidBeliefNet:
    """sigmoid-belief-net(depth=3,width=50): the estimator at every one of three stochastic layers."""

    params = [ESTIMATOR_NAMES]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        self.problem, self.estimator, self.noise = prepared(estimator, "sigmoid-belief-net",
                                                            {"depth": 3, "width": 50}, SBN_BATCH, layers=(50, 50, 50))

    def time_200_estimates(self, estimator):
        with self.estimator.drawing_from(self.noise):
            self.problem.sample_gradients(self.estimator, SBN_BATCH)
