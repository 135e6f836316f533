"""asv time_*: one training step of the paper's MNIST gater, and the gated layer at test time,
dense (every expert unit) against conditional (only the active ones).

Inputs are seeded uniform pixels, not MNIST, so no data set is needed: the cost of a step does not
depend on the pixel values. Skipped (NotImplementedError) where problems.gater or
problems.conditional is not in this version.
"""
from __future__ import annotations

import importlib

import torch

import estimators
import problems
from bench.harness import seeded_noise
from bench.specs import parse_spec

from ._common import require_problem

BATCH = 32  # the paper's mini-batch
GATE_ESTIMATORS = ["straight-through", "sts(beta_noise=40.1)", "reinforce-optimal", "noisy-rectifier"]


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise NotImplementedError(f"{name} is not in this version") from None
        raise


def _pixels(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(rows, 784, generator=torch.Generator().manual_seed(seed))


class GaterTrainingStep:
    """SGD step on one mini-batch of 32: gater, estimator at the 2000 gates, expert, output,
    sparsity criterion, backward, max-norm (mnist-gater with its default 784-400-2000 shape)."""

    params = [GATE_ESTIMATORS]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        _module("problems.gater")
        require_problem("mnist-gater")
        name, params = parse_spec(estimator)
        self.gate = estimators.build_estimator(name, params)
        self.noise = seeded_noise(0, 0, torch.device("cpu"))
        self.trainer = problems.build_problem("mnist-gater", {}).trainer(self.gate, 0)
        self.x = _pixels(BATCH)
        self.y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(1))
        self.time_training_step(estimator)

    def time_training_step(self, estimator):
        with self.gate.drawing_from(self.noise):
            self.trainer.step(self.x, self.y)


class GatedLayer:
    """Test-time class logits of a batch through the gated layer with 10% of the 2000 gates on."""

    params = [[1, 8, 64]]
    param_names = ["batch"]
    timeout = 120

    def setup(self, batch):
        _module("problems.gater")
        self.conditional = _module("problems.conditional")
        require_problem("mnist-gater")
        problem = problems.build_problem("mnist-gater", {})
        model = problem.build_model(estimators.build_estimator("straight-through"), 0).eval()
        with torch.no_grad():
            model.tune(_pixels(2000, seed=2))  # threshold: 10% of the gates on
        self.model, self.x = model, _pixels(batch, seed=3)

    def time_dense(self, batch):
        with torch.no_grad():
            self.conditional.dense_forward(self.model, self.x)

    def time_conditional(self, batch):
        with torch.no_grad():
            self.conditional.conditional_forward(self.model, self.x)
