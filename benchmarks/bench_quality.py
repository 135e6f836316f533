"""asv track_*: statistical quality per estimator at fixed parameters, tracked per commit beside
speed: the total variance and the bias norm of one gradient estimate on
bernoulli-quadratic(d=6, data_seed=0) (coupled units, exact gradient).

Values are exact (float64 enumeration of the estimator's Bernoulli randomness, after its
seeded warm-up or adaptation) where the harness can enumerate, else Monte Carlo over 4,000 seeded
estimates, so a changed number means changed code, not luck.
"""
from __future__ import annotations

from bench import harness

from ._common import ESTIMATOR_NAMES

PROBLEM = ("bernoulli-quadratic", {"d": 6, "data_seed": 0})
SAMPLES, WARMUP = 4000, 1000


def _measure(name: str) -> dict:
    result = harness.run(harness.make_config(name, {}, *PROBLEM, 0, SAMPLES, warmup=WARMUP))
    values = {m.name: m.value for m in result.metrics if m.scope == "all" and m.step is None and m.epoch is None}
    exact = "exact_variance" in values
    return {"status": result.status, "error": result.error, "exact": exact,
            "variance": values.get("exact_variance" if exact else "variance"),
            "bias": values.get("exact_bias_norm" if exact else "bias_norm")}


class Quality:
    params = [ESTIMATOR_NAMES]
    param_names = ["estimator"]

    def setup_cache(self):
        return {name: _measure(name) for name in ESTIMATOR_NAMES}

    setup_cache.timeout = 600

    def setup(self, cache, estimator):
        if cache.get(estimator, {}).get("status") != "finished":
            raise NotImplementedError(f"{estimator}: {cache.get(estimator, {}).get('error', 'not measured')}")

    def track_variance(self, cache, estimator):
        return cache[estimator]["variance"]

    track_variance.unit = "gradient units^2"

    def track_bias_norm(self, cache, estimator):
        return cache[estimator]["bias"]

    track_bias_norm.unit = "gradient units"
