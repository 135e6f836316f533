"""The MNIST training kit: what the training problems (the gater, the MLP, the sigmoid-belief-net
trainer, the models to come) share, so that each of them keeps only its model and objective.

- seed streams: ``seed_stream`` / ``seeded_generator`` and the named streams ``Stream`` (MNIST
  problems) and ``BeliefNetStream`` (sigmoid belief nets), one independent generator per purpose;
- data: ``load_splits`` (the 50,000 / 10,000 / 10,000 split), ``first_examples``, ``device_splits``,
  ``subset`` (the domain of a subset size) and ``Binariser`` (binary pixels, 'dynamic' or 'static');
- layers and optimiser: ``seeded_linear``, ``sgd``;
- the loop: ``train_epoch`` (shuffled mini-batches, sums kept on the device, progress),
  ``chunked_sums`` (evaluation in chunks), ``Stopwatch`` (device-synchronised wall time) and
  ``MnistTrainingProblem``, the base class with the data set, subsets and progress bookkeeping.
"""
from __future__ import annotations

import enum
import math
import time
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from estimators.domains import Count
from problems.base import TrainingProblem

INPUTS = 784
CLASSES = 10
TRAIN_EXAMPLES = 50_000  # the split: 50,000 train / 10,000 valid / 10,000 test
EVAL_EXAMPLES = 10_000
EVAL_CHUNK = 2_500  # examples per evaluation step: bounds memory on 10,000 examples
PROGRESS_EVERY = 100  # mini-batches between progress reports
BINARISATIONS = ("dynamic", "static")


# -- seed streams --------------------------------------------------------------------------------------
class Stream(enum.IntEnum):
    """Seed streams of the MNIST training problems: ``seeded_generator(seed, Stream.X)`` is one
    independent generator per purpose. The values are part of every stored result: never change one."""

    PROBE_DATA = 0             # mlp-probe: the toy net and mini-batch, from ``data_seed``
    INIT = 1                   # model initialisation, from the run's seed
    ORDER = 2                  # training-example order, one permutation per epoch
    EVAL_NOISE = 3             # MLP: the units' noise of the sampled errors
    PROBE_BATCHES = 4          # MLP: the checkpoints' probe and variance mini-batches
    BINARISE = 5               # Binariser's Bernoulli draws
    FLIP_REFERENCE = 7         # mlp-probe: the unit-flip reference, from ``reference_seed``
    VAE_PROBE = 60             # VAE: the checkpoints' probe mini-batches and their binarisation
    VAE_REFERENCE = 61         # VAE: (seed, VAE_REFERENCE, step) a checkpoint probe's ``reference_seed``
    VAE_EVALUATION = 62        # VAE: latent draws and dynamic binarisation of the ELBO / bound evaluations
    VAE_ELBO = 63              # VAE: the extra draw of the training ELBO (relaxed or biased estimators)
    VAE_DECODER = 64           # VAE (DisARM protocol): the fresh draw z ~ q of the decoder and prior gradients
    CHECKPOINT_REFERENCE = 100  # + epoch: a checkpoint probe's ``reference_seed``
    CHECKPOINT_NOISE = 200     # + epoch: the units' noise of a checkpoint's mini-batch variance


class BeliefNetStream(enum.IntEnum):
    """Seed streams of the sigmoid belief nets (keys (seed, stream, ...)); values never change."""

    INIT = 0       # (seed, INIT, layer): a layer's initial weights and biases
    LOSS = 1       # (data_seed, LOSS, layer): a layer's seeded loss f_l
    REFERENCE = 2  # (data_seed, REFERENCE, reference_samples): the sampled reference
    EVALUATION = 3  # (seed, EVALUATION): the Monte Carlo training loss


def seed_stream(*key: int) -> int:
    """An independent 63-bit seed per key, e.g. (seed, stream) or (seed, stream, layer)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)


def seeded_generator(*key: int, device: torch.device | str | None = None) -> torch.Generator:
    """A torch generator on ``device`` (default the CPU) seeded with ``seed_stream(*key)``."""
    return torch.Generator(device or "cpu").manual_seed(seed_stream(*key))


# -- data ----------------------------------------------------------------------------------------------
def load_splits(dataset: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The 50,000 / 10,000 / 10,000 split (float32 images in [0, 1], int64 labels) on the CPU;
    ``load_dataset`` parses the files once per process. (Tests fake MNIST by patching this.)"""
    from problems.datasets import load_dataset

    splits = load_dataset(dataset)
    return {name: (torch.as_tensor(getattr(splits, name)[0], dtype=torch.float32).reshape(-1, INPUTS),
                   torch.as_tensor(getattr(splits, name)[1], dtype=torch.long))
            for name in ("train", "valid", "test")}


def first_examples(split, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of (images, labels); 0 = all."""
    x, y = split
    return (x[:n], y[:n]) if n else (x, y)


def device_splits(dataset: str, train_subset: int, eval_subset: int,
                  device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """train / valid / test (images, labels) on ``device``: the first ``train_subset`` training
    and ``eval_subset`` validation and test examples (0 = all)."""
    splits = load_splits(dataset)
    parts = {"train": first_examples(splits["train"], train_subset),
             "valid": first_examples(splits["valid"], eval_subset),
             "test": first_examples(splits["test"], eval_subset)}
    return {name: (x.to(device), y.to(device)) for name, (x, y) in parts.items()}


def subset(most: int) -> Count:
    """The domain of a subset size: 0 (all) or 1 up to ``most`` examples."""
    return Count(1, most, zero="all")


class Binariser:
    """Binary pixels from intensities in [0, 1]: Bernoulli(intensity) draws seeded from ``seed``
    (stream ``Stream.BINARISE``).

    'dynamic': a fresh draw at every call from one generator per device seeded once, so a model
    sees a new binarisation of an image at every use and a run is reproducible from its seed
    (apply it to each mini-batch as it is used). 'static': one fixed draw, the same on every
    call with the same images (apply it once to a whole split). Draws on a CUDA device differ
    from the CPU's for the same seed."""

    def __init__(self, mode: str, seed: int):
        if mode not in BINARISATIONS:
            raise ValueError(f"binarisation must be one of {', '.join(BINARISATIONS)}, got {mode!r}")
        self.mode, self.seed = mode, seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.mode == "static":
            return seeded_generator(self.seed, Stream.BINARISE, device=device)
        if device not in self._generators:
            self._generators[device] = seeded_generator(self.seed, Stream.BINARISE, device=device)
        return self._generators[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Binary images (x's shape, dtype and device) with P(pixel = 1) = its intensity."""
        return torch.bernoulli(x, generator=self._generator(x.device))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Where each device's dynamic draws stand (a static binariser has no state)."""
        return {str(device): generator.get_state() for device, generator in self._generators.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for device, generator_state in state.items():
            self._generator(torch.device(device)).set_state(generator_state)


# -- layers and optimiser ------------------------------------------------------------------------------
def seeded_linear(fan_in: int, fan_out: int, generator: torch.Generator, bias: float = 0.0) -> torch.nn.Linear:
    """W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from ``generator`` (torch's default range), b = bias."""
    layer = torch.nn.utils.skip_init(torch.nn.Linear, fan_in, fan_out)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(fan_out, fan_in, generator=generator) * (2 * bound) - bound)
        layer.bias.fill_(bias)
    return layer


def sgd(groups: list[dict], lr: float, momentum: float) -> torch.optim.SGD:
    """SGD with momentum; the fused kernel (one pass over parameters, gradients and momentum
    buffers: about 9% of a CPU training step saved) where this torch and device have it."""
    try:
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)


# -- the loop --------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall seconds of device work: the device is synchronised when it starts and when read."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.began = time.perf_counter()

    def seconds(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.began


def _add(sums: list, values: Sequence) -> None:
    """sums[i] += values[i]: in place for tensors (their dtype kept), rebinding for Python numbers."""
    for i, value in enumerate(values):
        sums[i] += value


def train_epoch(step: Callable[[torch.Tensor, torch.Tensor], Sequence], data: tuple[torch.Tensor, torch.Tensor],
                batch_size: int, order: torch.Generator, sums: Sequence,
                modules: Sequence[torch.nn.Module] = (),
                progress: Callable[[int], None] | None = None) -> tuple[list, float]:
    """One timed training pass: ``modules`` put in training mode, ``data`` = (x, y) in a fresh
    order drawn from the CPU generator ``order``, ``step(x, y)`` on each mini-batch of
    ``batch_size``. The values ``step`` returns are added to ``sums`` (device tensors, in place:
    no host synchronisation; or Python numbers); ``progress(k)`` reports every 100 mini-batches
    and at the end. Returns (sums, wall seconds of the pass)."""
    x, y = data
    watch = Stopwatch(x.device)
    permutation = torch.randperm(x.shape[0], generator=order).to(x.device)
    xs, ys = x[permutation], y[permutation]
    for module in modules:
        module.train()
    sums = list(sums)
    batches = math.ceil(xs.shape[0] / batch_size)
    reported = 0
    for index in range(batches):
        part = slice(index * batch_size, (index + 1) * batch_size)
        _add(sums, step(xs[part], ys[part]))
        if progress is not None and ((index + 1) % PROGRESS_EVERY == 0 or index + 1 == batches):
            progress(index + 1 - reported)
            reported = index + 1
    return sums, watch.seconds()


def chunked_sums(measure: Callable[[torch.Tensor, torch.Tensor], Sequence], x: torch.Tensor, y: torch.Tensor,
                 sums: Sequence, chunk: int = EVAL_CHUNK) -> list:
    """Evaluation in chunks of ``chunk`` examples: the values ``measure(x_chunk, y_chunk)``
    returns, added to ``sums`` (device tensors, in place, keeping their dtype: no host sync)."""
    sums = list(sums)
    for start in range(0, x.shape[0], chunk):
        _add(sums, measure(x[start:start + chunk], y[start:start + chunk]))
    return sums


class MnistTrainingProblem(TrainingProblem):
    """Base of the MNIST training problems: ``dataset`` (a class attribute, 'mnist' or
    'fashion-mnist'), the subsets ``train_subset`` / ``eval_subset`` (first N examples, 0 = all),
    ``epochs`` passes in mini-batches of ``batch_size``; subclasses set these in ``__init__``."""

    dataset: ClassVar[str] = ""
    epochs: int
    batch_size: int
    train_subset: int
    eval_subset: int

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """train / valid / test (images, labels) on the problem's device, subsets applied."""
        return device_splits(self.dataset, self.train_subset, self.eval_subset, self.device)

    def batches_per_epoch(self) -> int:
        return math.ceil((self.train_subset or TRAIN_EXAMPLES) / self.batch_size)

    def progress_total(self) -> int:
        return self.epochs * self.batches_per_epoch()
