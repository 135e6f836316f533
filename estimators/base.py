"""The estimator contract: ``estimator(logits, loss_fn) -> per-example surrogate``.

The surrogate's value equals the loss (for multi-evaluation estimators, the mean of the losses it
evaluated); its gradient with respect to the logits, anything upstream of them and any parameter
inside ``loss_fn`` is the gradient estimate. Shapes: ``logits`` is ``(*batch, units)``; ``loss_fn``
takes ``h`` of shape ``(*extra, *batch, units)`` and returns ``(*extra, *batch)``, so an estimator
that needs K evaluations stacks them on a leading axis and calls ``loss_fn`` once.

All randomness goes through ``self.rng`` (a :class:`Noise`); a caller hands one in for a block with
``with estimator.drawing_from(noise):`` (seeded, or a chosen sample replayed by :class:`ReplayNoise`
to get exact values and exact moments by enumeration), never by assigning ``rng`` from outside.

Categorical units (estimators whose ``variables`` trait is 'categorical' or 'both'): the caller
passes ``categorical=True``, ``logits`` is ``(*batch, units, K)`` (unnormalised log-probabilities)
and ``loss_fn`` takes one-hot ``h`` of shape ``(*extra, *batch, units, K)`` (or a relaxed point of
the simplex) and returns ``(*extra, *batch)``. Binary-only estimators are never called so (the
harness stores such a pair as skipped), and binary units never pass the keyword.

Examples are independent: the estimate for one example depends on its logits, the loss and its own
draws only, never on the other examples' draws or on how many there are (no batch statistics such
as a batch-mean baseline inside one call; running statistics carried between calls are fine, as
they are frozen while measured). The harness checks this before enumerating; an estimator that
couples examples still gets Monte Carlo metrics (which then depend on the chunk size) but no exact
moments.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Callable, ClassVar, Iterator

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]

from estimators.domains import MAX_DRAWS, DeclaredDomains  # noqa: F401 (MAX_DRAWS: where it always was)


class NotEnumerable(RuntimeError):
    """Raised when continuous randomness is requested from a replayed (enumerated) sample."""


class Noise:
    """Seeded source of every random number an estimator uses."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def uniform(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def bernoulli(self, probs: torch.Tensor, shape=None) -> torch.Tensor:
        """{0,1} draws with P(1) = probs, as h = 1[u < p] with u ~ U[0,1] (paper eq. 3, corrected)."""
        shape = probs.shape if shape is None else torch.Size(shape)
        return (self.uniform(shape, probs) < probs).to(probs.dtype)

    def normal(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def logistic(self, shape, like: torch.Tensor) -> torch.Tensor:
        tiny = torch.finfo(like.dtype).tiny
        u = self.uniform(shape, like).clamp(tiny, 1 - torch.finfo(like.dtype).eps)
        return torch.log(u) - torch.log1p(-u)

    def rademacher(self, shape, like: torch.Tensor) -> torch.Tensor:
        return self.bernoulli(torch.full((), 0.5, dtype=like.dtype, device=like.device), shape) * 2 - 1

    def categorical(self, probs: torch.Tensor, shape=None) -> torch.Tensor:
        """One-hot draws with P(category k) = probs[..., k]: ``shape`` (default probs.shape) ends
        with the K categories. One uniform per draw by the inverse CDF, k = #{j < K-1: u >= F_j};
        with K = 2 the category is 1 when u >= probs[..., 0] (not the Bernoulli draw's 1[u < p])."""
        shape = torch.Size(probs.shape if shape is None else shape)
        cdf = torch.cumsum(probs.expand(shape), -1)[..., :-1]
        u = self.uniform(shape[:-1], probs).unsqueeze(-1)
        index = (u >= cdf).sum(-1)
        return torch.nn.functional.one_hot(index, shape[-1]).to(probs.dtype)

    def gumbel(self, shape, like: torch.Tensor) -> torch.Tensor:
        """Standard Gumbel draws -log(-log u), u ~ U(0, 1) kept away from 0 and 1."""
        tiny = torch.finfo(like.dtype).tiny
        u = self.uniform(shape, like).clamp(tiny, 1 - torch.finfo(like.dtype).eps)
        return -torch.log(-torch.log(u))

    def beta(self, alpha: float, beta: float, shape, like: torch.Tensor) -> torch.Tensor:
        """Beta draws; torch's sampler takes no generator, so seed a forked global RNG from ours."""
        seed = int(torch.randint(0, 2**62, (), generator=self.generator, device=like.device).item())
        devices = [like.device] if like.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            dist = torch.distributions.Beta(torch.tensor(alpha, dtype=like.dtype, device=like.device),
                                            torch.tensor(beta, dtype=like.dtype, device=like.device))
            return dist.sample(torch.Size(shape))


class ReplayNoise(Noise):
    """Replays given discrete draws instead of drawing them, and records their probability.

    ``configs`` is ``(S, n_draws)``: row s is the whole discrete randomness of sample s. A Bernoulli
    request of shape ``(*lead, S, units)`` consumes ``prod(lead) * units`` entries per row, in order,
    as bits; a categorical request of shape ``(*lead, S, units, K)`` consumes ``prod(lead) * units``
    entries as category indices in [0, K). ``log_prob`` accumulates log P(draws) under the
    probabilities the estimator asked for, so sum_s exp(log_prob_s) f(s) is an exact expectation
    when ``configs`` enumerates every outcome.
    """

    def __init__(self, configs: torch.Tensor):
        super().__init__(None)
        self.configs = configs
        self.offset = 0
        self.log_prob = torch.zeros(configs.shape[0], dtype=torch.float64, device=configs.device)

    def bernoulli(self, probs: torch.Tensor, shape=None) -> torch.Tensor:
        shape = torch.Size(probs.shape if shape is None else shape)
        n_rows = self.configs.shape[0]
        if len(shape) < 2 or shape[-2] != n_rows:
            raise NotEnumerable(f"replay expects draws of shape (..., {n_rows}, units), got {tuple(shape)}")
        lead = shape[:-2]
        width = math.prod(lead) * shape[-1]
        if self.offset + width > self.configs.shape[1]:
            raise NotEnumerable("the estimator drew more Bernoulli bits than were enumerated")
        bits = self.configs[:, self.offset:self.offset + width]
        self.offset += width
        bits = bits.reshape(n_rows, *lead, shape[-1]).movedim(0, -2).to(probs.dtype)
        p = probs.expand(shape).to(torch.float64)
        b = bits.to(torch.float64)
        logp = torch.where(b > 0, torch.log(p), torch.log1p(-p))  # no 0 * log 0 = NaN at p in {0, 1}
        self.log_prob = self.log_prob + logp.movedim(-2, 0).reshape(n_rows, -1).sum(-1)
        return bits

    def categorical(self, probs: torch.Tensor, shape=None) -> torch.Tensor:
        shape = torch.Size(probs.shape if shape is None else shape)
        n_rows = self.configs.shape[0]
        if len(shape) < 3 or shape[-3] != n_rows:
            raise NotEnumerable(f"replay expects categorical draws of shape (..., {n_rows}, units, K), "
                                f"got {tuple(shape)}")
        lead, units, K = shape[:-3], shape[-2], shape[-1]
        width = math.prod(lead) * units
        if self.offset + width > self.configs.shape[1]:
            raise NotEnumerable("the estimator drew more categorical draws than were enumerated")
        codes = self.configs[:, self.offset:self.offset + width].long()
        if codes.numel() and not bool(((codes >= 0) & (codes < K)).all()):
            raise NotEnumerable(f"replayed categories are outside [0, {K})")
        self.offset += width
        index = codes.reshape(n_rows, *lead, units).movedim(0, -2)
        one_hot = torch.nn.functional.one_hot(index, K)
        logp = torch.log(probs.expand(shape).to(torch.float64)).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        self.log_prob = self.log_prob + logp.movedim(-2, 0).reshape(n_rows, -1).sum(-1)
        return one_hot.to(probs.dtype)

    def uniform(self, shape, like):
        raise NotEnumerable("continuous randomness cannot be enumerated")

    normal = uniform
    logistic = uniform
    gumbel = uniform

    def beta(self, alpha, beta, shape, like):
        raise NotEnumerable("continuous randomness cannot be enumerated")

    def rademacher(self, shape, like):
        raise NotEnumerable("continuous randomness cannot be enumerated")


NOISE_LAWS = ("uniform", "logistic", "normal", "gumbel", "flat-dirichlet", "beta")


@dataclasses.dataclass(frozen=True)
class NoiseLaw:
    """The law of one continuous draw an estimator makes, so the harness can integrate its moments
    (exact moments by quadrature, beside enumeration of the discrete draws).

    ``kind`` names the law and the ``Noise`` method that draws it: 'uniform' (U[0, 1]), 'logistic',
    'normal' (N(0, 1)), 'gumbel' (standard Gumbel), or 'flat-dirichlet' (a ``gumbel`` draw read only
    through softmax(-G) over its last axis: a point of the simplex under Dirichlet(1, ..., 1)).
    ``breaks``: where a sample (or anything else the estimate is discontinuous or kinked in) changes
    value, in the law's own variable; a tensor broadcastable to the draw's shape plus a trailing axis
    of breakpoints (any order, repeats allowed), or None for a smooth dependence. ``argmax_of``
    (gumbel only): the estimate changes where argmax(argmax_of + G) over the last axis does (the
    Gumbel-max trick); the harness then enumerates the argmax and integrates G given it. ``shape``
    (beta only, and required there): the Beta's (alpha, beta), a draw of ``Noise.beta``; the estimate
    must be smooth in it (no breakpoints). ``lead``:
    axes of the draw before the batch axes; with ``copies`` the first of them holds K conditionally
    i.i.d. copies over which the estimate is an average (a Rao-Blackwellisation's K draws), so the
    harness integrates one copy and weighs its moments for K. ``grows``: the estimate grows without
    bound with the noise (a rectifier's), so the rule of an unbounded law clusters its nodes at the
    infinite ends.
    """

    kind: str
    breaks: torch.Tensor | None = None
    argmax_of: torch.Tensor | None = None
    lead: int = 0
    copies: bool = False
    grows: bool = False
    shape: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in NOISE_LAWS:
            raise ValueError(f"noise law must be one of {', '.join(NOISE_LAWS)}, got {self.kind!r}")
        if (self.kind == "beta") != (self.shape is not None):
            raise ValueError("a Beta law, and only a Beta law, takes shape=(alpha, beta)")
        if self.kind == "beta" and (self.breaks is not None or not all(v > 0 for v in self.shape)):
            raise ValueError("a Beta law takes alpha, beta > 0 and no breakpoints")
        if self.copies and self.lead < 1:
            raise ValueError("copies need a leading copy axis (lead >= 1)")


def attach_gradient(value: torch.Tensor, logits: torch.Tensor, grad: torch.Tensor,
                    event_dims: int = 1) -> torch.Tensor:
    """Return ``value`` unchanged whose gradient w.r.t. ``logits`` is additionally ``grad``.

    (grad * logits).sum - (same).detach() is exactly zero in value and has derivative ``grad``;
    the sum runs over the last ``event_dims`` axes: 1 for binary logits (units), 2 for categorical
    logits (units, K).
    """
    term = (grad.detach() * logits).sum(tuple(range(-event_dims, 0)))
    return value + (term - term.detach())


def reduce_to_batch(value: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    """Average leading evaluation axes so the surrogate has the logits' batch shape."""
    extra = value.ndim - batch_ndim
    return value.mean(dim=tuple(range(extra))) if extra > 0 else value


class ParameterTrait:
    """A trait that a constructor parameter changes (declare with :func:`parameter_trait`).

    Read from the class it is the declared default (what the estimator is with its default
    parameters, as ``bench list`` shows it); read from an instance it is computed from that
    instance's parameters. Read-only: a trait is never assigned per instance."""

    def __init__(self, default, compute: Callable[["Estimator"], object]):
        self.default = default
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None):
        return self.default if instance is None else self.compute(instance)

    def __set__(self, instance, value) -> None:
        raise AttributeError(f"{type(instance).__name__}.{self.name} is a trait computed from the "
                             "estimator's parameters; it cannot be assigned")


def parameter_trait(default) -> Callable[[Callable[["Estimator"], object]], ParameterTrait]:
    """Decorate a method computing a trait from the instance's parameters; ``default`` is the
    class-level answer (with the default parameters)."""
    def declare(compute: Callable[["Estimator"], object]) -> ParameterTrait:
        return ParameterTrait(default, compute)

    return declare


FAMILY_ORDER = ("exact", "score function", "control variate", "relaxation", "straight-through", "perturbation",
                "non-binary", "sequence RL", "router", "other")  # the families the report colours by, in its order
OTHER_FAMILY = "other"


@dataclasses.dataclass(frozen=True)
class Traits:
    """An estimator's traits as one frozen record (in the manner of scikit-learn's tags): the one list
    of trait names that ``bench list``, the runs' notes and the reports iterate over. Each field is
    declared once, as a class attribute of the estimator (see :class:`Estimator`); ``traits()`` reads
    them, from the instance where a parameter changes one."""

    family: str
    unbiased: bool
    loss_evals: int | str
    needs_loss_backprop: bool
    binary_forward: bool
    randomness: str
    stateful: bool
    has_parameters: bool
    activation: str
    variables: str

    @classmethod
    def of(cls, estimator) -> "Traits":
        """The traits of an estimator class (its declared defaults) or instance (its own answers)."""
        return cls(**{field.name: getattr(estimator, field.name) for field in dataclasses.fields(cls)})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Estimator(DeclaredDomains, torch.nn.Module):
    """Base class: subclasses implement ``forward(logits, loss_fn)`` and declare their traits.

    Traits (class attributes the harness reads; never special-case names; :meth:`traits` gathers
    those listed in :class:`Traits`):
    ``family`` -- the group the report colours by (one of FAMILY_ORDER for the built-ins; a plugin
    may name its own; a subclass inherits its parent's);
    ``unbiased`` -- E[estimate] equals the gradient of E[loss] under Bernoulli(sigm(logits)) units;
    ``loss_evals`` -- loss evaluations per estimate, a number or a formula (see :meth:`loss_evaluations`);
    ``needs_loss_backprop`` -- uses dL/dh (back-propagation through the loss) or only L's value;
    ``binary_forward`` -- the units' forward output is in {0, 1};
    ``randomness`` -- 'bernoulli' (discrete: exact moments by enumeration), 'continuous' or 'none';
    'bernoulli' means discrete draws of either kind -- Bernoulli bits for binary units, categorical
    draws (``rng.categorical``) for categorical ones -- so binary runs' stored notes keep their value
    and the harness enumerates both (each draw with its arity, 2 or K);
    ``stateful`` -- keeps running statistics (baselines) updated while ``update_state`` is True;
    ``has_parameters`` -- owns trainable parameters (control variates, learned baselines);
    ``activation`` -- the unit's mean non-linearity: 'sigmoid' (outputs in [0, 1]) or 'rectifier'
    (non-negative, unbounded); training problems pick a sparsity criterion from it (KL or L1);
    ``adaptation_lr`` -- Adam learning rate for the estimator's own parameters (see below);
    ``variables`` -- the units it serves: 'binary' (Bernoulli logits ``(*batch, units)``, h in {0, 1}),
    'categorical' (logits ``(*batch, units, K)``, one-hot h of that shape) or 'both';
    ``loss_rounding`` -- how far one coordinate of the estimate can move per unit of rounding error in
    a loss value it uses: 1 for estimators that difference loss values or weight them by a score or a
    probability (REINFORCE and its baselines, ARM, DisARM, IndeCateR, exact enumeration, ...), whose
    float rounding is eps |L| however small the gradient; 1 / (2 step) for finite differences; 0 (the
    default) for estimators that use dL/dh only, which round relative to the estimate's own values.
    The harness's rounding floors (the unbiasedness test, the exact check) read it;
    ``schedule`` -- carries a schedule (a slope, a temperature) that advances once per training step
    while ``update_state`` is True; the harness measures such an estimator at the state its
    parameters declare (:meth:`holding_schedule` during warm-up, :meth:`schedule_state` in the notes).
    A trait that a parameter changes is declared with :func:`parameter_trait`: the class keeps the
    default, each instance computes its own answer (never assign traits in ``__init__``).

    Noise: every draw goes through ``self.rng``; callers hand a source in for a block with
    :meth:`drawing_from` (beside :meth:`frozen`), which restores the previous one afterwards.

    Own parameters: while ``update_state`` is True, an estimator with ``has_parameters`` adds the
    gradient of its own objective (e.g. the estimate's variance for REBAR/RELAX, the baseline's
    squared error for NVIL) into its parameters' ``.grad``; the surrogate carries no gradient to
    them. Whoever drives it (the harness's adaptation phase, a training loop) zeroes those grads,
    calls the estimator, and steps an optimiser over ``estimator.parameters()``.

    Stacked layers: a model with several stochastic layers uses ``estimator.layer(i)`` for layer i,
    so per-unit state and parameters stay per layer while the noise and freezing are shared.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    traits_type: ClassVar[type[Traits]] = Traits
    family: ClassVar[str] = OTHER_FAMILY
    unbiased: ClassVar[bool] = False
    loss_evals: ClassVar[int | str] = 1
    needs_loss_backprop: ClassVar[bool] = True
    binary_forward: ClassVar[bool] = True
    randomness: ClassVar[str] = "bernoulli"
    stateful: ClassVar[bool] = False
    has_parameters: ClassVar[bool] = False
    activation: ClassVar[str] = "sigmoid"
    adaptation_lr: ClassVar[float] = 1e-2
    variables: ClassVar[str] = "binary"
    loss_rounding: ClassVar[float] = 0.0
    schedule: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.rng: Noise = Noise()
        self.update_state = True
        self.schedule_held = False

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        """Loss evaluations per estimate for a layer of ``units`` units (of ``categories`` categories
        each: estimators that serve categorical units take it; the harness passes it only for them)."""
        if isinstance(self.loss_evals, int):
            return self.loss_evals
        raise NotImplementedError(f"{type(self).__name__} declares loss_evals={self.loss_evals!r} "
                                  "and must override loss_evaluations()")

    def bernoulli_draws(self, units: int) -> int:
        """Bernoulli bits drawn per estimate (what exact enumeration must cover)."""
        return units if self.randomness == "bernoulli" else 0

    def noise_laws(self, logits: torch.Tensor, categorical: bool = False) -> tuple[NoiseLaw, ...] | None:
        """The law of every continuous draw one call ``self(logits, ...)`` makes, in draw order (see
        :class:`NoiseLaw`); ``logits`` are the call's own, so breakpoints may depend on them. None
        (the default): not declared, so the harness computes no exact moments for continuous noise."""
        return None

    def check_units(self, units: int) -> None:
        """Raise ValueError if this estimator cannot serve a layer of ``units`` units."""

    @property
    def enumerable(self) -> bool:
        return self.randomness in ("bernoulli", "none")

    def traits(self) -> Traits:
        """This instance's traits, one frozen record (a parameter may change some; see
        :func:`parameter_trait`)."""
        return self.traits_type.of(self)

    @classmethod
    def declared_traits(cls) -> Traits:
        """The class's traits with its default parameters (what ``bench list`` shows)."""
        return cls.traits_type.of(cls)

    def layer(self, index: int) -> "Estimator":
        """The estimator for stochastic layer ``index`` of a stacked model: layer 0 is ``self``,
        the others are copies made on first use (so baselines and own parameters are per layer)
        that share ``self``'s noise source and ``update_state``."""
        if index < 0:
            raise ValueError(f"layer index must be >= 0, got {index}")
        if index == 0:
            return self
        if "_layer_copies" not in self._modules:
            self._layer_copies = torch.nn.ModuleList()
        copies = self._layer_copies
        while len(copies) < index:
            clone = copy.deepcopy(self, {id(self.rng): Noise()})  # the copy does not clone the noise
            clone._modules.pop("_layer_copies", None)
            copies.append(clone)
        clone = copies[index - 1]
        clone.rng = self.rng
        clone.update_state = self.update_state
        clone.schedule_held = self.schedule_held
        clone.train(self.training)
        return clone

    @contextlib.contextmanager
    def frozen(self) -> Iterator["Estimator"]:
        """Hold running statistics fixed, so estimates drawn inside are i.i.d."""
        previous = self.update_state
        self.update_state = False
        try:
            yield self
        finally:
            self.update_state = previous

    @contextlib.contextmanager
    def holding_schedule(self) -> Iterator["Estimator"]:
        """Keep a schedule (``schedule`` trait) where it is while running statistics still adapt:
        the harness's warm-up adapts baselines, never the estimator's definition."""
        previous = self.schedule_held
        self.schedule_held = True
        try:
            yield self
        finally:
            self.schedule_held = previous

    @property
    def advances_schedule(self) -> bool:
        """Whether a call now advances the schedule: state updates on and the schedule not held."""
        return self.update_state and not self.schedule_held

    def schedule_state(self) -> str | None:
        """The schedule's current state in words ('slope 1.0'), for the run's notes; None without one."""
        return None

    @contextlib.contextmanager
    def drawing_from(self, noise: Noise) -> Iterator["Estimator"]:
        """Draw every random number inside the block from ``noise`` (and so do the layer copies,
        see :meth:`layer`); the previous source is restored afterwards, also on an exception."""
        previous = self.rng
        self._share_noise(noise)
        try:
            yield self
        finally:
            self._share_noise(previous)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back a ``state_dict()`` taken during training (to resume a run): the layer copies it
        names are made first, and running statistics and own parameters sized on first use take
        the saved shapes (which ``load_state_dict`` would refuse). State that must survive a resume
        lives in buffers and parameters."""
        copies = {int(name.split(".")[1]) for name in state if name.startswith("_layer_copies.")}
        for index in sorted(copies):
            self.layer(index + 1)
        device = next((t.device for t in [*self.parameters(), *self.buffers()]), torch.device("cpu"))
        for name, value in state.items():
            owner, _, attribute = name.rpartition(".")
            module = self.get_submodule(owner)
            value = value.to(device)
            if attribute in module._parameters and module._parameters[attribute] is not None:
                module._parameters[attribute].data = value
            elif attribute in module._buffers:
                module._buffers[attribute] = value
            else:
                raise KeyError(f"{type(self).__name__} has no parameter or buffer {name!r}")

    def _share_noise(self, noise: Noise) -> None:
        self.rng = noise
        for clone in self._modules.get("_layer_copies", ()):
            clone.rng = noise

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name or type(self).__name__} has no pathwise sample(); "
                                  "call estimator(logits, loss_fn) instead")

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class PathwiseEstimator(Estimator):
    """An estimator that is a differentiable sample: surrogate = loss_fn(sample(logits))."""

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        return loss_fn(self.sample(logits))


def all_configurations(n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """All 2^n binary vectors as rows, shape (2^n, n); row k holds the bits of k (LSB first)."""
    codes = torch.arange(2**n, device=device).unsqueeze(1)
    return ((codes >> torch.arange(n, device=device)) & 1).to(dtype)


def all_categories(units: int, K: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """All K^units configurations of ``units`` categorical units, one-hot, shape (K^units, units, K);
    in row k unit j takes digit j of k in base K (least significant first), so with K = 2 the
    category indices are the bits of :func:`all_configurations`."""
    codes = torch.arange(K**units, device=device).unsqueeze(1)
    digits = (codes // K ** torch.arange(units, device=device)) % K
    return torch.nn.functional.one_hot(digits, K).to(dtype)
