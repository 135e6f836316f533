"""Measured speedup of conditional over dense execution of the gated layer, against the FLOP bound.

    python benchmarks/conditional_speedup.py [--threads 1] [--repeats 300] [--device cpu,cuda] [--statistic median]
    python benchmarks/conditional_speedup.py --model MODEL.pt [--data-dir DIR] [--batches 200] [--threads 1] ...

Batch 1, 8 and 64: the median (or min) wall time of ``dense_forward`` and ``conditional_forward``
(its default ``auto`` strategy, and the ``union`` and ``per-example`` ones) under
``torch.inference_mode``, in blocks of consecutive calls that alternate between the paths (so load
drift hits all of them alike), over a pool of input batches. Prints the FLOP bound at the measured
active fraction per example, the measured speedups (the default's also as a percentage of the
bound), the union's share of the units (what the union strategy computes) and the largest
|conditional - dense| output difference. CUDA timings synchronise around every call.

Without ``--model``: a stand-in with random weights for the paper's shape 784-400-2000 and a
larger-saving one (bottleneck 100, expert 4000), binary gates on above a threshold set so 10% are
on, Gaussian inputs: each example's active set is nearly independent of the others' (the union
strategy's worst case).

With ``--model``: a trained gater kept by ``python -m bench paper --keep-models DIR`` (or ``run``),
on its data set's test images (the loader's data directory, or ``--data-dir``). Besides its own
gates ("trained") it measures "random" gates at the same sparsity: each example's test-time gate
values moved to a random permutation of the units, so every example keeps its number of active
gates but the sets no longer share structure across examples. Per batch size: the mean fraction of
units in the union of a batch's active sets over ``--batches`` random test batches, for both, and
the FLOP bound of the union strategy (dense multiply-adds over those of the gater plus the union's
expert rows and output columns); then the timings, the union strategy's also with random gates.
Do trained gates, which may be structured, leave a smaller union than random ones?
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from problems.conditional import GatedShape, conditional_forward, dense_forward, flops_per_example, inference_gates

SHAPES = ((784, 400, 2000, 10), (784, 100, 4000, 10))
BATCHES = (1, 8, 64)
ACTIVE_FRACTION = 0.1
INPUT_POOL = 16
BLOCK = 10  # consecutive timed calls of one path; paths alternate block by block
UNION_BATCHES = 200  # random test batches per batch size behind the union statistics (--batches)
STATISTICS = {"median": statistics.median, "min": min}
Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per path and setting")
    parser.add_argument("--statistic", choices=("median", "min"), default="median",
                        help="summary of the repeats (min: least disturbed by other load on the machine)")
    parser.add_argument("--device", default=None,
                        help="comma-separated devices (default: cpu, plus cuda when available; cpu with --model)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a trained gater kept with --keep-models: measure its real gates (and random ones)")
    parser.add_argument("--data-dir", type=Path, default=None, help="directory holding mnist/ (with --model)")
    parser.add_argument("--batches", type=int, default=UNION_BATCHES,
                        help="random test batches per batch size for the union statistics (with --model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.device or ("cpu,cuda" if torch.cuda.is_available() and args.model is None else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), {args.repeats} repeats; "
          f"times are the {args.statistic} in microseconds")
    if args.model is not None:
        trained_main(args, devices.split(","))
        return
    print(f"stand-in networks with random weights, {ACTIVE_FRACTION:.0%} of gates on")
    for device in devices.split(","):
        print(f"\ndevice {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else ""))
        print(f"{'shape':<13} {'batch':>5} {'on/ex':>6} {'union':>6} {'bound':>6} {'dense us':>9} "
              f"{'auto us':>9} {'speedup':>8} {'%bound':>7} {'union us':>9} {'speedup':>8} "
              f"{'per-ex us':>9} {'speedup':>8} {'max|diff|':>9}")
        for shape in SHAPES:
            for batch in BATCHES:
                print(measure(shape, batch, torch.device(device), args.repeats, STATISTICS[args.statistic]))


# -- timing ----------------------------------------------------------------------------------------------
def timed_paths(paths: dict[str, tuple[nn.Module, Forward]], pool: Sequence[torch.Tensor], device: torch.device,
               repeats: int, statistic=statistics.median,
               prepare: Callable[[int], None] | None = None) -> dict[str, float]:
    """Microseconds per call of each path (its network and function) on the pool's batches: the
    statistic over ``repeats`` timed calls, in blocks of BLOCK consecutive calls of one path that
    alternate between the paths (block 0 warms up; the first call of each block is not timed).
    ``prepare(i)`` runs before the call on pool batch i, untimed."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for block in range(1 + -(-repeats // BLOCK)):
            for name, (net, path) in paths.items():
                for j in range(BLOCK + 1):
                    i = (block * BLOCK + j) % len(pool)
                    if prepare is not None:
                        prepare(i)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    began = time.perf_counter()
                    path(net, pool[i])
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if block and j:
                        times[name].append(time.perf_counter() - began)
    return {name: statistic(values) * 1e6 for name, values in times.items()}


PATHS: dict[str, Forward] = {"dense": dense_forward, "auto": conditional_forward,
                           "union": lambda n, x: conditional_forward(n, x, "union"),
                           "per-example": lambda n, x: conditional_forward(n, x, "per-example")}


def measure(shape, batch: int, device: torch.device, repeats: int, statistic=statistics.median) -> str:
    """One row of the stand-in table (see the module docstring)."""
    net = StandIn(*shape).to(device)
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(1024, shape[0], generator=generator).to(device)
    pool = [torch.randn(batch, shape[0], generator=generator).to(device) for _ in range(INPUT_POOL)]
    with torch.inference_mode():
        logits = net.gater_out(torch.tanh(net.gater_hidden(calibration)))
        net.threshold = torch.quantile(logits.flatten().double().cpu(), 1 - ACTIVE_FRACTION).item()
        active = torch.stack([inference_gates(net, x).ne(0) for x in pool])  # (pool, batch, gates)
        on_fraction = active.float().mean().item()
        union_fraction = active.any(1).float().mean().item()
        diff = max((conditional_forward(net, x) - dense_forward(net, x)).abs().max().item() for x in pool)
    summary = timed_paths({name: (net, path) for name, path in PATHS.items()}, pool, device, repeats, statistic)
    bound = flops_per_example(net, on_fraction).speedup_bound
    speedup = {name: summary["dense"] / summary[name] for name in PATHS}
    label = "-".join(map(str, shape[:3]))
    return (f"{label:<13} {batch:>5} {on_fraction:>6.3f} {union_fraction:>6.3f} {bound:>5.2f}x "
            f"{summary['dense']:>9.1f} {summary['auto']:>9.1f} {speedup['auto']:>7.2f}x {speedup['auto'] / bound:>6.0%} "
            f"{summary['union']:>9.1f} {speedup['union']:>7.2f}x "
            f"{summary['per-example']:>9.1f} {speedup['per-example']:>7.2f}x {diff:>9.1e}")


class StandIn(nn.Module):
    """A module with the MNIST gater's parts and random weights; binary test-time gates, 1 where the
    gate logit exceeds a threshold (the sigmoid gaters' test time, appendix A)."""

    def __init__(self, inputs: int, hidden: int, gates: int, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.gater_hidden = nn.Linear(inputs, hidden)
        self.gater_out = nn.Linear(hidden, gates)
        self.expert = nn.Linear(inputs, gates)
        self.output = nn.Linear(gates, classes)
        self.threshold = 0.0

    def test_gates(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits > self.threshold).to(logits.dtype)


# -- a trained gater ---------------------------------------------------------------------------------------
class ShuffledGates(nn.Module):
    """A trained network whose test-time gate values are moved, per example, to a random permutation
    of the units (``permutations``, one row per example of the batch): every example keeps its
    number of active gates and their values, the structure across examples is gone."""

    def __init__(self, net: nn.Module, permutations: torch.Tensor):
        super().__init__()
        self.net = net
        self.gater_hidden, self.gater_out, self.expert, self.output = (net.gater_hidden, net.gater_out,
                                                                       net.expert, net.output)
        self.permutations = permutations

    def test_gates(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net.test_gates(logits).gather(1, self.permutations[:logits.shape[0]])


def random_permutations(batch: int, units: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, units): an independent uniform permutation of the units per row."""
    return torch.rand(batch, units, generator=generator).argsort(1)


@dataclasses.dataclass
class UnionStatistics:
    """Per batch size, over random test batches: mean fraction of gates on per example, and the
    mean and sd of the fraction of units in a batch's union of active sets, trained and random."""

    batch: int
    on_fraction: float
    trained_mean: float
    trained_sd: float
    random_mean: float
    random_sd: float


def union_statistics(net: nn.Module, x: torch.Tensor, batch: int, batches: int,
                     generator: torch.Generator) -> UnionStatistics:
    """Union fractions of ``batches`` batches of ``batch`` examples drawn from ``x`` (without
    replacement within a batch), with the trained gates and with the same gates shuffled per
    example (:class:`ShuffledGates`)."""
    trained, shuffled, on = [], [], []
    units = net.gater_out.out_features
    with torch.inference_mode():
        for _ in range(batches):
            rows = torch.randperm(x.shape[0], generator=generator)[:batch].to(x.device)
            active = inference_gates(net, x[rows]).ne(0)
            moved = active.gather(1, random_permutations(batch, units, generator).to(x.device))
            on.append(active.float().mean().item())
            trained.append(active.any(0).float().mean().item())
            shuffled.append(moved.any(0).float().mean().item())
    sd = (lambda values: statistics.stdev(values) if len(values) > 1 else 0.0)
    return UnionStatistics(batch, statistics.fmean(on), statistics.fmean(trained), sd(trained),
                           statistics.fmean(shuffled), sd(shuffled))


def union_bound(shape: GatedShape, union_fraction: float) -> float:
    """The FLOP bound of the union strategy: dense multiply-adds over those of the gater plus the
    union's expert rows and output columns."""
    count = flops_per_example(shape, union_fraction)
    return count.dense / count.conditional


def held_out_images(dataset: str, device: torch.device) -> torch.Tensor:
    """The data set's 10,000 test images, flattened, on ``device``."""
    from problems.training import load_splits

    return load_splits(dataset)["test"][0].to(device)


def trained_rows(kept, x: torch.Tensor, device: torch.device, repeats: int, batches: int,
                 statistic=statistics.median, seed: int = 0) -> list[tuple[UnionStatistics, dict[str, float], float]]:
    """For each batch size: the union statistics, the microseconds per call of each path (the four
    with the trained gates, and 'union random' / 'dense random' with shuffled gates), and the
    largest |conditional - dense| output difference over the pool, trained and random."""
    net = kept.model.to(device).eval()
    units = net.gater_out.out_features
    generator = torch.Generator().manual_seed(seed)
    out = []
    for batch in BATCHES:
        stats = union_statistics(net, x, batch, batches, generator)
        pool = [x[torch.randperm(x.shape[0], generator=generator)[:batch].to(x.device)] for _ in range(INPUT_POOL)]
        permutations = [random_permutations(batch, units, generator).to(device) for _ in range(INPUT_POOL)]
        shuffled = ShuffledGates(net, permutations[0])

        def prepare(i: int) -> None:
            shuffled.permutations = permutations[i]

        with torch.inference_mode():
            diff = 0.0
            for i, xb in enumerate(pool):
                prepare(i)
                diff = max(diff, (conditional_forward(net, xb) - dense_forward(net, xb)).abs().max().item(),
                           (conditional_forward(shuffled, xb, "union") - dense_forward(shuffled, xb)).abs().max().item())
        paths = {name: (net, path) for name, path in PATHS.items()}
        paths.update({"dense random": (shuffled, dense_forward), "union random": (shuffled, PATHS["union"])})
        out.append((stats, timed_paths(paths, pool, device, repeats, statistic, prepare), diff))
    return out


def trained_main(args, devices: list[str]) -> None:
    """The trained-gater table (see the module docstring), per device."""
    from bench.checkpoints import ModelFileError, load_model
    from problems.datasets import DataError

    if args.data_dir is not None:
        os.environ["STOCHGRAD_BENCH_DATA"] = str(args.data_dir.resolve())
    try:
        kept = load_model(args.model)
    except (ModelFileError, ValueError) as exc:
        raise SystemExit(f"error: {' '.join(str(exc).split())}") from None
    if not hasattr(kept.model, "gater_out"):
        raise SystemExit(f"error: {args.model} holds a {kept.config.problem} model, not a gater")
    shape = GatedShape.of(kept.model)
    print(f"trained gater: {kept.config.estimator_spec} on {kept.config.problem_spec}, seed {kept.config.seed}; "
          f"shape {shape.inputs}-{shape.hidden}-{shape.gates}-{shape.classes}; union statistics over "
          f"{args.batches} random test batches per size (mean, sd); 'random' = the same gates per example "
          f"moved to random units")
    for device in devices:
        device = torch.device(device)
        try:
            x = held_out_images(kept.problem.dataset, device)
        except DataError as exc:
            raise SystemExit(f"error: {' '.join(str(exc).split())}") from None
        print(f"\ndevice {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
        print(f"{'batch':>5} {'on/ex':>6} {'union':>13} {'random':>13} {'bound':>6} {'u-bound':>7} {'r-bound':>7} "
              f"{'dense us':>9} {'auto us':>9} {'speedup':>8} {'%bound':>7} {'union us':>9} {'speedup':>8} "
              f"{'per-ex us':>9} {'speedup':>8} {'rnd union':>9} {'speedup':>8} {'max|diff|':>9}")
        for stats, us, diff in trained_rows(kept, x, device, args.repeats, args.batches, STATISTICS[args.statistic]):
            bound = flops_per_example(shape, stats.on_fraction).speedup_bound
            speedup = {name: us["dense"] / us[name] for name in PATHS}
            random_speedup = us["dense random"] / us["union random"]
            print(f"{stats.batch:>5} {stats.on_fraction:>6.3f} {stats.trained_mean:>6.3f}±{stats.trained_sd:<6.3f}"
                  f"{stats.random_mean:>6.3f}±{stats.random_sd:<6.3f} {bound:>5.2f}x "
                  f"{union_bound(shape, stats.trained_mean):>6.2f}x {union_bound(shape, stats.random_mean):>6.2f}x "
                  f"{us['dense']:>9.1f} {us['auto']:>9.1f} {speedup['auto']:>7.2f}x {speedup['auto'] / bound:>6.0%} "
                  f"{us['union']:>9.1f} {speedup['union']:>7.2f}x {us['per-example']:>9.1f} "
                  f"{speedup['per-example']:>7.2f}x {us['union random']:>9.1f} {random_speedup:>7.2f}x {diff:>9.1e}")


if __name__ == "__main__":
    main()
