"""asv peakmem_*: peak memory of the harness's large-sample path.

One run of 1,000,000 estimates of bernoulli-target(d=100) streams through GradientMoments in
chunks of about 2 M numbers; keeping every estimate instead would add 800 MB (float64), which
this benchmark would show as a step.
"""
from __future__ import annotations

from bench import harness

SAMPLES = 1_000_000


class LargeSampleRun:
    timeout = 600

    def setup(self):
        self.config = harness.make_config("reinforce", {}, "bernoulli-target", {"d": 100}, 0, SAMPLES)

    def peakmem_reinforce_1e6_estimates_d100(self):
        result = harness.run(self.config)
        if result.status != "finished":
            raise RuntimeError(result.error)
