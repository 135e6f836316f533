"""asv time_*: one training step of the linear Bernoulli VAE (problems/vae.py; batch 50, 784-200-784)
per estimator: encoder, the estimator's loss evaluations, backward, Adam (encoder, decoder) and SGD
(prior), as ``bernoulli-vae``'s fit does it. The plain-torch comparison is benchmarks/vae_step.py.

Inputs are seeded binary pixels, not MNIST: the cost does not depend on the pixel values.
Skipped (NotImplementedError) where problems.vae is not in this version.
"""
from __future__ import annotations

import importlib

import torch

import estimators
from bench.harness import seeded_noise
from bench.specs import parse_spec

from ._common import require_problem

BATCH, PIXELS, LATENTS = 50, 784, 200
STEP_ESTIMATORS = ["reinforce-loo(K=2)", "disarm", "arm", "rebar", "relax", "nvil", "muprop", "gumbel-softmax",
                   "straight-through-sigmoid", "reinmax"]


def _vae():
    try:
        return importlib.import_module("problems.vae")
    except ModuleNotFoundError as exc:
        if exc.name == "problems.vae":
            raise NotImplementedError("problems.vae is not in this version") from None
        raise


class VaeTrainingStep:
    """One step of the linear VAE with the estimator at its 200 latents."""

    params = [STEP_ESTIMATORS]
    param_names = ["estimator"]
    timeout = 120

    def setup(self, estimator):
        vae = _vae()
        require_problem("bernoulli-vae")
        name, params = parse_spec(estimator)
        self.units = estimators.build_estimator(name, params)
        self.noise = seeded_noise(0, 0, torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        self.x = torch.bernoulli(torch.full((BATCH, PIXELS), 0.2), generator=generator)
        self.model = vae.VaeModel("linear", PIXELS, LATENTS, LATENTS, generator, self.x.mean(0).clamp(0.01, 0.99))
        self.adam = torch.optim.Adam(self.model.encoder_parameters() + self.model.decoder_parameters(), lr=1e-4)
        self.sgd = torch.optim.SGD([self.model.prior_logits], lr=1e-2)
        self.time_training_step(estimator)

    def time_training_step(self, estimator):
        self.adam.zero_grad()
        self.sgd.zero_grad()
        self.units.zero_grad()
        with self.units.drawing_from(self.noise):
            self.model.surrogate(self.x, self.model.encode(0, self.x), self.units).mean().backward()
        self.adam.step()
        self.sgd.step()
