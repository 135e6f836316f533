"""Training checkpoints and kept models: the files a training run writes beside the store.

A training problem with ``resumable`` yields a :class:`~problems.base.Snapshot` at every point it can
resume from (each epoch, or each log step). The harness saves the run's whole state there to
``<store>.checkpoints/<config key>.pt``: the problem's loop (model, optimisers, generators, data
order, binarisation), the estimator's buffers and parameters, its noise source and the records so
far. Run again, the same command finds the file and continues the run from that point with exactly
the numbers an uninterrupted run gives. Files are written atomically (a temporary file, then a
rename), so a ``kill -9`` leaves the previous checkpoint or the new one, never half of one. The
command removes a run's checkpoint once the run is stored finished or skipped (a failed run keeps
it, so a run whose worker died resumes). A checkpoint that cannot be read, or was written for
another configuration or by other code (the sources of ``estimators``, ``problems`` and the
harness, hashed, and the torch version), is ignored with a one-line note and the run starts from scratch.

``--keep-models DIR`` keeps each finished training run's final model (``keep_model``, read back by
``load_model``).

The directories reach the runs through the environment (``RunFiles.exported``), as the data
directory does: worker processes inherit it; Dask workers are sent a :class:`RunFiles`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import estimators
import problems
from bench.metrics import Metric
from bench.runconfig import RunConfig, RunResult, now

CHECKPOINTS_ENV = "STOCHGRAD_BENCH_CHECKPOINTS"
KEEP_MODELS_ENV = "STOCHGRAD_BENCH_KEEP_MODELS"
FORMAT = 1  # of the checkpoint and kept-model files; a file of another format is ignored
MODEL_KIND = "stochgrad-bench trained model"
# The sources that make a run's numbers, whose hash a checkpoint must match: estimators, problems and
# the harness's own modules (not the command line, the store or the executors, so that a change
# there does not throw away the runs in progress). A new module the harness computes with goes here.
CODE_SOURCES = ("estimators", "problems", "bench/harness.py", "bench/enumeration.py", "bench/metrics.py",
                "bench/memory.py", "bench/runconfig.py", "bench/specs.py", "bench/checkpoints.py")


def checkpoint_directory(store_path: Path | str) -> Path:
    """Where the checkpoints of a store's runs live: ``<store>.checkpoints`` beside it."""
    path = Path(store_path)
    return path.with_name(path.name + ".checkpoints")


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A hash of the sources that make a run's numbers (CODE_SOURCES) and of the torch version: a
    checkpoint resumes only under the code that wrote it."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(f"format {FORMAT}; torch {torch.__version__}".encode())
    for source in CODE_SOURCES:
        paths = sorted((root / source).rglob("*.py")) if (root / source).is_dir() else [root / source]
        for path in paths:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _plugin_sources(*objects) -> str:
    """A hash of the files defining a plugin estimator or problem, wherever the plugin was loaded
    from (a Dask worker loads a copy); built-in ones are in code_version."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    built_in = [(root / source).resolve() for source in CODE_SOURCES]
    for obj in objects:
        try:
            path = Path(sys.modules[type(obj).__module__].__file__).resolve()
        except (KeyError, AttributeError, TypeError):
            continue
        if not any(path == source or source in path.parents for source in built_in):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def note(message: str) -> None:
    """One line on stderr (in a worker process too: workers share the command's stderr)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def _atomic_save(value: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, flushed to disk, then renamed over it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(value, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _cpu(value: Any) -> Any:
    """Tensors (in dicts, lists, tuples) moved to the CPU, so a file loads on any machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return type(value)((key, _cpu(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(item) for item in value)
    return value


def _plain(value: Any) -> Any:
    """A note or metric field as a Python number, string or None (numpy scalars become numbers):
    what a checkpoint loaded with ``weights_only`` may hold."""
    if isinstance(value, (np.generic, torch.Tensor)):  # np.float64 is a float, but not one torch.load takes
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _plain_metric(metric: Metric) -> dict[str, Any]:
    return {field.name: _plain(getattr(metric, field.name)) for field in dataclasses.fields(metric)}


# -- where the files go ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The directories a run writes to: ``checkpoints`` (None: no checkpoints) and ``keep_models``
    (None: models are not kept), as strings so the object pickles to any worker."""

    checkpoints: str | None = None
    keep_models: str | None = None

    @classmethod
    def from_environment(cls) -> "RunFiles":
        return cls(os.environ.get(CHECKPOINTS_ENV) or None, os.environ.get(KEEP_MODELS_ENV) or None)

    @classmethod
    def for_store(cls, store_path: Path | str, keep_models: Path | str | None = None) -> "RunFiles":
        return cls(str(checkpoint_directory(store_path).resolve()),
                   None if keep_models is None else str(Path(keep_models).resolve()))

    @contextlib.contextmanager
    def exported(self) -> Iterator["RunFiles"]:
        """Set the environment variables for the block (runs in this process and in the worker
        processes started inside it read them), then put back what was there."""
        previous = {name: os.environ.get(name) for name in (CHECKPOINTS_ENV, KEEP_MODELS_ENV)}
        for name, value in ((CHECKPOINTS_ENV, self.checkpoints), (KEEP_MODELS_ENV, self.keep_models)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            yield self
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def checkpoint(self, config: RunConfig) -> Path | None:
        return None if self.checkpoints is None else Path(self.checkpoints) / f"{config.key}.pt"

    def discard(self, result: RunResult) -> None:
        """Remove the checkpoint of a run stored finished or skipped (a failed run keeps it, so a
        run whose worker died resumes), and the checkpoint directory once it is empty."""
        if result.status != "failed":
            self.discard_finished([result.config.key])

    def discard_finished(self, keys) -> None:
        """Remove the checkpoints of the runs with these config keys (stored finished)."""
        if self.checkpoints is None:
            return
        directory = Path(self.checkpoints)
        if not directory.is_dir():
            return
        for key in keys:
            for path in [directory / f"{key}.pt", *directory.glob(f".{key}.pt.*.tmp")]:  # + a kill's half-write
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
        try:
            directory.rmdir()
        except OSError:  # not empty (other runs' checkpoints)
            pass


# -- one run's checkpoints --------------------------------------------------------------------------------
class Session:
    """One training run's checkpoint file and its resume bookkeeping (see the module docstring).

    ``load`` gives the saved state to resume from, or None (no file, or one that cannot be used:
    then a one-line note, also kept in ``notes``); ``save`` writes a snapshot; ``started_at`` and
    ``earlier_seconds`` carry the run's start and its run time before the resume, so the stored
    run's wall time counts every session."""

    def __init__(self, config: RunConfig, files: RunFiles):
        self.config, self.files = config, files
        self.path = files.checkpoint(config)
        self.started_at = now()
        self.began = time.perf_counter()
        self.earlier_seconds = 0.0
        self.resumed = False
        self.notes: dict[str, str] = {}
        self._save_failed = False

    def _identity(self, estimator, problem) -> dict[str, Any]:
        return {"format": FORMAT, "config": json.dumps(self.config.as_dict(), sort_keys=True, default=str),
                "code": code_version(), "plugins": _plugin_sources(estimator, problem)}

    def ignore(self, why: str) -> None:
        """Note (one line, and in the run's notes) that the checkpoint is not used."""
        why = why if len(why) <= 240 else why[:237] + "..."
        message = f"checkpoint {self.path.name} ignored ({why}); the run starts from scratch"
        self.notes["checkpoint"] = message
        note(f"{self.config.estimator_spec} on {self.config.problem_spec} seed {self.config.seed}: {message}")

    def load(self, estimator, problem) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, garbage, unreadable: whatever torch.load says
            first_line = (str(exc).strip().splitlines() or [""])[0][:120]
            self.ignore(f"unreadable: {type(exc).__name__}: {first_line}")
            return None
        if not isinstance(saved, dict) or not isinstance(saved.get("identity"), dict):
            self.ignore("not a checkpoint of this program")
            return None
        expected, found = self._identity(estimator, problem), saved["identity"]
        for field, why in (("format", "written in another file format"),
                           ("config", "written for another configuration"),
                           ("code", "written by other code: the estimators, problems or harness sources, or "
                                    "torch, changed"),
                           ("plugins", "written by another version of the plugin")):
            if found.get(field) != expected[field]:
                self.ignore(why)
                return None
        return saved

    def resume(self, saved: dict[str, Any]) -> None:
        """Take over the saved run's start and earlier run time."""
        self.resumed = True
        self.started_at = saved["started_at"]
        self.earlier_seconds = float(saved["seconds"])

    def save(self, snapshot, estimator, problem, noise, metrics: list[Metric], notes: dict[str, Any],
             checkpoints: int) -> None:
        """Write the run's state at ``snapshot``; a failure to write (disk full) is noted once and the
        run goes on without checkpoints."""
        if self.path is None or self._save_failed:
            return
        state = {"identity": self._identity(estimator, problem), "started_at": self.started_at,
                 "seconds": self.earlier_seconds + time.perf_counter() - self.began,
                 "where": {"epoch": snapshot.epoch, "step": snapshot.step, "done": snapshot.done},
                 "problem": _cpu(snapshot.state()), "estimator": _cpu(estimator.state_dict()),
                 "noise": noise.generator.get_state(), "metrics": [_plain_metric(m) for m in metrics],
                 "notes": {str(key): _plain(value) for key, value in notes.items()}, "checkpoints": checkpoints}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(state, self.path)
        except OSError as exc:
            self._save_failed = True
            message = f"checkpoint not written ({exc.strerror or exc}); the run goes on without checkpoints"
            self.notes["checkpoint"] = message
            note(f"{self.config.estimator_spec} on {self.config.problem_spec} seed {self.config.seed}: {message}")


def where(saved: dict[str, Any]) -> str:
    """'epoch 12' or 'step 3000': the point a checkpoint resumes after."""
    point = saved["where"]
    return f"epoch {point['epoch']}" if point.get("epoch") is not None else f"step {point['step']}"


# -- kept models ------------------------------------------------------------------------------------------
def model_file_name(config: RunConfig) -> str:
    """``<problem>_<estimator spec>_seed<seed>_<key prefix>.pt``, the spec reduced to safe characters
    (and 100 of them: the key prefix keeps names apart)."""
    spec = re.sub(r"[^A-Za-z0-9.=+-]+", "-", config.estimator_spec).strip("-")[:100]
    return f"{config.problem}_{spec}_seed{config.seed}_{config.key[:10]}.pt"


def keep_model(directory: Path | str, config: RunConfig, model: torch.nn.Module, estimator) -> Path:
    """Write a finished run's final model (its state_dict, on the CPU), the estimator's state and the
    run's configuration to ``directory`` (created if missing), atomically; returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / model_file_name(config)
    _atomic_save({"kind": MODEL_KIND, "format": FORMAT, "config": config.as_dict(), "saved_at": now(),
                  "model": _cpu(model.state_dict()), "estimator": _cpu(estimator.state_dict())}, path)
    return path


@dataclasses.dataclass
class KeptModel:
    """A kept model read back: its run's configuration, the problem and estimator rebuilt from it,
    and the trained model (``problem.model_for`` with the saved state loaded)."""

    config: RunConfig
    problem: Any
    estimator: Any
    model: torch.nn.Module


class ModelFileError(ValueError):
    """A file that is not a kept model this program can read (one line, for the user)."""


def load_model(path: Path | str, device: str = "cpu") -> KeptModel:
    """Read a kept model (``keep_model``) and rebuild it on ``device``; the estimator and problem
    must be registered (load their plugins first). Raises ModelFileError for a file that is not one."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable model file ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("kind") != MODEL_KIND:
        raise ModelFileError(f"{path} is not a model kept by --keep-models")
    if saved.get("format") != FORMAT:
        raise ModelFileError(f"{path} has file format {saved.get('format')}, this version reads {FORMAT}")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig(**{key: value for key, value in saved["config"].items() if key in fields})
    problem = problems.build_problem(config.problem, config.problem_params).to(torch.device(device))
    estimator = estimators.build_estimator(config.estimator, config.estimator_params).to(torch.device(device))
    estimator.load_state(saved["estimator"])
    model = problem.model_for(estimator, config.seed)
    model.load_state_dict(saved["model"])
    model.eval()
    return KeptModel(config, problem, estimator, model)
