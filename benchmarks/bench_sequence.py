"""asv time_*: the advantage estimators of sequence RL on sequence-bandit() (3 prompts, max_len 3,
G = 4 responses per prompt): 1000 frozen, seeded estimates per timed call (sampling every token,
the rewards, the advantages and the backward pass to the logit table), and the exact moments by
enumerating the groups' (reward, length) classes (per prompt for GRPO, jointly over the prompts
for REINFORCE++: 35^3 outcomes)."""
from __future__ import annotations

BATCH = 1000


def _sequence_names() -> list[str]:
    import estimators

    return [entry.name for entry in estimators.ESTIMATORS.entries() if entry.cls.variables == "sequence"]


class SequenceEstimates:
    """sequence-bandit(): estimates per second = 1000 / reported seconds."""

    params = [["seq-reinforce", "rloo", "grpo", "dr-grpo", "opo", "reinforce-pp", "reinforce-pp-baseline", "remax",
               "seq-optimal-baseline"]]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        import torch

        import estimators
        import problems
        from bench.harness import seeded_noise

        if estimator not in _sequence_names():
            raise NotImplementedError(f"{estimator} is not registered in this version")
        self.problem = problems.build_problem("sequence-bandit", {})
        self.estimator = estimators.build_estimator(estimator)
        self.noise = seeded_noise(0, 0, torch.device("cpu"))
        with self.estimator.drawing_from(self.noise):
            self.problem.sample_gradients(self.estimator, BATCH)
        self.estimator.update_state = False

    def time_1000_estimates(self, estimator):
        with self.estimator.drawing_from(self.noise):
            self.problem.sample_gradients(self.estimator, BATCH)


class SequenceExactMoments:
    """Exact mean and variance of an advantage estimator on sequence-bandit() by class enumeration."""

    params = [["grpo", "reinforce-pp"]]
    param_names = ["estimator"]
    timeout = 300

    def setup(self, estimator):
        import estimators
        import problems

        if estimator not in _sequence_names():
            raise NotImplementedError(f"{estimator} is not registered in this version")
        self.problem = problems.build_problem("sequence-bandit", {})
        self.estimator = estimators.build_estimator(estimator)

    def time_exact_moments(self, estimator):
        self.problem.enumerate_moments(self.estimator)
