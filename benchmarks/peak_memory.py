"""Peak resident memory of one large run: ``--samples 10000000`` at d=100 must stay under 2 GB.

    python benchmarks/peak_memory.py [--estimator reinforce] [--problem 'bernoulli-target(d=100)'] [--samples 10000000]
"""
from __future__ import annotations

import argparse
import resource
import time

from bench import harness
from bench.specs import parse_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", default="reinforce")
    parser.add_argument("--problem", default="bernoulli-target(d=100)")
    parser.add_argument("--samples", type=int, default=10_000_000)
    args = parser.parse_args()
    estimator, estimator_params = parse_spec(args.estimator)
    problem, problem_params = parse_spec(args.problem)
    config = harness.make_config(estimator, estimator_params, problem, problem_params, 0, args.samples)
    began = time.perf_counter()
    result = harness.run(config)
    elapsed = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    values = {m.name: m.value for m in result.metrics}
    print(f"{args.estimator} on {args.problem}, {args.samples} samples: status {result.status}, "
          f"{elapsed:.1f} s, process peak RSS {peak / 2**30:.2f} GiB, "
          f"harness peak_memory_bytes {values.get('peak_memory_bytes', float('nan')) / 2**20:.1f} MiB, "
          f"variance {values.get('variance', float('nan')):.6g}")


if __name__ == "__main__":
    main()
