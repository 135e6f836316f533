"""How many estimator pairs a problem tells apart: the measurement behind the default problems of
``python -m bench run``.

Every built-in estimator is measured on every candidate problem (one run each, seed 0, through the
harness, as ``run`` does). Two estimators are *separated* on a problem when their numbers differ
beyond noise: where both have exact moments, the exact ‖bias‖ or the exact variance differ by more
than 0.1 % (plus 1e-6 of ‖g‖ or ‖g‖², so that two exact zeros are not told apart); otherwise the
Monte Carlo MSE or variance differ by more than 4 combined standard errors. A default set
separates a pair when one of its problems does. Prints, per candidate problem, the pairs it
separates, then per candidate set the pairs it separates and those it leaves together.

    python benchmarks/discrimination.py                       # the built-in candidates, 20,000 estimates per run
    python benchmarks/discrimination.py --samples 100000 --problems 'bernoulli-target(d=4,logit=1.0)'
"""
from __future__ import annotations

import argparse
import itertools
import math
import time

import torch

import estimators
import problems
from bench import harness
from bench.specs import format_spec, parse_spec_list

OLD_DEFAULTS = "bernoulli-target(d=4,t=0.45),bernoulli-quadratic(d=6),bernoulli-blackbox(d=8)"
CANDIDATE_TARGETS = ("bernoulli-target(d=4,t=0.45)", "bernoulli-target(d=4,t=0.45,logit=1.0)",
                     "bernoulli-target(d=4,t=0.45,logit=-1.5)", "bernoulli-target(d=4,t=0.45,logit=0.5,spread=2.0)",
                     "bernoulli-target(d=4,t=0.3,logit=0.5,spread=2.0)")
CANDIDATE_OTHERS = ("bernoulli-quadratic(d=6)", "bernoulli-blackbox(d=8)")
RELATIVE, ABSOLUTE, Z = 1e-3, 1e-6, 4.0


def measure(problem_spec: str, samples: int) -> dict[str, dict[str, tuple[float, float]]]:
    """estimator -> metric -> (value, stderr) of one run of every built-in estimator."""
    (name, params), = parse_spec_list(problem_spec)
    out = {}
    for entry in estimators.ESTIMATORS.entries():
        if entry.source != "built-in":
            continue
        result = harness.run(harness.make_config(entry.name, {}, name, params, 0, samples))
        if result.status == "finished":
            out[entry.name] = {m.name: (m.value, m.stderr) for m in result.metrics if m.scope == "all" and m.step is None}
    return out


def separated(a: dict, b: dict, norm: float) -> bool:
    """Do two estimators' numbers on one problem differ beyond noise (see the module docstring)?"""
    if all(k in a and k in b for k in ("exact_bias_norm", "exact_variance")):
        for key, floor in (("exact_bias_norm", ABSOLUTE * norm), ("exact_variance", ABSOLUTE * norm**2)):
            x, y = a[key][0], b[key][0]
            if abs(x - y) > RELATIVE * max(abs(x), abs(y)) + floor:
                return True
        return False
    for key in ("mse", "variance"):
        (x, sx), (y, sy) = a[key], b[key]
        se = math.hypot(sx or 0.0, sy or 0.0)
        if abs(x - y) > Z * se + ABSOLUTE * norm**2:
            return True
    return False


def separated_pairs(measured: dict[str, dict], norm: float) -> set[tuple[str, str]]:
    return {(a, b) for a, b in itertools.combinations(sorted(measured), 2) if separated(measured[a], measured[b], norm)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000, help="estimates per run (default: 20000)")
    parser.add_argument("--problems", default=None,
                        help="candidate problem specs, comma-separated (default: the built-in candidates)")
    parser.add_argument("--sets", default=None,
                        help="candidate default sets to compare, ';'-separated lists of specs (default: each "
                             "candidate target with the quadratic and black-box defaults)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    given = ",".join([*CANDIDATE_TARGETS, *CANDIDATE_OTHERS]) if args.problems is None else args.problems
    candidates = [format_spec(n, p) for n, p in parse_spec_list(given)]
    sets = ([s.strip() for s in args.sets.split(";")] if args.sets else
            [",".join([target, *CANDIDATE_OTHERS]) for target in CANDIDATE_TARGETS] if args.problems is None else [])
    by_problem: dict[str, set] = {}
    names: set[str] = set()
    in_sets = [format_spec(n, p) for candidate in sets for n, p in parse_spec_list(candidate)]
    for key in dict.fromkeys([*candidates, *in_sets]):
        (name, params), = parse_spec_list(key)
        began = time.perf_counter()
        measured = measure(key, args.samples)
        names |= set(measured)
        norm = float(torch.linalg.vector_norm(problems.build_problem(name, params).reference().gradient))
        by_problem[key] = separated_pairs(measured, norm)
        together = sorted(set(itertools.combinations(sorted(measured), 2)) - by_problem[key])
        print(f"{key}: {len(by_problem[key])} of {math.comb(len(measured), 2)} pairs separated "
              f"({len(measured)} estimators, {time.perf_counter() - began:.0f} s); together: "
              + ("; ".join(f"{a} = {b}" for a, b in together) or "none"), flush=True)
    total = math.comb(len(names), 2)
    for candidate in sets:
        keys = [format_spec(n, p) for n, p in parse_spec_list(candidate)]
        union = set().union(*(by_problem[k] for k in keys))
        together = sorted(set(itertools.combinations(sorted(names), 2)) - union)
        print(f"\nset {', '.join(keys)}: {len(union)} of {total} pairs separated; together:")
        print("  " + ("; ".join(f"{a} = {b}" for a, b in together) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
