"""asv time_*: the MLP regulariser problem (problems/mlp.py): one SGD step of the 784-500-500-10
net with the estimator at every hidden unit, and one unit-flip estimate of the true hidden-bias
gradient on a 100-example probe batch (what each checkpoint's reference costs per draw).

Inputs are seeded uniform pixels, not MNIST: the cost does not depend on the pixel values.
Skipped (NotImplementedError) where problems.mlp is not in this version.
"""
from __future__ import annotations

import importlib

import torch

import estimators
from bench.harness import seeded_noise

from ._common import require_problem

BATCH = 100  # mnist-mlp's default mini-batch and probe batch
HIDDEN = (500, 500)
UNIT_ESTIMATORS = ["sigmoid", "straight-through-sigmoid", "reinforce-optimal", "gaussian-dropout"]


def _mlp():
    try:
        return importlib.import_module("problems.mlp")
    except ModuleNotFoundError as exc:
        if exc.name == "problems.mlp":
            raise NotImplementedError("problems.mlp is not in this version") from None
        raise


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, 784, generator=generator), torch.randint(0, 10, (BATCH,), generator=generator)


class MlpTrainingStep:
    """Forward through the estimator at both hidden layers, backward, SGD with momentum."""

    params = [UNIT_ESTIMATORS]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        mlp = _mlp()
        require_problem("mnist-mlp")
        self.units = estimators.build_estimator(estimator)
        self.noise = seeded_noise(0, 0, torch.device("cpu"))
        self.model = mlp.Mlp(HIDDEN, torch.Generator().manual_seed(0))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.x, self.y = _batch()
        self.time_training_step(estimator)

    def time_training_step(self, estimator):
        self.optimizer.zero_grad()
        with self.units.drawing_from(self.noise):
            self.model.surrogate(self.x, self.y, self.units).mean().backward()
        self.optimizer.step()


class FlipReference:
    """One unit-flip estimate of the binary net's hidden-bias gradient (1,000 units x 100 examples)."""

    timeout = 120

    def setup(self):
        mlp = _mlp()
        model = mlp.Mlp(HIDDEN, torch.Generator().manual_seed(0))
        x, y = _batch()
        self.probe = mlp.MlpProbe.at(model.layers(), (model.output.weight, model.output.bias), x, y,
                                     reference_samples=1, reference_seed=0)
        self.generator = torch.Generator().manual_seed(1)

    def time_flip_estimate(self):
        self.probe.flip_gradient(self.generator)
