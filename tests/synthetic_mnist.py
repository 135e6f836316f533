"""A plugin for the resume tests' subprocesses: the MNIST gater and the Bernoulli VAE on a small
seeded stand-in for MNIST (784 uniform pixels, labels from a fixed linear map), so a command and
its worker processes (which load plugins like any other) train without a data set."""
import torch

from problems import register_problem
from problems.gater import GaterProblem
from problems.training import first_examples
from problems.vae import VaeTraining

TRAIN, EVALUATION = 3000, 300


def synthetic_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    weights = torch.randn(784, 10, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 784, generator=generator)
        return x, (x - 0.5).matmul(weights).argmax(-1)

    return {"train": split(TRAIN), "valid": split(EVALUATION), "test": split(EVALUATION)}


class SyntheticData:
    """The splits of the stand-in, subsets applied, on the problem's device."""

    dataset = "synthetic"

    def splits(self):
        parts = synthetic_splits()
        sizes = {"train": self.train_subset, "valid": self.eval_subset, "test": self.eval_subset}
        return {name: tuple(t.to(self.device) for t in first_examples(parts[name], sizes[name])) for name in parts}


@register_problem("synthetic-gater", "The MNIST gater on a seeded stand-in for MNIST (tests)")
class SyntheticGater(SyntheticData, GaterProblem):
    pass


@register_problem("synthetic-bernoulli-vae", "The Bernoulli VAE on a seeded stand-in for MNIST (tests)")
class SyntheticBernoulliVae(SyntheticData, VaeTraining):
    pass
