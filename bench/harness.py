"""Runs one (estimator, problem, seed, samples) measurement: streamed estimates, metrics, exact moments."""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import estimators
import problems
from bench.memory import peak_memory
from bench.metrics import GradientMoments, Metric, exact_moments, time_metric
from bench.specs import format_spec
from estimators.base import Estimator, Noise, NotEnumerable, ReplayNoise, all_configurations

CHUNK_ELEMENTS = 2**21
MIN_CHUNKS = 8
MAX_ENUMERATION_BITS = 20
DEFAULT_WARMUP = 10_000


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers; its hash identifies the run in the store."""

    estimator: str
    estimator_params: dict[str, Any]
    problem: str
    problem_params: dict[str, Any]
    seed: int
    samples: int
    device: str = "cpu"
    warmup: int = DEFAULT_WARMUP

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def estimator_spec(self) -> str:
        return format_spec(self.estimator, self.estimator_params)

    @property
    def problem_spec(self) -> str:
        return format_spec(self.problem, self.problem_params)


@dataclasses.dataclass
class RunResult:
    config: RunConfig
    status: str
    metrics: list[Metric]
    notes: dict[str, str]
    started_at: str
    finished_at: str
    wall_time_s: float
    error: str | None = None


class Incompatible(ValueError):
    """The estimator cannot run on this problem (e.g. too many units to enumerate)."""


def make_config(estimator: str, estimator_params: dict, problem: str, problem_params: dict, seed: int,
                samples: int, device: str = "cpu", warmup: int = DEFAULT_WARMUP) -> RunConfig:
    """Validate the specs by building them once, and fill in every default parameter."""
    est = estimators.build_estimator(estimator, estimator_params)
    prob = problems.build_problem(problem, problem_params)
    return RunConfig(estimator, estimators.ESTIMATORS.resolved_params(est), problem,
                     problems.PROBLEMS.resolved_params(prob), seed, samples, device, warmup)


def chunk_size(samples: int, evaluations: int, units: int) -> int:
    by_memory = max(1, CHUNK_ELEMENTS // max(1, evaluations * units))
    return max(1, min(by_memory, math.ceil(samples / MIN_CHUNKS)))


def seeded_noise(seed: int, stream: int, device: torch.device) -> Noise:
    """Independent generator per (seed, stream): stream 0 measures, 1 warms up."""
    state = int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> 1)
    return Noise(torch.Generator(device).manual_seed(state))


class LossProbe:
    """Wraps a loss to count evaluations and the exact zeros of the units fed to it per sample."""

    def __init__(self, rows: int, device: torch.device):
        self.rows = rows
        self.evaluations = 0
        self.zeros = torch.zeros(rows, dtype=torch.float64, device=device)
        self.elements = 0

    def __call__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor]):
        def observed(h: torch.Tensor) -> torch.Tensor:
            self.evaluations += h.numel() // h.shape[-1]
            if h.ndim >= 2 and h.shape[-2] == self.rows:
                zeros = (h.detach() == 0).movedim(-2, 0).reshape(self.rows, -1)
                self.zeros += zeros.sum(1)
                self.elements += zeros.shape[1]
            return loss_fn(h)

        return observed

    def sparsity(self) -> torch.Tensor | None:
        return self.zeros / self.elements if self.elements else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_compatible(estimator: Estimator, problem: problems.Problem) -> None:
    try:
        estimator.check_units(problem.units)
    except ValueError as exc:
        raise Incompatible(str(exc)) from None


def measure(config: RunConfig, progress: Callable[[int], None] | None = None) -> tuple[list[Metric], dict[str, str]]:
    """Compute every metric of one run. Raises Incompatible when the pair cannot run."""
    device = torch.device(config.device)
    problem = problems.build_problem(config.problem, config.problem_params).to(device)
    estimator = estimators.build_estimator(config.estimator, config.estimator_params).to(device)
    check_compatible(estimator, problem)
    reference = problem.reference()
    units = problem.units
    evaluations = estimator.loss_evaluations(units)
    chunk = chunk_size(config.samples, evaluations, units)
    notes: dict[str, str] = {"reference": "exact" if reference.exact else "estimated"}

    estimator.rng = seeded_noise(config.seed, 1, device)
    warmup = config.warmup if (estimator.stateful or estimator.has_parameters) else min(16, config.samples)
    for start in range(0, warmup, chunk):
        problem.sample_gradients(estimator, min(chunk, warmup - start))
    notes["warmup"] = f"{warmup} estimates" + (" (state adapted, then frozen)" if estimator.stateful else "")

    moments = GradientMoments(reference.gradient, config.samples, truth_stderr=reference.stderr)
    seconds, sizes, evaluated = [], [], 0
    estimator.rng = seeded_noise(config.seed, 0, device)
    with estimator.frozen(), peak_memory(device) as peak:
        for start in range(0, config.samples, chunk):
            rows = min(chunk, config.samples - start)
            probe = LossProbe(rows, device)
            _sync(device)
            began = time.perf_counter()
            estimates = problem.sample_gradients(estimator, rows, probe)
            _sync(device)
            seconds.append(time.perf_counter() - began)
            sizes.append(rows)
            evaluated += probe.evaluations
            moments.add(estimates, probe.sparsity())
            if progress is not None:
                progress(rows)
    metrics = moments.metrics(float(torch.finfo(problem.dtype).eps))
    metrics.append(Metric("loss_evals", evaluated / config.samples))
    metrics.append(time_metric(seconds, sizes))
    if peak.bytes is not None:
        metrics.append(Metric("peak_memory_bytes", float(peak.bytes)))
    metrics = [m for m in metrics if not (m.name == "sparsity" and math.isnan(m.value))]

    exact, reason = exact_estimator_moments(estimator, problem, reference)
    metrics.extend(exact)
    notes["exact_moments"] = reason
    return metrics, notes


def exact_estimator_moments(estimator: Estimator, problem, reference) -> tuple[list[Metric], str]:
    """Exact bias and variance by replaying every outcome of a discrete randomness, when small.

    Runs on float64 copies of the problem and the (frozen) estimator, so exact zeros are zeros."""
    if not reference.exact:
        return [], "not computed: the reference gradient is itself estimated"
    if not estimator.enumerable:
        return [], "not computed: continuous randomness (no finite set of outcomes)"
    bits = estimator.bernoulli_draws(problem.units)
    if bits > MAX_ENUMERATION_BITS:
        return [], f"not computed: 2^{bits} outcomes exceed 2^{MAX_ENUMERATION_BITS}"
    problem = copy.deepcopy(problem).to(torch.float64)
    estimator = copy.deepcopy(estimator).to(torch.float64)
    device = next(iter(problem.buffers()), torch.empty(0)).device
    replay = ReplayNoise(all_configurations(bits, torch.float64, device))
    estimator.rng = replay
    try:
        with estimator.frozen():
            estimates = problem.sample_gradients(estimator, 2**bits)
    except NotEnumerable as exc:
        return [], f"not computed: {exc}"
    return exact_moments(estimates, replay.log_prob, reference.gradient), f"computed in float64 over 2^{bits} outcomes"


def environment() -> dict[str, Any]:
    """Package versions and the git revision of the source tree, when it is a checkout."""
    import importlib.metadata

    import pandas
    import scipy

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "stochgrad-bench": version("stochgrad-bench"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pandas.__version__,
        "platform": platform.platform(),
    }


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def run(config: RunConfig, progress: Callable[[int], None] | None = None) -> RunResult:
    """Measure one run; a bug in an estimator or problem gives status 'failed', not an exception."""
    started = now()
    began = time.perf_counter()
    try:
        metrics, notes = measure(config, progress)
        status, error = "finished", None
    except Incompatible as exc:
        metrics, notes, status, error = [], {}, "skipped", str(exc)
    except Exception as exc:  # recorded with the run; the sweep goes on
        metrics, notes, status, error = [], {}, "failed", f"{type(exc).__name__}: {exc}"
    return RunResult(config, status, metrics, notes, started, now(), time.perf_counter() - began, error)
