"""Per-sample gradient estimates per second through a deep sigmoid belief net, per estimator.

    python benchmarks/sbn_estimates_per_second.py [--estimators all] [--samples 20000]
        [--problem 'sigmoid-belief-net(depth=3,width=50)'] [--max-evaluations 100000]

Times ``problem.sample_gradients`` alone (the estimator at every layer, the downstream passes,
one backward and the per-sample gradient w.r.t. every weight and bias; no metrics, no reference),
in chunks, after one untimed warm-up chunk; stateful estimators are then frozen as in the harness.
Multi-evaluation estimators nest: an estimator with k evaluations per layer evaluates the net
k^depth times per estimate, so those above ``--max-evaluations`` are reported as skipped.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

CHUNK_ELEMENTS = 2**21


def nested_evaluations(estimator, widths) -> int:
    """Net evaluations per estimate: per-layer evaluations multiply through the stack."""
    return math.prod(estimator.loss_evaluations(w) for w in widths)


def main() -> None:
    import estimators
    import problems
    from bench.specs import parse_spec, parse_spec_list
    from estimators.base import Noise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", default="all", help="'all' or comma-separated estimator specs")
    parser.add_argument("--samples", type=int, default=20_000, help="timed estimates per estimator")
    parser.add_argument("--problem", default="sigmoid-belief-net(depth=3,width=50)")
    parser.add_argument("--max-evaluations", type=int, default=100_000,
                        help="skip estimators needing more net evaluations per estimate")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    device = torch.device(args.device)
    problem = problems.build_problem(*parse_spec(args.problem)).to(device)
    specs = ([(name, {}) for name in estimators.unit_estimator_names()] if args.estimators == "all"
             else parse_spec_list(args.estimators))
    print(f"problem {args.problem}: widths {'-'.join(map(str, problem.widths))}, {problem.units} units, "
          f"{problem.dim} parameters; device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'estimator':<28} {'evals/estimate':>14} {'samples':>8} {'seconds':>8} {'estimates/s':>12}  status")
    for name, params in specs:
        label = name if not params else f"{name}({','.join(f'{k}={v}' for k, v in params.items())})"
        estimator = estimators.build_estimator(name, params).to(device)
        try:
            for width in problem.widths:
                estimator.check_units(width)
        except ValueError as exc:
            print(f"{label:<28} {'-':>14} {'-':>8} {'-':>8} {'-':>12}  skipped: {exc}")
            continue
        evaluations = nested_evaluations(estimator, problem.widths)
        if evaluations > args.max_evaluations:
            print(f"{label:<28} {evaluations:>14,} {'-':>8} {'-':>8} {'-':>12}  skipped: above --max-evaluations")
            continue
        chunk = max(1, min(args.samples, CHUNK_ELEMENTS // (evaluations * max(problem.widths))))
        with estimator.drawing_from(Noise(torch.Generator(device).manual_seed(1))):
            problem.sample_gradients(estimator, chunk)  # warm-up; adapts stateful estimators
        seconds, done = 0.0, 0
        with estimator.drawing_from(Noise(torch.Generator(device).manual_seed(0))), estimator.frozen():
            while done < args.samples:
                rows = min(chunk, args.samples - done)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                began = time.perf_counter()
                problem.sample_gradients(estimator, rows)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - began
                done += rows
        print(f"{label:<28} {evaluations:>14,} {done:>8} {seconds:>8.2f} {done / seconds:>12,.0f}  ok")


if __name__ == "__main__":
    main()
