"""Score an advantage function against the exact sequence problems (``python -m bench check-advantage``).

A framework's advantage function maps the rewards, lengths and group ids of a batch of responses
(1-D tensors, prompt by prompt) to their advantages. This module wraps it as an advantage estimator
(:class:`FunctionAdvantage`), finds how far its advantages reach (its own response, its group, the
batch), and reports in one :class:`AdvantageReport`: the exact ratio of its expected gradient to the
true one per prompt difficulty and group size on the one-token Bernoulli bandit, its exact variance
there, its exact bias and variance on a multi-token sequence bandit, and the float32 edge cases (equal
rewards, a group split 7 to 1 on a reward float32 cannot represent, groups of one, huge, tiny and
close rewards): finite, float32 agreeing with float64, or a clear error. With a reference estimator
(``against``), advantages and exact ratios are compared with it too.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable

import torch

import estimators
import problems
from estimators.base import NotEnumerable
from estimators.sequence import SequenceEstimator

AdvantageFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
DIFFICULTIES = (0.1, 0.5, 0.9)
GROUP_SIZES = (2, 4, 16)
SEQUENCE_PROBLEM = {"vocab": 2, "max_len": 3, "prompts": 3}
AGREEMENT = 1e-3  # float32 vs float64, relative to the largest advantage
AGAINST_AGREEMENT = 1e-4  # the function vs the reference estimator (float64), relative


class AdvantageFunctionError(ValueError):
    """The function cannot be checked (it fails on ordinary input, or is not symmetric in a group)."""


def load_function(target: str) -> AdvantageFn:
    """``module:function`` or ``path/to/file.py:function``; raises AdvantageFunctionError."""
    module_name, sep, attribute = target.rpartition(":")
    if not sep or not module_name or not attribute:
        raise AdvantageFunctionError(f"expected module:function or file.py:function, got {target!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AdvantageFunctionError(f"file not found: {module_name}")
            spec = importlib.util.spec_from_file_location(f"bench_advantage_{abs(hash(str(path.resolve())))}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except AdvantageFunctionError:
        raise
    except Exception as exc:
        raise AdvantageFunctionError(f"{module_name} failed to import: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise AdvantageFunctionError(f"{module_name} has no function {attribute!r}")
    return function


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(G, *batch, P) -> (rows, P * G): each estimate's responses prompt by prompt."""
    G, P = x.shape[0], x.shape[-1]
    return x.movedim(0, -1).reshape(-1, P * G)


def _unflat(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    G, P = like.shape[0], like.shape[-1]
    return x.reshape(*like.shape[1:-1], P, G).movedim(-1, 0)


def call_function(function: AdvantageFn, rewards: torch.Tensor, lengths: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The function's advantages, checked to be a tensor of the rewards' shape."""
    out = function(rewards, lengths, groups)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(rewards.shape):
        found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AdvantageFunctionError(f"the function returned {found} for {tuple(rewards.shape)} rewards: "
                                     "expected a tensor of advantages, one per response")
    return out.to(rewards.dtype)


class FunctionAdvantage(SequenceEstimator):
    """An advantage estimator from ``function(rewards, lengths, group_ids) -> advantages`` (1-D, the
    responses of one batch prompt by prompt). With ``coupling`` 'none' or 'group' many estimates go
    through one call (their groups get distinct ids); 'batch' calls it once per estimate."""

    name = "user-advantage"

    def __init__(self, function: AdvantageFn, G: int = 4, aggregation: str = "seq-mean-token-sum",
                 coupling: str = "batch"):
        super().__init__(G, aggregation)
        self.function = function
        self.advantage_coupling = coupling

    def advantages(self, rewards, lengths, reference):
        P, G = rewards.shape[-1], rewards.shape[0]
        r, l = _flat(rewards), _flat(lengths)
        if self.advantage_coupling == "batch":
            groups = torch.arange(P, device=r.device).repeat_interleave(G)
            out = torch.stack([call_function(self.function, r[b], l[b], groups) for b in range(r.shape[0])])
        else:
            groups = torch.arange(r.numel() // G, device=r.device).repeat_interleave(G)
            out = call_function(self.function, r.reshape(-1), l.reshape(-1), groups).reshape(r.shape)
        return _unflat(out, rewards)


def _example(G: int = 4, P: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.rand(P * G, generator=g, dtype=torch.float64).round(decimals=2)
    lengths = torch.randint(1, 5, (P * G,), generator=g).to(torch.float64)
    return rewards, lengths, torch.arange(P).repeat_interleave(G)


def detect_coupling(function: AdvantageFn) -> str:
    """'none' (a response's advantage depends on its own reward and length), 'group' or 'batch',
    from perturbing the other responses; raises AdvantageFunctionError if the advantages are not
    finite on ordinary input or not symmetric in a group's responses."""
    rewards, lengths, groups = _example()
    try:
        base = call_function(function, rewards, lengths, groups)
    except AdvantageFunctionError:
        raise
    except Exception as exc:
        raise AdvantageFunctionError(f"the function fails on ordinary rewards: {type(exc).__name__}: {exc}") from None
    if not bool(torch.isfinite(base).all()):
        raise AdvantageFunctionError("the function gives advantages that are not finite on ordinary rewards")
    order = torch.tensor([2, 0, 3, 1] + list(range(4, len(rewards))))
    if not torch.allclose(call_function(function, rewards[order], lengths[order], groups), base[order],
                          rtol=1e-9, atol=1e-12):
        raise AdvantageFunctionError("the advantages are not symmetric in a group's responses (reordering "
                                     "a group changes more than their order)")

    def changes(where: torch.Tensor) -> bool:
        bumped = rewards.clone()
        bumped[where] = bumped[where] * 1.7 + 0.3
        again = call_function(function, bumped, lengths, groups)
        return not torch.allclose(again[0], base[0], rtol=1e-9, atol=1e-12)

    if changes(groups != 0):
        return "batch"
    return "group" if changes((groups == 0) & (torch.arange(len(groups)) > 0)) else "none"


@dataclasses.dataclass
class EdgeCase:
    label: str
    rewards: list[float]
    G: int
    tolerance: float = AGREEMENT  # float32 vs float64, relative to the largest float64 advantage
    status: str = ""
    detail: str = ""


@dataclasses.dataclass
class AdvantageReport:
    coupling: str
    ratios: list[dict]  # G, p, ratio, variance (exact), evaluations, and the reference's ratio
    sequence: list[dict]  # G, relative bias, cosine, variance on the multi-token bandit
    edges: list[EdgeCase]
    failures: list[str]

    def lines(self) -> list[str]:
        out = [f"advantages depend on: {dict(none='the response alone', group='its group', batch='the whole batch')[self.coupling]}",
               "", "exact on the one-token Bernoulli bandit (reward 1 with probability p; by enumeration):",
               f"  {'G':>3} {'p':>5} {'E[g]/grad':>11} {'variance':>11} {'evals':>6}"
               + (f" {'reference':>11}" if any("reference" in r for r in self.ratios) else "")]
        for row in self.ratios:
            flag = "" if row["ratio"] is None or abs(row["ratio"] - 1) < 1e-9 else "  biased"
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.4f}"
            variance = "n/a" if row["variance"] is None else f"{row['variance']:.4g}"
            ref = f" {row['reference']:>11.4f}" if row.get("reference") is not None else ""
            out.append(f"  {row['G']:>3} {row['p']:>5.2f} {ratio:>11} {variance:>11} {row['G']:>6}{ref}{flag}")
        out += ["", f"exact on sequence-bandit({', '.join(f'{k}={v}' for k, v in SEQUENCE_PROBLEM.items())}) "
                "(prompts from p = 0.05 to 0.95):",
                f"  {'G':>3} {'rel. bias':>10} {'cosine':>8} {'variance':>11}"]
        for row in self.sequence:
            if row.get("why"):
                out.append(f"  {row['G']:>3} {row['why']}")
            else:
                out.append(f"  {row['G']:>3} {row['relative_bias']:>10.4f} {row['cosine']:>8.4f} {row['variance']:>11.4g}")
        out += ["", "float32 edge cases:"]
        for case in self.edges:
            out.append(f"  {case.label:<40} {case.status:<8} {case.detail}")
        out += [""] + ([f"FAIL: {f}" for f in self.failures] if self.failures else ["no failures"])
        return out


def _edge_cases() -> list[EdgeCase]:
    return [EdgeCase("equal rewards (0.35 x 8)", [0.35] * 8, 8),
            EdgeCase("one apart (0.35 x 7, 0.95)", [0.35] * 7 + [0.95], 8),
            EdgeCase("groups of one (G = 1)", [0.0, 1.0, 0.35, 1.0], 1),
            EdgeCase("huge rewards (1e30 x {0, 1})", [1e30, 0.0, 0.0, 1e30, 0.0, 1e30, 1e30, 1e30], 4),
            EdgeCase("tiny rewards (1e-30 x {0, 1})", [1e-30, 0.0, 0.0, 1e-30, 0.0, 1e-30, 1e-30, 1e-30], 4),
            # float32 resolves a spread of 1e-5 at 2 to about 1 %: the advantages can agree no better
            EdgeCase("close rewards (1 and 1.00001)", [1.0, 1.00001, 2.0, 2.00001], 2, tolerance=0.05)]


def check_edges(function: AdvantageFn, reference: SequenceEstimator | None = None) -> list[EdgeCase]:
    """Each edge case in float32 and float64 (the float32 rewards, so the two differ by their
    arithmetic only): finite, agreeing, or refused with an error; and equal to the reference
    estimator's advantages when one is given."""
    cases = _edge_cases()
    for case in cases:
        values = torch.tensor(case.rewards, dtype=torch.float32).double()  # the same numbers in both precisions
        groups = torch.arange(len(values) // case.G).repeat_interleave(case.G)
        lengths = torch.ones_like(values)
        try:
            single = call_function(function, values.float(), lengths.float(), groups).double()
            double = call_function(function, values, lengths, groups)
        except Exception as exc:  # a clear error is an acceptable answer to an edge case
            case.status, case.detail = "refused", " ".join(f"{type(exc).__name__}: {exc}".split())[:100]
            continue
        shown = ", ".join(f"{v:.4g}" for v in single[:8].tolist())
        if not bool(torch.isfinite(single).all()):
            case.status, case.detail = "FAIL", f"not finite in float32: [{shown}]"
            continue
        size = float(double.abs().max()) if bool(torch.isfinite(double).all()) else math.inf
        gap = float((single - double).abs().max())
        if not gap <= case.tolerance * size:
            relative = gap / size if size > 0 else math.inf
            case.status = "FAIL"
            case.detail = (f"float32 [{shown}] vs float64 differ by {gap:.3g} "
                           f"({'> 1e6 x' if relative > 1e6 else f'{relative:.2g}'} the largest float64 advantage)")
            continue
        case.status, case.detail = "ok", f"[{shown}]"
        if reference is not None and case.G >= reference.min_group:
            ref = _estimator_advantages(reference, values, lengths, groups)
            scale = float(ref.abs().max())
            diff = float((double - ref).abs().max())
            if diff > AGAINST_AGREEMENT * max(scale, 1e-300) and not (scale == 0 and diff == 0):
                case.status = "FAIL"
                case.detail += f"; the reference gives [{', '.join(f'{v:.4g}' for v in ref[:8].tolist())}]"
    return cases


def _estimator_advantages(estimator: SequenceEstimator, rewards: torch.Tensor, lengths: torch.Tensor,
                          groups: torch.Tensor) -> torch.Tensor:
    """A registered estimator's advantages for 1-D rewards in equal consecutive groups (one estimate;
    a reference reward, ReMax's greedy one, of 0)."""
    G = int((groups == groups[0]).sum())
    if G < estimator.min_group:
        raise ValueError(f"G must be at least {estimator.min_group}, got {G}")
    shaped = rewards.reshape(-1, G).T.unsqueeze(1)  # (G, 1, P)
    zero = torch.zeros(1, shaped.shape[-1], dtype=rewards.dtype)
    return estimator.advantages(shaped, lengths.reshape(-1, G).T.unsqueeze(1), zero).squeeze(1).T.reshape(-1)


def _ratios(estimator: SequenceEstimator, p_values: tuple[float, ...]) -> list[tuple[float | None, float | None]]:
    """Per prompt, (E[g]/grad, exact variance) on the one-token bandit with these success rates."""
    bandit = problems.build_problem("sequence-bandit", {"vocab": 1, "max_len": 1, "prompts": len(p_values),
                                                        "success": "-".join(f"{p:g}" for p in p_values)})
    try:
        mean, variance, _ = bandit.enumerate_moments(estimator)
    except NotEnumerable:
        return [(None, None)] * len(p_values)
    truth = bandit.exact_gradient()
    out = []
    for part in bandit.scopes().values() if len(p_values) > 1 else [slice(None)]:
        t = truth[part]
        out.append((float(mean[part] @ t / (t @ t)), float(variance[part].sum())))
    return out


def _with_group(build: Callable[[int], SequenceEstimator], G: int) -> SequenceEstimator | None:
    try:
        return build(G)
    except (ValueError, estimators.RegistryError):
        return None


def check(build: Callable[[int], SequenceEstimator], function: AdvantageFn | None, coupling: str,
          against: Callable[[int], SequenceEstimator] | None = None,
          group_sizes: tuple[int, ...] = GROUP_SIZES) -> AdvantageReport:
    """The whole report for an estimator family ``build(G)`` (and its advantage ``function`` for the
    edge cases; None: use the estimator's own advantages)."""
    failures: list[str] = []
    ratios, sequence = [], []
    bandit = problems.build_problem("sequence-bandit", SEQUENCE_PROBLEM)
    truth = bandit.exact_gradient()
    for G in group_sizes:
        estimator = _with_group(build, G)
        if estimator is None:
            continue
        ours = _ratios(estimator, DIFFICULTIES)
        theirs = _ratios(against(G), DIFFICULTIES) if against is not None and _with_group(against, G) else None
        for k, p in enumerate(DIFFICULTIES):
            row = {"G": G, "p": p, "ratio": ours[k][0], "variance": ours[k][1]}
            if theirs is not None:
                row["reference"] = theirs[k][0]
                if ours[k][0] is not None and theirs[k][0] is not None and abs(ours[k][0] - theirs[k][0]) > 1e-6:
                    failures.append(f"G = {G}, p = {p}: E[g]/grad {ours[k][0]:.4f}, the reference's {theirs[k][0]:.4f}")
            ratios.append(row)
        try:
            mean, variance, _ = bandit.enumerate_moments(estimator)
            norm = float(truth.norm())
            sequence.append({"G": G, "relative_bias": float((mean - truth).norm()) / norm,
                             "cosine": float(mean @ truth) / (float(mean.norm()) * norm) if float(mean.norm()) > 0 else math.nan,
                             "variance": float(variance.sum())})
        except NotEnumerable as exc:
            sequence.append({"G": G, "why": f"not computed: {exc}"})
    if function is None:
        estimator = build(max(2, group_sizes[0]))
        base = estimator

        def function(rewards, lengths, groups):  # the estimator's own advantages (a greedy reward of 0)
            return _estimator_advantages(base, rewards, lengths, groups)
    reference = against(4) if against is not None else None
    edges = check_edges(function, reference)
    failures += [f"{case.label}: {case.detail}" for case in edges if case.status == "FAIL"]
    return AdvantageReport(coupling, ratios, sequence, edges, failures)


def check_function(function: AdvantageFn, aggregation: str = "seq-mean-token-sum",
                   against: Callable[[int], SequenceEstimator] | None = None,
                   group_sizes: tuple[int, ...] = GROUP_SIZES) -> AdvantageReport:
    """The report for a user's advantage function."""
    coupling = detect_coupling(function)
    return check(lambda G: FunctionAdvantage(function, G, aggregation, coupling), function, coupling, against,
                 group_sizes)
