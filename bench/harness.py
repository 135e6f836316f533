"""Runs one (estimator, problem, seed, samples) measurement: streamed estimates, metrics, exact moments.

The run's configuration and provenance live in :mod:`bench.runconfig`, exact enumeration in
:mod:`bench.enumeration`, quadrature over continuous noise in :mod:`bench.quadrature`; their public names are re-exported here, so ``harness.run``,
``harness.RunConfig`` and ``harness.make_config`` stay the one entry point."""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from typing import Any, Callable

import numpy as np
import torch

import estimators
import problems
from bench import checkpoints as run_files
from bench.enumeration import enumerate_exact
from bench.memory import peak_memory
from bench.metrics import GradientMoments, Metric, check_exact, time_metrics
from bench.quadrature import integrate_exact
from bench.runconfig import RunConfig, RunResult, now
from bench.runinfo import DESCRIBED, describe
from estimators.base import Estimator, Noise

# Re-exported: callers use harness.make_config, harness.RunConfig, harness.count_bits, ...
from bench.enumeration import (COUPLED, COUPLING_ROWS, ENUMERATION_ELEMENTS, MAX_ENUMERATION_BITS,  # noqa: E402,F401
                               CountingNoise, count_bits, coupled, exact_estimator_moments)
from bench.runconfig import DEFAULT_WARMUP, device_description, environment, git_revision, make_config  # noqa: E402,F401

CHUNK_ELEMENTS = 2**21
MIN_CHUNKS = 8
STATE_BATCH = 64  # estimates per call while running statistics or own parameters adapt
ADAPTATION_BATCH = STATE_BATCH
TIMING_ROWS = 1024  # estimates per timed call (fewer when --samples or memory is smaller)
TIMING_REPEATS = 5  # timed calls, after one untimed warm-up call


class Incompatible(ValueError):
    """The estimator cannot run on this problem (e.g. too many units to enumerate)."""


class InvalidEstimates(ValueError):
    """An estimator or problem produced a surrogate or estimates that are not what the contract
    says (wrong shape, NaN or inf); the run is stored as failed with this message."""


def check_surrogate(estimator: Estimator, args: tuple, kwargs: dict, surrogate) -> None:
    """Forward hook (with kwargs): the surrogate holds one value per example, shape
    ``logits.shape[:-1]`` (``[:-2]`` for categorical units); a stacked, unreduced surrogate would
    silently scale the gradient by its extra size."""
    logits = args[0] if args else kwargs.get("logits")
    if not isinstance(logits, torch.Tensor):
        return
    event = 2 if kwargs.get("categorical") or kwargs.get("sequence") is not None else 1  # sequence: (states, K)
    batch = tuple(logits.shape[:-event])
    shape = tuple(surrogate.shape) if isinstance(surrogate, torch.Tensor) else None
    if shape != batch:
        found = f"shape {shape}" if shape is not None else f"a {type(surrogate).__name__}"
        raise InvalidEstimates(f"surrogate of {found} for logits of shape {tuple(logits.shape)}: the estimator "
                               f"must return one value per example, shape {batch}")


def check_estimates(estimates: torch.Tensor, rows: int, dim: int) -> None:
    """A chunk of estimates is (rows, dim) and finite: NaN or inf never become stored numbers."""
    if tuple(estimates.shape) != (rows, dim):
        raise InvalidEstimates(f"estimates of shape {tuple(estimates.shape)}, expected ({rows}, {dim})")
    finite = torch.isfinite(estimates).all(1)
    if not bool(finite.all()):
        bad = estimates[~finite]
        nan = int(torch.isnan(bad).any(1).sum())
        inf = int((~finite).sum()) - nan
        kinds = ", ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
        raise InvalidEstimates(f"estimates not finite: {kinds} of {rows}")


def chunk_size(samples: int, evaluations: int, units: int, dim: int = 0) -> int:
    """Estimates per chunk: about CHUNK_ELEMENTS numbers of units or gradient per chunk."""
    by_memory = max(1, CHUNK_ELEMENTS // max(1, evaluations * units, dim))
    return max(1, min(by_memory, math.ceil(samples / MIN_CHUNKS)))


def seeded_noise(seed: int, stream: int, device: torch.device) -> Noise:
    """Independent generator per (seed, stream): stream 0 measures, 1 warms up."""
    state = int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> 1)
    return Noise(torch.Generator(device).manual_seed(state))


# trailing axes of one loss evaluation's h: (units,), (units, K), a response per prompt (prompts, max_len),
# or a mixture-of-experts layer's output per routed example (width,)
EVENT_DIMS = {"binary": 1, "categorical": 2, "sequence": 2, "router": 1}


class LossProbe:
    """Wraps a loss to count evaluations, the exact zeros of the units fed to it per sample and
    the size of the loss values returned (the scale a loss-differencing estimator rounds at);
    ``event_dims`` trailing axes of h are one evaluation's units (2 for categorical units)."""

    def __init__(self, rows: int, device: torch.device, event_dims: int = 1):
        self.rows = rows
        self.event_dims = event_dims
        self.evaluations = 0
        self.zeros = torch.zeros(rows, dtype=torch.float64, device=device)
        self.elements = 0
        self.loss_abs = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_values = 0

    def __call__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor]):
        row_axis = -1 - self.event_dims

        def observed(h: torch.Tensor) -> torch.Tensor:
            self.evaluations += h.numel() // max(1, math.prod(h.shape[row_axis + 1:]))
            if h.ndim >= -row_axis and h.shape[row_axis] == self.rows:
                zeros = (h.detach() == 0).movedim(row_axis, 0).reshape(self.rows, -1)
                self.zeros += zeros.sum(1)
                self.elements += zeros.shape[1]
            loss = loss_fn(h)
            self.loss_abs += loss.detach().abs().sum().to(torch.float64)
            self.loss_values += loss.numel()
            return loss

        return observed

    def sparsity(self) -> torch.Tensor | None:
        """Per sample, the fraction of exact zeros among the units fed to the loss (the paper's
        conditional-computation sparsity); None for categorical units, where a one-hot h has
        (K - 1) / K zeros whatever the estimator."""
        if self.event_dims > 1 or not self.elements:
            return None
        return self.zeros / self.elements


UNSEEN_ALPHA = 1e-3  # the level the tests flag at: at most this chance that any tested event goes unseen


def event_resolution(problem, samples: int, events: int = 1) -> tuple[float, str]:
    """The smallest event probability a run of ``samples`` estimates resolves, and why, for a
    problem with ``events`` coordinates that are about single draws. Two limits, the larger wins:
    the sampler's grid (h = 1[u < p] with u from ``torch.rand`` in the problem's dtype, multiples
    of eps / 2: 2^-24 in float32, so a logit below about -16.6 is never drawn 1), and the run's
    size: an event expected c = n p times is never drawn with probability e^-c, and then the
    coordinate's mean misses its contribution while its standard error, estimated from the same
    draws, cannot show it; c >= ln(events / UNSEEN_ALPHA) keeps the chance that any tested event
    goes unseen below UNSEEN_ALPHA."""
    grid = float(torch.finfo(problem.dtype).eps) / 2
    size = math.log(max(1, events) / UNSEEN_ALPHA) / samples
    if grid >= size:
        return grid, (f"event probability below the {grid:.3g} grid of {str(problem.dtype).removeprefix('torch.')} "
                      "uniforms: never drawn")
    times = f"{math.log(max(1, events) / UNSEEN_ALPHA):.3g} times in {samples:,} estimates"
    if size >= 0.5:  # min(p, 1 - p) <= 1/2: no event can be
        return size, f"no event can be expected {times}: use more estimates"
    return size, f"event probability below {size:.3g}: expected fewer than {times}, so possibly never drawn"


def unresolved_events(problem, estimator: Estimator, samples: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(indices, probabilities, why) of the gradient coordinates whose event a run of ``samples``
    estimates cannot resolve (:meth:`~problems.Problem.event_probabilities` below
    :func:`event_resolution`): the estimate there misses the unseen outcome's contribution, so a
    difference from the truth is no evidence of bias. None when nothing is sampled (``randomness``
    'none') or the problem declares no events."""
    if estimator.randomness == "none":
        return None
    events = problem.event_probabilities()
    if events is None:
        return None
    events = events.detach().to("cpu", torch.float64).numpy().reshape(-1)
    resolution, why = event_resolution(problem, samples, int(np.isfinite(events).sum()))
    below = np.flatnonzero(events < resolution)  # NaN: about no single draw, kept
    return below, events[below], why


UNMEASURABLE_LISTED = 20  # coordinates named in the notes; the rest are counted


def unmeasurable_note(problem, estimator: Estimator, samples: int) -> str | None:
    """The notes' account of the coordinates left out of the tests: how many, which (with their
    event probability), and why; None when every coordinate is measurable."""
    found = unresolved_events(problem, estimator, samples)
    if found is None or not len(found[0]):
        return None
    index, probability, why = found
    names = [f"{i} (p = {p:.2g})" for i, p in zip(index[:UNMEASURABLE_LISTED], probability[:UNMEASURABLE_LISTED])]
    more = f" and {len(index) - UNMEASURABLE_LISTED} more" if len(index) > UNMEASURABLE_LISTED else ""
    return (f"{len(index)} of {problem.dim} coordinates left out of the unbiasedness test and the exact check "
            f"({why}): {', '.join(names)}{more}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_compatible(estimator: Estimator, problem: problems.Problem) -> None:
    try:
        problem.check_variables(estimator)  # here for every problem, whatever its own check_estimator does
        problem.check_estimator(estimator)
    except ValueError as exc:
        raise Incompatible(str(exc)) from None


def build(config: RunConfig) -> tuple[problems.Problem, Estimator]:
    """The run's problem and estimator, fresh, on its device (the estimator's surrogate checked)."""
    device = torch.device(config.device)
    problem = problems.build_problem(config.problem, config.problem_params).to(device)
    estimator = estimators.build_estimator(config.estimator, config.estimator_params).to(device)
    estimator.register_forward_hook(check_surrogate, with_kwargs=True)
    return problem, estimator


def measure(config: RunConfig, progress: Callable[[int], None] | None = None,
            notes: dict[str, Any] | None = None,
            session: run_files.Session | None = None) -> tuple[list[Metric], dict[str, Any]]:
    """Compute every metric of one run. Raises Incompatible when the pair cannot run.

    ``notes`` (a new dict if not given) first receives the description of the built estimator and
    problem (:func:`bench.runinfo.describe`), so a run that is skipped or fails keeps it too.
    ``session``: a training run's checkpoint file (resumes from it, writes to it)."""
    notes = {} if notes is None else notes
    problem, estimator = build(config)
    notes.update(describe(estimator, problem, config.estimator, config.problem))
    check_compatible(estimator, problem)
    if problem.trains_model:
        metrics, trained = train(problem, estimator, config, progress, session)
        notes.update(trained)
        return metrics, notes
    reference = problem.reference()
    notes["reference"] = "exact" if reference.exact else "estimated"
    scopes = {"all": slice(None), **problem.scopes()}

    metrics: list[Metric] = []
    if estimator.has_parameters:
        before, before_notes = gradient_metrics(problem, estimator, config, reference, scopes, progress=None)
        metrics.extend(dataclasses.replace(m, step=0) for m in before)
        notes.update({f"{key} (step=0)": value for key, value in before_notes.items() if key.startswith("exact")})
        steps = adapt(problem, estimator, config)
        notes["adaptation"] = (f"{steps} Adam steps of {ADAPTATION_BATCH} estimates at lr "
                               f"{estimator.adaptation_lr}; rows with step=0 are before adaptation")
        notes["warmup"] = f"{steps * ADAPTATION_BATCH} estimates (own parameters adapted, then frozen)"
    else:
        notes["warmup"] = warm_up(problem, estimator, config)
    state = estimator.schedule_state()
    if state is not None:
        notes["schedule"] = f"measured at {state}; the warm-up held the schedule (it adapts baselines only)"
    measured, measured_notes = gradient_metrics(problem, estimator, config, reference, scopes, progress)
    metrics.extend(measured)
    notes.update(measured_notes)
    metrics.extend(reference_metrics(reference, scopes))
    return metrics, notes


def gradient_metrics(problem, estimator: Estimator, config: RunConfig, reference, scopes: dict[str, slice],
                     progress: Callable[[int], None] | None) -> tuple[list[Metric], dict[str, str]]:
    """Monte Carlo metrics, then exact moments when the randomness can be enumerated or integrated,
    checked against the Monte Carlo ones: exact moments that disagree are withheld (the notes say why)."""
    metrics, sampled = sample_metrics(problem, estimator, config, reference, scopes, progress)
    notes = {"timing": timing_note(timing_rows(problem, estimator, config.samples))}
    unmeasurable = unmeasurable_note(problem, estimator, config.samples)
    if unmeasurable:
        notes["unmeasurable"] = unmeasurable
    exact, notes["exact_moments"] = exact_moments(estimator, problem, reference)
    if exact is None:
        return metrics, notes
    variance = next(m for m in metrics if m.name == "variance" and m.scope == "all")
    check = check_exact(sampled, exact, variance, float(torch.finfo(problem.dtype).eps))
    metrics.append(Metric("exact_check_pvalue", check.pvalue))
    notes["exact_check"] = check.note()
    if check.agrees:
        metrics.extend(exact.metrics(reference.gradient, scopes))
    else:
        notes["exact_moments"] += "; withheld: they disagree with this run's Monte Carlo moments (see exact_check)"
    return metrics, notes


def exact_moments(estimator: Estimator, problem, reference):
    """Exact mean and variance, and how they were found or why not: by enumerating the discrete
    draws (``randomness`` 'bernoulli' or 'none'), or for continuous noise by quadrature over the laws
    the estimator declares (:mod:`bench.quadrature`), with its discrete draws enumerated."""
    if estimator.randomness == "continuous":
        return integrate_exact(estimator, problem, reference)
    return enumerate_exact(estimator, problem, reference)


def timing_note(rows: int) -> str:
    """What time_per_estimate_s is, with the thread count and the machine's load when measured."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return (f"median (and min, max) over {TIMING_REPEATS} timed calls of {rows} estimates after one "
            f"warm-up call; {torch.get_num_threads()} torch thread(s); load average {load} "
            f"(1, 5, 15 min) on {os.cpu_count()} cores")


def warm_up(problem, estimator: Estimator, config: RunConfig, noise: Noise | None = None) -> str:
    """Let a stateful estimator's running statistics settle (noise stream 1, or ``noise``) before measuring.

    The statistics advance once per call, so the calls have a fixed size (STATE_BATCH estimates),
    not the measurement's chunk size: the frozen state, and with it every metric, does not depend
    on ``--samples``, and a ``decay`` per call means the same in every run. A schedule (slope,
    temperature: the ``schedule`` trait) is held: warm-up adapts baselines, not the estimator's
    definition, so the run measures the state the estimator's parameters declare."""
    with estimator.drawing_from(noise or seeded_noise(config.seed, 1, torch.device(config.device))), \
            estimator.holding_schedule():
        if not estimator.stateful:
            rows = min(16, config.samples)
            problem.sample_gradients(estimator, rows)
            return f"{rows} estimates"
        calls = math.ceil(config.warmup / STATE_BATCH)
        for _ in range(calls):
            problem.sample_gradients(estimator, STATE_BATCH)
    return f"{calls * STATE_BATCH} estimates in calls of {STATE_BATCH} (state adapted, then frozen)"


def adapt(problem, estimator: Estimator, config: RunConfig, noise: Noise | None = None) -> int:
    """The adaptation phase of an estimator with its own parameters: Adam steps on the objective
    it accumulates into its parameters' grads (see Estimator), on noise stream 1 (or ``noise``).
    Returns steps."""
    steps = math.ceil(config.warmup / ADAPTATION_BATCH)
    optimizer = None
    with estimator.drawing_from(noise or seeded_noise(config.seed, 1, torch.device(config.device))), \
            estimator.holding_schedule():
        for _ in range(steps):
            for parameter in estimator.parameters():
                parameter.grad = None
            problem.sample_gradients(estimator, ADAPTATION_BATCH)
            if optimizer is None:  # parameters may be created lazily on the first call
                parameters = [p for p in estimator.parameters() if p.requires_grad]
                if not parameters:
                    break
                optimizer = torch.optim.Adam(parameters, lr=estimator.adaptation_lr)
            optimizer.step()
    for parameter in estimator.parameters():
        parameter.grad = None
    return steps


def sample_metrics(problem, estimator: Estimator, config: RunConfig, reference, scopes: dict[str, slice],
                   progress: Callable[[int], None] | None, stream: int = 0,
                   timed: bool = True) -> tuple[list[Metric], GradientMoments]:
    """The Monte Carlo metrics: ``config.samples`` frozen estimates on noise ``stream``, per scope,
    and the accumulated moments of the whole gradient. When ``timed``, the time per estimate is
    measured afterwards, apart from the accumulation (see :func:`time_estimates`)."""
    device = torch.device(config.device)
    units = problem.units
    chunk = chunk_size(config.samples, problem.evaluations_per_estimate(estimator), units, problem.dim)
    unresolved = unresolved_events(problem, estimator, config.samples)
    measurable = None
    if unresolved is not None:
        measurable = np.ones(problem.dim, dtype=bool)
        measurable[unresolved[0]] = False
    moments = {name: GradientMoments(reference.gradient[part], config.samples,
                                     truth_stderr=None if reference.stderr is None else reference.stderr[part],
                                     measurable=None if measurable is None else measurable[part])
               for name, part in scopes.items()}
    evaluated = 0
    loss_abs, loss_values = 0.0, 0
    noise = seeded_noise(config.seed, stream, device)
    with estimator.drawing_from(noise), estimator.frozen(), peak_memory(device) as peak:
        for start in range(0, config.samples, chunk):
            rows = min(chunk, config.samples - start)
            probe = LossProbe(rows, device, EVENT_DIMS[problem.variables])
            estimates = problem.sample_gradients(estimator, rows, probe)
            check_estimates(estimates, rows, problem.dim)
            evaluated += probe.evaluations
            loss_abs, loss_values = loss_abs + float(probe.loss_abs), loss_values + probe.loss_values
            sparsity = probe.sparsity()
            for name, part in scopes.items():
                moments[name].add(estimates[:, part], sparsity if name == "all" else None)
            if progress is not None:
                progress(rows)
        if timed:
            rows = timing_rows(problem, estimator, config.samples)
            seconds = time_estimates(problem, estimator, rows, device)
    eps = float(torch.finfo(problem.dtype).eps)
    rounding_scale = float(estimator.loss_rounding) * loss_abs / max(1, loss_values)
    metrics = []
    for name, accumulated in moments.items():
        accumulated.rounding_scale = rounding_scale
        metrics.extend(dataclasses.replace(m, scope=name) for m in accumulated.metrics(eps)
                       if not (m.name == "sparsity" and math.isnan(m.value)))
    metrics.append(Metric("loss_evals", evaluated / config.samples))
    metrics.extend(Metric(name, value) for name, value in problem.cost_per_estimate(estimator).items())
    if timed:
        metrics.extend(time_metrics(seconds, rows))
    if peak.bytes is not None:
        metrics.append(Metric("peak_memory_bytes", float(peak.bytes)))
    return metrics, moments["all"]


def timing_rows(problem, estimator: Estimator, samples: int) -> int:
    """Estimates per timed call: TIMING_ROWS, fewer when the run has fewer or memory allows fewer."""
    units = problem.units
    return min(TIMING_ROWS, samples, chunk_size(TIMING_ROWS * MIN_CHUNKS, problem.evaluations_per_estimate(estimator),
                                                units, problem.dim))


def time_estimates(problem, estimator: Estimator, rows: int, device: torch.device,
                   repeats: int = TIMING_REPEATS) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``rows`` estimates (estimator and backward pass,
    no metrics), after one untimed warm-up call; draws from the estimator's current noise."""
    problem.sample_gradients(estimator, rows)
    seconds = []
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        problem.sample_gradients(estimator, rows)
        _sync(device)
        seconds.append(time.perf_counter() - began)
    return seconds


CHECKPOINT_STREAM = 1000  # noise streams 1000 + k measure the k-th checkpoint


def train(problem, estimator: Estimator, config: RunConfig, progress: Callable[[int], None] | None,
          session: run_files.Session | None = None) -> tuple[list[Metric], dict[str, str]]:
    """A training problem: the problem trains its model with the estimator and reports records;
    at each :class:`~problems.base.Checkpoint` it yields, the gradient metrics of the frozen model
    are measured here as for a gradient problem (tagged with the checkpoint's epoch / step).

    With a ``session`` and a ``resumable`` problem, the run's whole state is saved at every
    :class:`~problems.base.Snapshot`, and a saved state is resumed from (see :mod:`bench.checkpoints`):
    the estimator's buffers and parameters, the noise source, the records and notes so far, then
    the problem's loop (``fit(resume=...)``). A state that does not fit is noted and the run starts
    from scratch with a fresh problem and estimator. ``session.keep_models``: the final model is kept."""
    resumable = session is not None and problem.resumable
    saved = session.load(estimator, problem) if resumable else None
    for start in ((saved, None) if saved is not None else (None,)):  # from the checkpoint, else from scratch
        metrics: list[Metric] = []
        notes: dict[str, str] = {}
        checkpoints = 0
        noise = seeded_noise(config.seed, 0, torch.device(config.device))
        resume = {"snapshots": True} if resumable else {}
        try:
            if start is not None:
                try:
                    estimator.load_state(start["estimator"])
                    noise.generator.set_state(start["noise"])
                except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                    raise problems.ResumeError(f"the estimator's state does not fit: {exc}") from None
                metrics = [Metric(**m) for m in start["metrics"]]
                notes, checkpoints = dict(start["notes"]), int(start["checkpoints"])
                resume["resume"] = start["problem"]
            with estimator.drawing_from(noise):
                items = problem.fit(estimator, config.seed, progress, **resume)
                first = next(items, None)  # a resumed fit restores its loop before its first item
        except problems.ResumeError as exc:
            if start is None:
                raise
            session.ignore(str(exc))
            problem, estimator = build(config)  # fresh: the failed restore may have changed them
            continue
        if start is not None:
            session.resume(start)
            point = run_files.where(start)
            notes["resumed"] = f"{notes['resumed']}; after {point}" if "resumed" in notes else f"after {point}"
            if progress is not None:
                progress(int(start["where"]["done"]))
        with estimator.drawing_from(noise):
            for item in itertools.chain([] if first is None else [first], items):
                if isinstance(item, problems.Snapshot):
                    if resumable:
                        session.save(item, estimator, problem, noise, metrics, notes, checkpoints)
                elif isinstance(item, problems.Checkpoint):
                    measured, exact = checkpoint_metrics(item, estimator, config, CHECKPOINT_STREAM + checkpoints,
                                                         notes)
                    metrics.extend(measured)
                    checkpoints += 1
                    notes["checkpoints"] = (f"{checkpoints} (reference: {'exact' if exact else 'estimated'}, "
                                            f"{item.samples} estimates each)")
                else:
                    metrics.append(dataclasses.replace(item, value=float(item.value),
                                                       stderr=None if item.stderr is None else float(item.stderr)))
        break
    if session is not None:
        notes.update(session.notes)
        model = getattr(problem, "trained_model", None)
        if session.files.keep_models and model is not None:
            try:
                kept = run_files.keep_model(session.files.keep_models, config, model, estimator)
                notes["model"] = f"kept in {kept.name}"
            except OSError as exc:  # the run's numbers stand
                notes["model"] = f"not kept: {exc.strerror or exc}"
                run_files.note(f"{config.estimator_spec} on {config.problem_spec} seed {config.seed}: "
                               f"model {notes['model']}")
    return metrics, notes


def reference_metrics(reference, scopes: dict[str, slice]) -> list[Metric]:
    """For an estimated reference, the norm of its standard errors per scope: the floor below
    which a measured bias norm cannot be told from the reference's own noise."""
    if reference.exact:
        return []
    return [Metric("reference_stderr_norm", float(torch.linalg.vector_norm(reference.stderr[part])), scope=name)
            for name, part in scopes.items()]


def checkpoint_metrics(checkpoint, estimator: Estimator, config: RunConfig, stream: int,
                       notes: dict[str, Any] | None = None) -> tuple[list[Metric], bool]:
    """Sample metrics (per scope) of the training estimator, frozen, on the checkpoint's problem,
    on their own noise stream (the training's noise source is back in place afterwards); and whether
    the reference gradient was exact. Then each estimator of the checkpoint's ``basket``
    (:func:`basket_metrics`), its metrics under scope ``basket:<spec>``."""
    probe = checkpoint.problem
    reference = probe.reference()
    scopes = {"all": slice(None), **probe.scopes()}
    settings = dataclasses.replace(config, samples=checkpoint.samples)
    measured, _ = sample_metrics(probe, estimator, settings, reference, scopes, progress=None, stream=stream,
                                 timed=False)  # the training's cost is its epoch_time_s
    measured.extend(reference_metrics(reference, scopes))
    unmeasurable = unmeasurable_note(probe, estimator, checkpoint.samples)
    if unmeasurable and notes is not None:
        where = f"step {checkpoint.step}" if checkpoint.step is not None else f"epoch {checkpoint.epoch}"
        notes["unmeasurable"] = "; ".join(filter(None, [notes.get("unmeasurable"), f"{where}: {unmeasurable}"]))
    for spec in checkpoint.basket:
        measured.extend(basket_metrics(spec, probe, settings, reference, scopes, stream,
                                       {} if notes is None else notes))
    return [dataclasses.replace(m, epoch=checkpoint.epoch, step=checkpoint.step) for m in measured], reference.exact


def basket_metrics(spec: str, probe, config: RunConfig, reference, scopes: dict[str, slice], stream: int,
                   notes: dict[str, Any]) -> list[Metric]:
    """One basket estimator measured on a checkpoint's problem as the training estimator is (same
    noise ``stream``, ``config.samples`` estimates), scope ``basket:<spec>`` (``basket:<spec>/<part>``
    for parts). Built fresh at every checkpoint; running statistics are warmed up and own parameters
    adapted first, as for a gradient problem (:func:`warm_up` / :func:`adapt`, the run's warmup or
    else DEFAULT_WARMUP estimates, since a training run stores none), on the noise
    ``basket_noise(config.seed, stream)``. An estimator that cannot be built, cannot serve the problem
    or fails is noted in ``notes['basket']`` and left out; the run goes on."""
    from bench.specs import parse_spec

    try:
        name, params = parse_spec(spec)
        estimator = estimators.build_estimator(name, params).to(torch.device(config.device))
        check_compatible(estimator, probe)
        noise = basket_noise(config.seed, stream, torch.device(config.device))
        settings = dataclasses.replace(config, warmup=config.warmup or DEFAULT_WARMUP)  # training runs store 0
        if estimator.has_parameters:
            adapt(probe, estimator, settings, noise)
        else:
            warm_up(probe, estimator, settings, noise)
        measured, _ = sample_metrics(probe, estimator, config, reference, scopes, progress=None, stream=stream,
                                     timed=False)
    except Exception as exc:  # noted with the run; the training estimator's numbers stand
        kind = "skipped" if isinstance(exc, (Incompatible, ValueError)) else "failed"
        message = f"{spec}: {kind} ({type(exc).__name__}: {exc})"
        previous = notes.get("basket")
        if not previous or message not in previous.split("; "):
            notes["basket"] = f"{previous}; {message}" if previous else message
        return []
    return [dataclasses.replace(m, scope=f"basket:{spec}" if m.scope == "all" else f"basket:{spec}/{m.scope}")
            for m in measured]


def basket_noise(seed: int, stream: int, device: torch.device) -> Noise:
    """The noise a basket estimator warms up or adapts on at the checkpoint measured on ``stream``."""
    state = int(np.random.SeedSequence([seed, stream, 1]).generate_state(1, np.uint64)[0] >> 1)
    return Noise(torch.Generator(device).manual_seed(state))


def run(config: RunConfig, progress: Callable[[int], None] | None = None,
        files: run_files.RunFiles | None = None) -> RunResult:
    """Measure one run; a bug in an estimator or problem gives status 'failed', not an exception.

    ``files``: where a training run keeps its checkpoints and, on request, its final model (None:
    from the environment, see :class:`bench.checkpoints.RunFiles`). A resumed run keeps its first
    start time and its wall time counts every session."""
    files = run_files.RunFiles.from_environment() if files is None else files
    session = run_files.Session(config, files)
    started = now()
    began = time.perf_counter()
    notes: dict[str, Any] = {}
    try:
        metrics, notes = measure(config, progress, notes, session)
        status, error = "finished", None
    except Incompatible as exc:
        metrics, status, error = [], "skipped", str(exc)
    except InvalidEstimates as exc:
        metrics, status, error = [], "failed", str(exc)
    except Exception as exc:  # recorded with the run; the sweep goes on
        metrics, status, error = [], "failed", f"{type(exc).__name__}: {exc}"
    if status != "finished":  # keep only the description of the estimator and problem
        notes = {key: notes[key] for key in DESCRIBED if key in notes}
    notes["threads"] = str(torch.get_num_threads())  # torch intra-op threads this run had
    wall = time.perf_counter() - began + session.earlier_seconds
    return RunResult(config, status, metrics, notes, session.started_at if session.resumed else started,
                     now(), wall, error)
