"""The problem contract: a point where an estimator's gradient is measured, and the truth there.

A problem declares ``dim`` (gradient coordinates), gives its reference gradient (exact where one
exists) and produces per-sample gradient estimates for an estimator, vectorised over the sample
axis. Problems are ``nn.Module``s so ``.to(device, dtype)`` moves their buffers.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, ClassVar, Iterator

import torch

from estimators.base import Noise, all_categories, all_configurations
from estimators.domains import DeclaredDomains, Satisfies

MAX_ENUMERATION_UNITS = 20
LossObserver = Callable[[Callable[[torch.Tensor], torch.Tensor]], Callable[[torch.Tensor], torch.Tensor]]


@dataclasses.dataclass
class Reference:
    """The true gradient (float64, CPU) and, when it is itself estimated, its standard error."""

    gradient: torch.Tensor
    stderr: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        return self.stderr is None


@dataclasses.dataclass
class Record:
    """One number a training problem reports (the harness stores it as a metric).

    ``epoch`` / ``step`` say where in training it was measured (None: not tied to one); ``scope``
    names a part of the model ('all' for the whole)."""

    name: str
    value: float
    stderr: float | None = None
    scope: str = "all"
    epoch: int | None = None
    step: int | None = None


@dataclasses.dataclass
class Checkpoint:
    """A point in training where the harness measures the estimator's gradient, as for any
    gradient problem: ``problem`` holds the model frozen at that point, ``samples`` is the number of
    estimates to draw; the harness stores every metric with this ``epoch`` / ``step``. ``basket``:
    specs of other estimators the harness measures on the same problem beside the training one
    (scope ``basket:<spec>``), like DisARM's grad_basket."""

    problem: "Problem"
    samples: int
    epoch: int | None = None
    step: int | None = None
    basket: tuple[str, ...] = ()


@dataclasses.dataclass
class Snapshot:
    """A point where a training run can stop and later resume (yielded by ``fit`` of a problem with
    ``resumable``): ``state()`` returns everything the problem's loop holds (model, optimisers,
    generators, counters), to be called before the next item is requested; ``fit(..., resume=that
    state)`` continues from here with exactly the numbers an uninterrupted run gives. ``done``:
    units of ``progress_total`` finished; ``epoch`` / ``step``: where training stands."""

    state: Callable[[], dict[str, Any]]
    done: int
    epoch: int | None = None
    step: int | None = None


class ResumeError(ValueError):
    """A saved training state does not fit the run being resumed (another model shape, another
    optimiser): the caller starts the run from scratch."""


def _capture(part) -> Any:
    if isinstance(part, torch.Generator):
        return part.get_state()
    if isinstance(part, Noise):
        return part.generator.get_state()
    if isinstance(part, torch.Tensor):
        return part.detach().clone()
    if isinstance(part, (list, tuple)):
        return [_capture(item) for item in part]
    return part.state_dict()


def _restore(part, saved) -> None:
    if isinstance(part, torch.Generator):
        part.set_state(saved)
    elif isinstance(part, Noise):
        part.generator.set_state(saved)
    elif isinstance(part, torch.Tensor):
        if part.shape != saved.shape:
            raise ValueError(f"a tensor of shape {tuple(saved.shape)} where {tuple(part.shape)} is expected")
        with torch.no_grad():
            part.copy_(saved)
    elif isinstance(part, (list, tuple)):
        if len(part) != len(saved):
            raise ValueError(f"{len(saved)} saved items where {len(part)} are expected")
        for item, value in zip(part, saved):
            _restore(item, value)
    else:
        part.load_state_dict(saved)


class TrainingState:
    """The parts of a training loop that a :class:`Snapshot` saves and a resume restores in place:
    modules, optimisers, generators, noise sources, tensors (and lists of them), or anything with
    ``state_dict`` / ``load_state_dict``. A ``None`` part is left out (e.g. a generator a run does
    not use). Loop variables (epoch, sums, flags) travel as the snapshot's ``values``.
    ``snapshots``: whether :meth:`resume_point` yields anything (``fit``'s flag of that name)."""

    def __init__(self, snapshots: bool = True, **parts) -> None:
        self.snapshots = snapshots
        self.parts = {name: part for name, part in parts.items() if part is not None}

    def resume_point(self, done: int, epoch: int | None = None, step: int | None = None,
                     **values) -> Iterator[Snapshot]:
        """A :class:`Snapshot` here (none unless ``snapshots``): ``values`` (numbers, tensors), with
        ``epoch`` and ``step``, come back from :meth:`restore`."""
        if not self.snapshots:
            return

        def state() -> dict[str, Any]:
            return {"parts": {name: _capture(part) for name, part in self.parts.items()},
                    "values": {**values, "epoch": epoch, "step": step}}

        yield Snapshot(state, done, epoch, step)

    def restore(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Load a snapshot's state into the parts; returns its ``values``. Raises ResumeError when
        the state does not fit these parts."""
        why = "the problem's state does not fit"
        try:
            parts = saved["parts"]
            if set(parts) != set(self.parts):
                raise ResumeError(f"{why}: saved parts {sorted(parts)}, expected {sorted(self.parts)}")
            for name, part in self.parts.items():
                _restore(part, parts[name])
            return dict(saved["values"])
        except ResumeError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise ResumeError(f"{why}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def layer_sizes(optional: bool = False) -> Satisfies:
    """The domain of a layer-sizes parameter ('8-6-4', see :func:`parse_sizes`); ``optional``: empty
    is allowed (the problem's default sizes)."""
    def check(text) -> bool:
        if optional and not str(text).strip():
            return True
        try:
            parse_sizes(text, "sizes")
        except ValueError:
            return False
        return True

    return Satisfies(check, ("empty (the default sizes) or " if optional else "")
                     + "layer sizes >= 1 joined by '-', like '8-6-4'", bad=("8--4", "8-0", "wide"))


def parse_sizes(text: str, name: str) -> tuple[int, ...]:
    """Layer sizes written as positive integers joined by '-' ('8-6-4'); ``name`` is the parameter
    named in the one-line error."""
    sizes = []
    for part in str(text).split("-"):
        if not part.strip():
            raise ValueError(f"{name} {text!r} has an empty layer: expected sizes joined by '-', like '8-6-4'")
        try:
            size = int(part)
        except ValueError:
            raise ValueError(f"{name} must be layer sizes joined by '-', like '8-6-4', got {text!r}") from None
        if size < 1:
            raise ValueError(f"{name} {text!r} has an empty layer: every layer needs at least 1 unit")
        sizes.append(size)
    return tuple(sizes)


class Problem(DeclaredDomains, torch.nn.Module):
    """Base class for every problem family.

    ``trains_model`` is False for gradient problems (a fixed point where estimates are measured
    against a reference) and True for :class:`TrainingProblem` (a model trained with the estimator).
    (Not ``training``/``train``: those are nn.Module's mode flag and mode switch.)"""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    trains_model: ClassVar[bool] = False
    variables: ClassVar[str] = "binary"  # its stochastic units: 'binary', 'categorical', 'sequence' or 'router'

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def units(self) -> int:
        """Stochastic units per estimate (sizes chunks and exact enumeration)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype the problem computes in (the first floating buffer's; float32 if none)."""
        return next((b.dtype for b in self.buffers() if b.is_floating_point()), torch.float32)

    def reference(self) -> Reference:
        raise NotImplementedError

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        """``n`` independent gradient estimates, shape (n, dim)."""
        raise NotImplementedError

    def check_estimator(self, estimator) -> None:
        """Raise ValueError if ``estimator`` cannot serve this problem (the harness then stores
        the run as skipped with the message). The default asks the estimator about the number of
        units; the kind of units (:meth:`check_variables`) the harness checks for every problem."""
        estimator.check_units(self.units)

    def evaluations_per_estimate(self, estimator) -> int:
        """The estimator's loss evaluations per estimate on this problem's units (their number, and
        for categorical units their categories)."""
        if self.variables == "categorical" and getattr(estimator, "variables", "binary") != "binary":
            return estimator.loss_evaluations(self.units, categories=self.categories)
        return estimator.loss_evaluations(self.units)

    def check_variables(self, estimator) -> None:
        """Raise ValueError if the estimator's ``variables`` trait ('binary', 'categorical', 'both'
        -- binary and categorical -- or 'sequence') does not cover this problem's units."""
        serves = getattr(estimator, "variables", "binary")
        covered = serves == self.variables or (serves == "both" and self.variables in ("binary", "categorical"))
        if not covered:
            what = "binary and categorical" if serves == "both" else serves
            raise ValueError(f"{estimator.name or type(estimator).__name__} serves {what} units only; "
                             f"{self.name or type(self).__name__} has {self.variables} units")

    def cost_per_estimate(self, estimator) -> dict[str, float]:
        """Costs per estimate the problem counts beside loss evaluations, stored as metrics of those
        names (a mixture-of-experts router: ``expert_evals``). None by default."""
        return {}

    def scopes(self) -> dict[str, slice]:
        """Named parts of the gradient vector (e.g. 'layer1', 'layer1.weight') that the harness
        reports separately, besides 'all'. Empty when the gradient has no natural parts."""
        return {}

    def event_probabilities(self) -> torch.Tensor | None:
        """Per gradient coordinate (float64, shape (dim,)), the probability of the rarer outcome of
        the one draw the coordinate is about: min(p, 1 - p) of the unit (or category) whose logit it
        is; NaN for a coordinate that is about no single draw (a weight feeding many units). The
        harness leaves a coordinate out of its tests when the sampler cannot resolve that event.
        None (the default): no coordinate is about a single draw."""
        return None


class TrainingProblem(Problem):
    """A model trained with the estimator at its stochastic units (learning curves, not moments).

    ``fit`` runs the whole schedule on the problem's device and yields :class:`Record`s as they
    are measured (per-epoch curves carry ``epoch``). ``seed`` drives initialisation and data order;
    the units' noise is the source the caller hands in (``with estimator.drawing_from(noise):``).
    NOTE: the method is ``fit`` and the flag ``trains_model``; ``train``/``training`` belong to
    nn.Module (mode).

    ``resumable``: ``fit`` takes two more keywords, ``snapshots=True`` (also yield a :class:`Snapshot`
    at every point it can resume from: each epoch, or each log step) and ``resume=`` a snapshot's
    state (restore its loop, then continue); the caller restores the estimator (its buffers and
    parameters) and its noise source. A problem without it (a plugin's, say) gets neither."""

    trains_model = True
    resumable: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_placement", torch.zeros(0), persistent=False)
        self.trained_model: torch.nn.Module | None = None  # the last model ``fit`` trained

    def __setattr__(self, name, value):
        if name == "trained_model":  # a result, kept out of the problem's child modules
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def device(self) -> torch.device:
        """Where to train: follows ``.to(device)`` like any module (through a placement buffer)."""
        return self._placement.device

    @property
    def dim(self) -> int:
        return 0

    def progress_total(self) -> int:
        """Units of work ``train`` reports through ``progress`` (e.g. mini-batches)."""
        raise NotImplementedError

    def fit(self, estimator, seed: int,
            progress: Callable[[int], None] | None = None) -> Iterator[Record | Checkpoint]:
        """Yield :class:`Record`s, and :class:`Checkpoint`s where the harness should measure the
        estimator's gradient of the model as it is at that point."""
        raise NotImplementedError

    def model_for(self, estimator, seed: int) -> torch.nn.Module:
        """An untrained model of the shape ``fit`` trains (``trained_model``), on the problem's
        device, to load a saved state into."""
        raise NotImplementedError(f"{self.name or type(self).__name__} cannot rebuild its model")


class OwnParameterOptimizer:
    """Adam on an estimator's own parameters, trained alongside a model (the contract in
    ``estimators.base``): ``zero_grad`` before a training step, ``step`` after its backward pass.
    The learning rate is the estimator's ``adaptation_lr`` unless a protocol gives ``lr`` (with
    ``betas`` and ``eps``, e.g. DisARM's Adam(1e-4, beta1 = 0.999)). The Adam is made at the first
    ``step`` that finds trainable parameters: estimators create them on first use (per-layer copies
    on each layer's first use)."""

    def __init__(self, estimator, lr: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.estimator = estimator
        self.lr, self.betas, self.eps = lr, betas, eps
        self.optimizer: torch.optim.Optimizer | None = None

    def zero_grad(self) -> None:
        if self.estimator.has_parameters:
            self.estimator.zero_grad()

    def step(self) -> None:
        if not self.estimator.has_parameters:
            return
        if self.optimizer is None:
            own = [p for p in self.estimator.parameters() if p.requires_grad]
            if not own:
                return
            lr = self.estimator.adaptation_lr if self.lr is None else self.lr
            self.optimizer = torch.optim.Adam(own, lr=lr, betas=self.betas, eps=self.eps)
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """The Adam's state and the names of the estimator's parameters it steps (None: not made yet)."""
        if self.optimizer is None:
            return {"parameters": None}
        names = {id(p): name for name, p in self.estimator.named_parameters()}
        return {"parameters": [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]],
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Remake the Adam over the same named parameters (restored into the estimator first)."""
        if state["parameters"] is None:
            self.optimizer = None
            return
        named = dict(self.estimator.named_parameters())
        self.optimizer = torch.optim.Adam([named[name] for name in state["parameters"]],
                                          lr=self.estimator.adaptation_lr)
        self.optimizer.load_state_dict(state["optimizer"])


class EnumerableProblem(Problem):
    """What the closed-form toys share: E_h[L(h)] at logits phi, exact by enumerating every unit
    configuration (``_enumerated``, per unit type below) where no closed form is given."""

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _enumerated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(configurations, unit probabilities, P(configuration), L(configuration)) in float64."""
        raise NotImplementedError

    def exact_gradient(self) -> torch.Tensor:
        """dE[L]/dphi in float64, flattened; closed form where the family has one, else enumeration."""
        return self.enumerate_gradient()

    def enumerate_gradient(self) -> torch.Tensor:
        """dE[L]/dphi = sum_h P(h) L(h) (h - p), over every configuration: the score of a Bernoulli
        unit is h - sigm(phi), of a categorical one the one-hot h minus softmax(phi)."""
        configs, probs, weight, values = self._enumerated()
        signal = (weight * values).reshape(-1, *([1] * (configs.ndim - 1)))
        return (signal * (configs - probs)).sum(0).reshape(-1)

    def expected_loss(self) -> float:
        _, _, weight, values = self._enumerated()
        return float((weight * values).sum())

    def reference(self) -> Reference:
        return Reference(self.exact_gradient().detach().to("cpu", torch.float64))


class BernoulliProblem(EnumerableProblem):
    """E_{h ~ Bernoulli(sigm(phi))}[L(h)] at logits phi: subclasses set ``logits`` and ``loss``.

    ``loss(h)`` takes h of shape (..., units) and returns shape (...), in h's dtype and device.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def dim(self) -> int:
        return self.logits.shape[-1]

    @property
    def units(self) -> int:
        return self.logits.shape[-1]

    def _enumerated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(configurations, probabilities sigm(phi), P(configuration), L(configuration)) in float64."""
        if self.units > MAX_ENUMERATION_UNITS:
            raise ValueError(f"{self.name}: {self.units} units are too many to enumerate "
                             f"(at most {MAX_ENUMERATION_UNITS})")
        problem = copy.deepcopy(self).to("cpu", torch.float64)
        configs = all_configurations(self.units, torch.float64)
        probs = torch.sigmoid(problem.logits)
        weight = torch.exp((configs * torch.log(probs) + (1 - configs) * torch.log1p(-probs)).sum(-1))
        return configs, probs, weight, problem.loss(configs)

    def event_probabilities(self) -> torch.Tensor:
        """min(sigm(phi_i), 1 - sigm(phi_i)) = sigm(-|phi_i|) per unit."""
        return torch.sigmoid(-self.logits.detach().to("cpu", torch.float64).abs()).reshape(-1)

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        logits = self.logits.detach().expand(n, self.units).clone().requires_grad_(True)
        loss_fn = self.loss if observe is None else observe(self.loss)
        surrogate = estimator(logits, loss_fn)
        (grad,) = torch.autograd.grad(surrogate.sum(), logits)
        return grad


class CategoricalProblem(EnumerableProblem):
    """E_{h ~ Categorical(softmax(phi_i)), i = 1..units}[L(h)] at logits phi of shape (units, K):
    subclasses set ``logits`` and ``loss``; the gradient is w.r.t. every logit, flattened row-major
    (dim = units * K; each unit's K coordinates sum to zero, softmax being shift-invariant).

    ``loss(h)`` takes one-hot h of shape (..., units, K) and returns shape (...), in h's dtype and
    device. Estimators are called with ``categorical=True`` (see ``estimators.base``).
    """

    variables = "categorical"

    @property
    def dim(self) -> int:
        return self.logits.numel()

    @property
    def units(self) -> int:
        return self.logits.shape[0]

    @property
    def categories(self) -> int:
        return self.logits.shape[1]

    def _enumerated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(one-hot configurations (K^units, units, K), probabilities softmax(phi), P(configuration),
        L(configuration)) in float64."""
        if self.categories**self.units > 2**MAX_ENUMERATION_UNITS:
            raise ValueError(f"{self.name}: {self.categories}^{self.units} configurations are too many to "
                             f"enumerate (at most 2^{MAX_ENUMERATION_UNITS})")
        problem = copy.deepcopy(self).to("cpu", torch.float64)
        configs = all_categories(self.units, self.categories, torch.float64)
        log_probs = torch.log_softmax(problem.logits, -1)
        weight = torch.exp((configs * log_probs).sum((-2, -1)))
        return configs, log_probs.exp(), weight, problem.loss(configs)

    def event_probabilities(self) -> torch.Tensor:
        """min(p_ik, 1 - p_ik) per unit i and category k (p = softmax(phi_i)), flattened row-major;
        1 - p_ik summed over the other categories, so that it stays exact near p_ik = 1."""
        probs = torch.softmax(self.logits.detach().to("cpu", torch.float64), -1)
        others = (probs.unsqueeze(-2) * (1 - torch.eye(probs.shape[-1], dtype=torch.float64))).sum(-1)
        return torch.minimum(probs, others).reshape(-1)

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        logits = self.logits.detach().expand(n, *self.logits.shape).clone().requires_grad_(True)
        loss_fn = self.loss if observe is None else observe(self.loss)
        surrogate = estimator(logits, loss_fn, categorical=True)
        (grad,) = torch.autograd.grad(surrogate.sum(), logits)
        return grad.reshape(n, -1)
