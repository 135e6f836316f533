"""Measured speedup of conditional over dense execution of the gated layer, against the FLOP bound.

    python benchmarks/conditional_speedup.py [--threads 1] [--repeats 300] [--device cpu,cuda] [--statistic median]

For the paper's shape 784-400-2000 and a larger-saving one (bottleneck 100, expert 4000), 10% of
the gates on, batch 1, 8 and 64: the median (or min) wall time of ``dense_forward`` and
``conditional_forward`` (its default ``auto`` strategy, and the ``union`` and ``per-example`` ones) under
``torch.inference_mode``, in blocks of consecutive calls that alternate between the paths (so load
drift hits all of them alike), over a pool of input batches. Prints the FLOP bound at the measured
active fraction per example, the measured speedups (the default's also as a percentage of the
bound), the union's share of the units (what the union strategy computes) and the largest
|conditional - dense| output difference.

The model is a stand-in with random weights whose binary test-time gates are on above a threshold
set so 10% are on; its inputs are Gaussian, so each example's active set is nearly independent of the
others' (the union strategy's worst case). CUDA timings synchronise around every call.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from problems.conditional import conditional_forward, dense_forward, flops_per_example, inference_gates

SHAPES = ((784, 400, 2000, 10), (784, 100, 4000, 10))
BATCHES = (1, 8, 64)
ACTIVE_FRACTION = 0.1
INPUT_POOL = 16
BLOCK = 10  # consecutive timed calls of one path; paths alternate block by block
STATISTICS = {"median": statistics.median, "min": min}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per path and setting")
    parser.add_argument("--statistic", choices=("median", "min"), default="median",
                        help="summary of the repeats (min: least disturbed by other load on the machine)")
    parser.add_argument("--device", default="cpu,cuda" if torch.cuda.is_available() else "cpu",
                        help="comma-separated devices (default: cpu, plus cuda when available)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), {args.repeats} repeats, "
          f"{ACTIVE_FRACTION:.0%} of gates on; times are the {args.statistic} in microseconds")
    for device in args.device.split(","):
        print(f"\ndevice {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else ""))
        print(f"{'shape':<13} {'batch':>5} {'on/ex':>6} {'union':>6} {'bound':>6} {'dense us':>9} "
              f"{'auto us':>9} {'speedup':>8} {'%bound':>7} {'union us':>9} {'speedup':>8} "
              f"{'per-ex us':>9} {'speedup':>8} {'max|diff|':>9}")
        for shape in SHAPES:
            for batch in BATCHES:
                print(measure(shape, batch, torch.device(device), args.repeats, STATISTICS[args.statistic]))


def measure(shape, batch: int, device: torch.device, repeats: int, statistic=statistics.median) -> str:
    net = StandIn(*shape).to(device)
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(1024, shape[0], generator=generator).to(device)
    pool = [torch.randn(batch, shape[0], generator=generator).to(device) for _ in range(INPUT_POOL)]
    paths = {"dense": dense_forward, "auto": conditional_forward,
             "union": lambda n, x: conditional_forward(n, x, "union"),
             "per-example": lambda n, x: conditional_forward(n, x, "per-example")}
    with torch.inference_mode():
        logits = net.gater_out(torch.tanh(net.gater_hidden(calibration)))
        net.threshold = torch.quantile(logits.flatten().double().cpu(), 1 - ACTIVE_FRACTION).item()
        active = torch.stack([inference_gates(net, x).ne(0) for x in pool])  # (pool, batch, gates)
        on_fraction = active.float().mean().item()
        union_fraction = active.any(1).float().mean().item()
        diff = max((conditional_forward(net, x) - dense_forward(net, x)).abs().max().item() for x in pool)
        times = {name: [] for name in paths}
        for block in range(1 + -(-repeats // BLOCK)):  # block 0 warms up
            for name, path in paths.items():
                for j in range(BLOCK + 1):  # the first call of a block brings this path's weights into cache
                    x = pool[(block * BLOCK + j) % INPUT_POOL]
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    began = time.perf_counter()
                    path(net, x)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if block and j:
                        times[name].append(time.perf_counter() - began)
    summary = {name: statistic(values) * 1e6 for name, values in times.items()}
    bound = flops_per_example(net, on_fraction).speedup_bound
    speedup = {name: summary["dense"] / summary[name] for name in paths}
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


if __name__ == "__main__":
    main()
