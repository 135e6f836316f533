"""asv time_*: the router estimators of mixture-of-experts layers. Estimates on
moe-router(experts=8, top_k=2, inputs=16) (1000 frozen, seeded estimates per timed call: routing,
the experts each estimator asks for, the loss and the backward pass to the router's weights), and
one training step of moe-mnist's classifier on a mini-batch of 100 (experts evaluated only where
asked: DenseMixer's dense pass shows here)."""
from __future__ import annotations

BATCH = 1000
ROUTERS = ["topk-router", "st-router", "densemixer", "default-moe", "reinforce-router", "optimal-baseline-router"]


def _router_names() -> list[str]:
    import estimators

    return [entry.name for entry in estimators.ESTIMATORS.entries() if entry.cls.variables == "router"]


class RouterEstimates:
    """moe-router(experts=8, top_k=2, inputs=16): estimates per second = 1000 / reported seconds."""

    params = [ROUTERS]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        import torch

        import estimators
        import problems
        from bench.harness import seeded_noise

        if estimator not in _router_names():
            raise NotImplementedError(f"{estimator} is not registered in this version")
        self.problem = problems.build_problem("moe-router", {"experts": 8, "top_k": 2, "inputs": 16})
        self.estimator = estimators.build_estimator(estimator)
        self.noise = seeded_noise(0, 0, torch.device("cpu"))
        with self.estimator.drawing_from(self.noise):
            self.problem.sample_gradients(self.estimator, BATCH)
        self.estimator.update_state = False

    def time_1000_estimates(self, estimator):
        with self.estimator.drawing_from(self.noise):
            self.problem.sample_gradients(self.estimator, BATCH)


class RouterTrainingStep:
    """One moe-mnist training step (forward through the router estimator, backward, Adam) on 100 random
    images: top-k routing's conditional computation against DenseMixer's dense pass."""

    params = [["topk-router", "densemixer"]]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        import torch

        import estimators
        from estimators.mixture import MoELayer
        from problems.moe import MoEClassifier

        if estimator not in _router_names():
            raise NotImplementedError(f"{estimator} is not registered in this version")
        generator = torch.Generator().manual_seed(0)
        self.model = MoEClassifier(8, 32, generator)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.estimator = estimators.build_estimator(estimator)
        self.x = torch.rand(100, 784, generator=generator)
        self.y = torch.randint(0, 10, (100,), generator=generator)
        self.layer = MoELayer(2, "renormalised", "topk", lambda mask: self.model.experts(self.x, mask))

    def time_training_step(self, estimator):
        import torch

        surrogate = self.estimator(self.model.logits(self.x),
                                   lambda out: torch.nn.functional.cross_entropy(out, self.y, reduction="none"),
                                   router=self.layer)
        self.optimiser.zero_grad()
        surrogate.mean().backward()
        self.optimiser.step()
