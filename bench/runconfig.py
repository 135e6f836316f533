"""A run's configuration (what determines its numbers, hashed into its key), its result, and
the provenance stored beside it (package versions, git revision, device, timestamps)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

import estimators
import problems
from bench.metrics import Metric
from bench.specs import SpecError, format_spec, parse_spec
from estimators.registry import RegistryError

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
    notes: dict[str, Any]  # strings, and the estimator / problem description (see bench.runinfo)
    started_at: str
    finished_at: str
    wall_time_s: float
    error: str | None = None


def make_config(estimator: str, estimator_params: dict, problem: str, problem_params: dict, seed: int,
                samples: int, device: str = "cpu", warmup: int = DEFAULT_WARMUP) -> RunConfig:
    """Validate the specs by building them once, and fill in every default parameter.

    A training problem has no sample budget or warmup (its schedule is in its own parameters),
    so both are stored as 0 and do not split otherwise identical runs."""
    est = estimators.build_estimator(estimator, estimator_params)
    prob = problems.build_problem(problem, problem_params)
    check_basket(prob)
    if prob.trains_model:
        samples, warmup = 0, 0
    return RunConfig(estimator, estimators.ESTIMATORS.resolved_params(est), problem,
                     problems.PROBLEMS.resolved_params(prob), seed, samples, device, warmup)



def check_basket(problem) -> None:
    """Each estimator of a training problem's checkpoint basket must parse and build: a typo would
    otherwise surface only at the first checkpoint, as a note, after the runs trained."""
    for spec in getattr(problem, "basket", ()) or ():
        try:
            name, params = parse_spec(spec)
            estimators.build_estimator(name, params)
        except (SpecError, RegistryError) as exc:
            raise RegistryError(f"basket estimator {spec!r}: {' '.join(str(exc).split())}") from None


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
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"  # threads: run notes


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
