"""Gradient estimates per second for every estimator that serves categorical units.

    python benchmarks/categorical_estimates_per_second.py [--units 128] [--categories 10]
        [--threads 1,2] [--seconds 2] [--estimators all]

Times one estimator call with ``categorical=True`` plus the backward pass to the logits, on a
closed-form loss written here, L(h) = (1/units) sum_i (<h_i, c_i> - t)^2 (c fixed, t = 0.5), for a
batch of estimates per call, after one untimed warm-up call; repeated for each torch thread count.
The estimators are those whose ``variables`` trait is 'categorical' or 'both'; one with more than
``--max-evaluations`` loss evaluations per estimate (exact enumeration) is reported as skipped.
The batch per call is ``--rows``, fewer where the evaluated h would hold more than 2^24 numbers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

CALL_ELEMENTS = 2**24  # numbers in the h that one call evaluates (64 MiB in float32)


class Loss:
    """L(h) = mean_i (<h_i, c_i> - t)^2 for h of shape (..., units, K)."""

    def __init__(self, units: int, K: int, target: float = 0.5):
        self.c = torch.rand(units, K, generator=torch.Generator().manual_seed(0))
        self.target = target

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return (((h * self.c).sum(-1) - self.target) ** 2).mean(-1)


def evaluations(estimator, units: int, K: int) -> int:
    return estimator.loss_evaluations(units, categories=K)


def measure_calls(estimator, logits: torch.Tensor, loss: Loss, seconds: float) -> tuple[float, int]:
    """(median seconds per call, calls): one warm-up call, then calls until ``seconds`` pass (at least 3)."""
    def call():
        x = logits.detach().clone().requires_grad_(True)
        surrogate = estimator(x, loss, categorical=True)
        torch.autograd.grad(surrogate.sum(), x)

    call()
    times = []
    began = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def main() -> None:
    import estimators
    from estimators.base import Noise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--rows", type=int, default=64, help="estimates per call (at most)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per estimator and thread count")
    parser.add_argument("--estimators", default="all", help="'all' or comma-separated names")
    parser.add_argument("--max-evaluations", type=int, default=100_000)
    args = parser.parse_args()
    if args.units < 1 or args.categories < 2 or args.rows < 1:
        parser.error("--units and --rows must be at least 1 and --categories at least 2")
    threads = [int(t) for t in args.threads.split(",")]
    names = estimators.unit_estimator_names() if args.estimators == "all" else args.estimators.split(",")
    loss = Loss(args.units, args.categories)
    print(f"{args.units} units x {args.categories} categories, torch {torch.__version__}, "
          f"threads {args.threads}, about {args.seconds:g} s per measurement")
    print(f"{'estimator':<22} {'evals':>6} {'rows':>5} " + " ".join(f"{f'{t} thr est/s':>14}" for t in threads))
    for name in names:
        estimator = estimators.build_estimator(name)
        if estimator.variables not in ("categorical", "both"):
            continue
        count = evaluations(estimator, args.units, args.categories)
        if count > args.max_evaluations:
            shown = f"{count:.1e}" if count >= 10**6 else str(count)
            print(f"{name:<22} {shown:>6} {'-':>5} skipped: more than {args.max_evaluations} evaluations")
            continue
        rows = max(1, min(args.rows, CALL_ELEMENTS // (count * args.units * args.categories)))
        logits = torch.randn(rows, args.units, args.categories, generator=torch.Generator().manual_seed(1))
        rates = []
        for n in threads:
            torch.set_num_threads(n)
            with estimator.drawing_from(Noise(torch.Generator().manual_seed(2))), estimator.frozen():
                seconds, _ = measure_calls(estimator, logits, loss, args.seconds)
            rates.append(rows / seconds)
        print(f"{name:<22} {count:>6} {rows:>5} " + " ".join(f"{r:>14,.0f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
