"""Per-sample gradient estimates per second for each estimator, metric accumulation included.

    python benchmarks/estimates_per_second.py [--problem 'bernoulli-target(d=100)'] [--samples 1000000]

Prints, per estimator: end-to-end estimates/s of the harness (sampling, loss, backward, streaming
moments, jackknife and exact enumeration where it applies), estimates/s of the estimation alone
(the stored time_per_estimate_s), and the peak extra memory.
"""
from __future__ import annotations

import argparse
import time

import torch

import estimators
from bench import harness
from bench.specs import parse_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="bernoulli-target(d=100)")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--estimators", default="all")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    problem, problem_params = parse_spec(args.problem)
    names = estimators.unit_estimator_names() if args.estimators == "all" else args.estimators.split(",")
    print(f"problem {args.problem}, {args.samples} samples, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'estimator':<26} {'end-to-end /s':>14} {'estimation /s':>14} {'peak MiB':>9} {'status'}")
    for name in names:
        if name == "exact":
            print(f"{name:<26} {'-':>14} {'-':>14} {'-':>9} skipped: 2^units evaluations")
            continue
        config = harness.make_config(name, {}, problem, problem_params, 0, args.samples, args.device)
        began = time.perf_counter()
        result = harness.run(config)
        elapsed = time.perf_counter() - began
        values = {m.name: m.value for m in result.metrics}
        if result.status != "finished":
            print(f"{name:<26} {'-':>14} {'-':>14} {'-':>9} {result.status}: {result.error}")
            continue
        peak = values.get("peak_memory_bytes", float("nan")) / 2**20
        print(f"{name:<26} {args.samples / elapsed:>14,.0f} {1 / values['time_per_estimate_s']:>14,.0f} "
              f"{peak:>9.1f} {result.notes.get('exact_moments', '')}")


if __name__ == "__main__":
    main()
