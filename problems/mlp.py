"""Multilayer perceptrons whose hidden units are an estimator's units: binary stochastic hidden
units as a regulariser (Hinton's 2012 lecture 9, reported in the second seed document).

The claim under test: an MLP whose hidden units are sampled h ~ Bernoulli(sigm(a)) in the forward
pass and back-propagated as sigmoids (``straight-through-sigmoid``) trains more slowly than the same
net with deterministic sigmoid units (``sigmoid``), ends with a higher training error and a lower
test error; the proposed reasons are gradient noise, information lost by quantising, and the true
derivative of a sampled unit being zero (so the backward pass is biased).

Two problems make it measurable:

``mnist-mlp`` (and ``fashion-mnist-mlp``), a training problem: 784 -> hidden... -> 10 softmax with
the estimator at every hidden layer (``estimator.layer(l)``, as in the sigmoid belief net), trained
by SGD. Per epoch it records the training criterion, the error of the deterministic net (units
replaced by their mean activation) and of the sampled net (units drawn as in training) on training,
validation and test examples; at checkpoint epochs it yields a :class:`MlpProbe` of the current
weights, on which the harness measures the bias and variance of the hidden-layer gradient.

``mlp-probe``, a gradient problem: a fixed MLP and a fixed mini-batch, the gradient of the
mini-batch's expected cross-entropy w.r.t. the hidden biases (one scope per layer) under
Bernoulli(sigm(a)) hidden units, exact by enumeration for small nets and otherwise estimated by
the unit-flip estimator (see :meth:`MlpProbe.flip_gradient`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

from estimators.base import Noise
from estimators.domains import SEED, Count, Interval, OneOf, Satisfies
from problems import register_problem
from problems.base import (MAX_ENUMERATION_UNITS, Checkpoint, LossObserver, OwnParameterOptimizer, Problem,
                           Record, Reference, Snapshot, TrainingState, parse_sizes, layer_sizes)
from problems.training import (CLASSES, EVAL_EXAMPLES, INPUTS, TRAIN_EXAMPLES, MnistTrainingProblem, Stopwatch,
                               Stream, subset, chunked_sums, first_examples, seed_stream, seeded_generator,
                               seeded_linear, sgd, train_epoch)

DEFAULT_HIDDEN = "500-500"
DEFAULT_EPOCHS = 30
DEFAULT_CHECKPOINTS = "0-5-30"
FLIP_ELEMENTS = 2**24        # values per vectorised step of the flip estimator
ENUMERATION_ELEMENTS = 2**22  # values per vectorised step of the enumeration
REFERENCE_METHODS = ("auto", "exact", "sampled")

Layers = Sequence[tuple[torch.Tensor, torch.Tensor]]


# -- the stochastic forward pass ------------------------------------------------------------------
def nested_surrogate(layers: Layers, readout: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     estimator) -> torch.Tensor:
    """The per-example surrogate of ``readout(h_D)`` with ``estimator.layer(l)`` at hidden layer l.

    ``layers`` are the hidden layers' (W, b); layer l's loss_fn maps h_l (*extra, *batch, width) to
    the surrogate of layer l+1 on logits h_l W' + b, so pathwise estimators back-propagate through
    the layers above and score-function ones use the value of the loss downstream."""
    depth = len(layers)

    def loss_fn_for(l: int) -> Callable[[torch.Tensor], torch.Tensor]:
        if l == depth - 1:
            return readout
        weight, bias = layers[l + 1]

        def loss_fn(h: torch.Tensor) -> torch.Tensor:
            return estimator.layer(l + 1)(h @ weight.T + bias, loss_fns[l + 1])

        return loss_fn

    loss_fns = [loss_fn_for(l) for l in range(depth)]
    weight, bias = layers[0]
    return estimator(x @ weight.T + bias, loss_fns[0])


def cross_entropy_readout(weight: torch.Tensor, bias: torch.Tensor,
                          y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """h (*extra, *batch, width) -> per-example cross-entropy (*extra, *batch) of softmax(h W' + b)."""

    def readout(h: torch.Tensor) -> torch.Tensor:
        logits = h @ weight.T + bias
        labels = y.expand(logits.shape[:-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               reduction="none").reshape(labels.shape)

    return readout


def error_readout(weight: torch.Tensor, bias: torch.Tensor,
                  y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """h -> 1 where the class with the largest logit is wrong, else 0 (per example)."""

    def readout(h: torch.Tensor) -> torch.Tensor:
        logits = h @ weight.T + bias
        return (logits.argmax(-1) != y.expand(logits.shape[:-1])).to(h.dtype)

    return readout


def mean_activation(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """A unit's deterministic counterpart: sigm(a) for 'sigmoid' units, max(0, a) for 'rectifier'."""
    return torch.relu(logits) if activation == "rectifier" else torch.sigmoid(logits)


class Mlp(torch.nn.Module):
    """inputs -> hidden widths -> classes; weights W ~ U(+-1/sqrt(fan_in)), biases 0, from a generator."""

    def __init__(self, widths: tuple[int, ...], generator: torch.Generator, inputs: int = INPUTS,
                 classes: int = CLASSES):
        super().__init__()
        sizes = (inputs, *widths)
        self.hidden = torch.nn.ModuleList(seeded_linear(sizes[l], sizes[l + 1], generator)
                                          for l in range(len(widths)))
        self.output = seeded_linear(sizes[-1], classes, generator)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.weight, layer.bias) for layer in self.hidden]

    def surrogate(self, x: torch.Tensor, y: torch.Tensor, estimator) -> torch.Tensor:
        """Per-example training surrogate of the cross-entropy, the estimator at every hidden layer."""
        return nested_surrogate(self.layers(), cross_entropy_readout(self.output.weight, self.output.bias, y),
                                x, estimator)

    def sampled_errors(self, x: torch.Tensor, y: torch.Tensor, estimator) -> torch.Tensor:
        """Per-example misclassification (averaged over the estimator's evaluations) with the hidden
        units produced as the training forward pass produces them."""
        return nested_surrogate(self.layers(), error_readout(self.output.weight, self.output.bias, y),
                                x, estimator)

    def mean_field(self, x: torch.Tensor, activation: str) -> torch.Tensor:
        """Class logits of the deterministic net: every unit replaced by its mean activation."""
        h = x
        for layer in self.hidden:
            h = mean_activation(layer(h), activation)
        return self.output(h)


# -- the gradient problem at fixed weights ----------------------------------------------------------
@register_problem("mlp-probe", "An MLP's stochastic hidden layers at fixed weights and a fixed mini-batch: "
                               "gradient w.r.t. the hidden biases (exact up to 20 hidden units)")
class MlpProbe(Problem):
    """d/db_l of E[mean_b CE(softmax(W_out h_D + c), y_b)] with h_l ~ Bernoulli(sigm(W_l h_{l-1} + b_l)),
    h_0 = x_b, for a fixed batch of examples: the hidden-layer gradient a training step uses.

    Gradient order: layer 1's biases, layer 2's, ...; ``scopes()`` names them 'layer1', 'layer2'.
    ``units`` counts every example's units (batch x sum of widths): what one estimate draws.

    As a registered problem it is a seeded toy (``widths``, ``inputs`` features in [0, 1], ``classes``,
    ``batch`` examples, W ~ N(0, 4 / fan_in), biases ~ N(0, 1/4), labels uniform, from ``data_seed``);
    ``MnistMlp`` builds one from its current weights at each checkpoint (:meth:`at`).

    Reference: exact when the hidden units of one example number at most 20 (the expectation
    factorises over examples; enumeration per example, float64, differentiated by autograd);
    otherwise, or with ``reference_method='sampled'``, the mean of ``reference_samples`` unit-flip
    estimates (:meth:`flip_gradient`) with per-coordinate standard errors (scipy.stats.sem)."""

    domains = {"widths": layer_sizes(), "inputs": Count(1), "classes": Count(2), "batch": Count(1),
               "data_seed": SEED, "reference_method": OneOf(*REFERENCE_METHODS), "reference_samples": Count(1)}

    def __init__(self, widths: str = "4-3", inputs: int = 5, classes: int = 3, batch: int = 2,
                 data_seed: int = 0, reference_method: str = "auto", reference_samples: int = 256):
        super().__init__()
        sizes = parse_sizes(widths, "widths")
        generator = seeded_generator(data_seed, Stream.PROBE_DATA)
        dims = (inputs, *sizes)
        layers = [(torch.randn(dims[l + 1], dims[l], generator=generator) * (2 / math.sqrt(dims[l])),
                   torch.randn(dims[l + 1], generator=generator) * 0.5) for l in range(len(sizes))]
        readout = (torch.randn(classes, sizes[-1], generator=generator) * (2 / math.sqrt(sizes[-1])),
                   torch.randn(classes, generator=generator) * 0.5)
        x = torch.rand(batch, inputs, generator=generator)
        y = torch.randint(0, classes, (batch,), generator=generator)
        self.data_seed = data_seed
        self._configure(layers, readout, x, y, reference_method, reference_samples, data_seed)

    @classmethod
    def at(cls, layers: Layers, readout: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
           reference_samples: int, reference_seed: int) -> "MlpProbe":
        """A probe of given weights (copied, detached) on the mini-batch (x, y)."""
        probe = cls.__new__(cls)
        Problem.__init__(probe)
        probe._configure(layers, readout, x, y, "auto", reference_samples, reference_seed)
        return probe

    def _configure(self, layers: Layers, readout, x, y, reference_method: str, reference_samples: int,
                   reference_seed: int) -> None:
        if reference_method not in REFERENCE_METHODS:
            raise ValueError(f"reference_method must be one of {', '.join(REFERENCE_METHODS)}, "
                             f"got {reference_method!r}")
        self.widths = tuple(int(weight.shape[0]) for weight, _ in layers)
        self.inputs, self.classes, self.batch = int(x.shape[-1]), int(readout[0].shape[0]), int(x.shape[0])
        if reference_method == "exact":
            self._check_enumerable()
        self.reference_method, self.reference_samples = reference_method, reference_samples
        self.reference_seed = reference_seed
        for l, (weight, bias) in enumerate(layers):
            self.register_buffer(f"weight{l + 1}", weight.detach().clone())
            self.register_buffer(f"bias{l + 1}", bias.detach().clone())
        self.register_buffer("readout_weight", readout[0].detach().clone())
        self.register_buffer("readout_bias", readout[1].detach().clone())
        self.register_buffer("x", x.detach().clone())
        self.register_buffer("y", y.detach().clone())

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def dim(self) -> int:
        return sum(self.widths)

    @property
    def units(self) -> int:
        return self.batch * sum(self.widths)

    def scopes(self) -> dict[str, slice]:
        bounds = np.cumsum((0, *self.widths))
        return {f"layer{l + 1}": slice(int(bounds[l]), int(bounds[l + 1])) for l in range(self.depth)}

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(getattr(self, f"weight{l + 1}"), getattr(self, f"bias{l + 1}")) for l in range(self.depth)]

    # -- the loss of whole configurations (what enumeration and the contract tests use) -----------
    def loss(self, h: torch.Tensor) -> torch.Tensor:
        """L of configurations h (..., batch * sum(widths)): example-major, each example's layers
        side by side; the mean over the batch of the last layer's cross-entropy."""
        per_example = h.unflatten(-1, (self.batch, self.dim))
        last = per_example[..., self.dim - self.widths[-1]:]
        return cross_entropy_readout(self.readout_weight, self.readout_bias, self.y)(last).mean(-1)

    # -- gradient estimates ----------------------------------------------------------------------
    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        """(n, dim): the bias gradient of the batch's mean loss, with per-sample bias copies as leaves."""
        return hidden_bias_gradients(self.layers(), (self.readout_weight, self.readout_bias), self.x, self.y,
                                     estimator, n, observe)

    # -- the reference ----------------------------------------------------------------------------
    def _check_enumerable(self) -> None:
        if sum(self.widths) > MAX_ENUMERATION_UNITS:
            raise ValueError(f"{self.name or 'mlp-probe'}: {sum(self.widths)} hidden units per example are too "
                             f"many to enumerate (at most {MAX_ENUMERATION_UNITS})")

    def reference(self) -> Reference:
        exact = self.reference_method == "exact" or (self.reference_method == "auto"
                                                     and sum(self.widths) <= MAX_ENUMERATION_UNITS)
        if exact:
            return Reference(self.exact_gradient().to("cpu", torch.float64))
        generator = seeded_generator(self.reference_seed, Stream.FLIP_REFERENCE, device=self.x.device)
        samples = torch.stack([self.flip_gradient(generator) for _ in range(self.reference_samples)])
        values = samples.to("cpu", torch.float64).numpy()
        return Reference(torch.from_numpy(values.mean(0)),
                         torch.from_numpy(np.asarray(scipy.stats.sem(values, axis=0), dtype=np.float64)))

    def exact_gradient(self) -> torch.Tensor:
        return self.enumerate_gradient()

    def enumerate_gradient(self) -> torch.Tensor:
        return self._enumerate(gradient=True)[1]

    def expected_loss(self) -> float:
        return self._enumerate(gradient=False)[0]

    def _enumerate(self, gradient: bool) -> tuple[float, torch.Tensor | None]:
        """(E[L], dE[L]/d biases) in float64: per example, the 2^(sum of widths) hidden
        configurations weighted by their probability, differentiated by autograd."""
        self._check_enumerable()
        layers = [(w.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64).requires_grad_(gradient))
                  for w, b in self.layers()]
        readout = cross_entropy_readout(self.readout_weight.detach().to("cpu", torch.float64),
                                        self.readout_bias.detach().to("cpu", torch.float64),
                                        self.y.cpu().unsqueeze(-1))
        x = self.x.detach().to("cpu", torch.float64)
        count = 2 ** self.dim
        block = max(1, ENUMERATION_ELEMENTS // (self.batch * max(self.dim, self.classes)))
        total = torch.zeros((), dtype=torch.float64)
        grads = [torch.zeros_like(b) for _, b in layers]
        for start in range(0, count, block):
            codes = torch.arange(start, min(start + block, count)).unsqueeze(1)
            configs = ((codes >> torch.arange(self.dim)) & 1).to(torch.float64)  # (S, dim)
            hidden = configs.split(list(self.widths), dim=-1)
            log_p = torch.zeros(self.batch, configs.shape[0], dtype=torch.float64)
            below = x.unsqueeze(1)  # (batch, 1, inputs)
            for (weight, bias), h in zip(layers, hidden):
                logits = below @ weight.T + bias  # (batch, S or 1, width)
                log_p = log_p + (h * F.logsigmoid(logits) + (1 - h) * F.logsigmoid(-logits)).sum(-1)
                below = h.unsqueeze(0)
            losses = readout(hidden[-1].expand(self.batch, -1, -1))  # (batch, S)
            part = (log_p.exp() * losses).sum() / self.batch
            if gradient:
                for g, piece in zip(grads, torch.autograd.grad(part, [b for _, b in layers])):
                    g += piece
            total += part.detach()
        return float(total), (torch.cat(grads) if gradient else None)

    @torch.no_grad()
    def flip_gradient(self, generator: torch.Generator) -> torch.Tensor:
        """One unbiased estimate of the reference (dim,), in float64.

        For unit i of layer l and example b, with every unit drawn as h = 1[u < sigm(a)],
        dE[L]/db_{l,i} = E[sigm'(a_{l,i}) (L(h_{l,i} = 1) - L(h_{l,i} = 0))], the downstream layers of
        both values re-drawn with the same uniforms u (common random numbers keep the difference
        small). Every unit of every layer is flipped at once, in blocks of units."""
        layers = self.layers()
        readout = cross_entropy_readout(self.readout_weight, self.readout_bias, self.y.unsqueeze(-1))
        uniforms, hidden, logits = [], [], []
        below = self.x
        for weight, bias in layers:
            a = below @ weight.T + bias
            u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
            below = (u < torch.sigmoid(a)).to(a.dtype)
            logits.append(a)
            uniforms.append(u)
            hidden.append(below)
        base = cross_entropy_readout(self.readout_weight, self.readout_bias, self.y)(hidden[-1])  # (batch,)
        out = []
        for l, (a, h) in enumerate(zip(logits, hidden)):
            sign = 1 - 2 * h  # the flip's change of h_{l,i}
            widest = max([self.classes, *self.widths[l + 1:]])
            block = max(1, FLIP_ELEMENTS // (self.batch * widest))
            differences = []
            for start in range(0, self.widths[l], block):
                units = slice(start, min(start + block, self.widths[l]))
                # downstream of the flipped unit: (batch, block, width) for every later layer
                if l + 1 < self.depth:
                    weight, _ = layers[l + 1]
                    a_next = logits[l + 1].unsqueeze(1) + sign[:, units].unsqueeze(-1) * weight[:, units].T
                    flipped = (uniforms[l + 1].unsqueeze(1) < torch.sigmoid(a_next)).to(a.dtype)
                    for k in range(l + 2, self.depth):
                        weight, bias = layers[k]
                        flipped = (uniforms[k].unsqueeze(1) < torch.sigmoid(flipped @ weight.T + bias)).to(a.dtype)
                else:
                    one_hot = F.one_hot(torch.arange(units.start, units.stop, device=a.device), self.widths[l])
                    flipped = h.unsqueeze(1) + sign.unsqueeze(1) * one_hot.to(a.dtype)
                differences.append(readout(flipped) - base.unsqueeze(-1))
            change = torch.cat(differences, dim=1)  # (batch, width): L(flipped) - L(drawn)
            sigma = torch.sigmoid(a)
            out.append((sigma * (1 - sigma) * sign * change).mean(0))
        return torch.cat(out).to(torch.float64)


def hidden_bias_gradients(layers: Layers, readout: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                          y: torch.Tensor, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
    """(n, sum of widths) estimates of d/db_l of the mean loss over a batch, one per sample.

    ``x`` is (batch, inputs), shared by every sample, or (n, batch, inputs), a batch per sample
    (``y`` alike). Each sample gets its own copy of the biases as an autograd leaf, so one
    backward pass gives every sample's gradient. The units are laid out (batch, n, width), samples
    second to last as the contract's replay and loss observers expect."""
    leaves = [bias.detach().expand(n, bias.shape[-1]).clone().requires_grad_(True) for _, bias in layers]
    stochastic = [(weight.detach(), leaf) for (weight, _), leaf in zip(layers, leaves)]
    inputs, labels = (x.unsqueeze(1), y.unsqueeze(1)) if x.ndim == 2 else (x.transpose(0, 1), y.transpose(0, 1))
    loss = cross_entropy_readout(readout[0].detach(), readout[1].detach(), labels)
    if observe is not None:  # the observer sees one row per sample: the batch's units side by side
        batch, width = inputs.shape[0], layers[-1][0].shape[0]
        observed = observe(lambda rows: loss(rows.unflatten(-1, (batch, width)).movedim(-2, -3)))
        final = lambda h: observed(h.movedim(-3, -2).flatten(-2))  # noqa: E731
    else:
        final = loss
    surrogate = nested_surrogate(stochastic, final, inputs.detach(), estimator)
    grads = torch.autograd.grad(surrogate.mean(0).sum(), leaves)
    return torch.cat(grads, dim=-1)


# -- the training problem -----------------------------------------------------------------------------
def parse_checkpoints(text: str) -> tuple[int, ...]:
    """Checkpoint epochs joined by '-' like the hidden sizes ('0-1-5'; 0: before training), in a
    spec where ',' and '|' separate parameters and grid values; '' for none."""
    if not str(text).strip():
        return ()
    try:
        epochs = sorted({int(part) for part in str(text).replace(",", "-").split("-")})
    except ValueError:
        raise ValueError(f"checkpoints must be epochs >= 0 joined by '-', like '0-1-5', got {text!r}") from None
    return tuple(epochs)


def _checkpoint_format(text: str) -> bool:
    try:
        parse_checkpoints(text)
    except ValueError:
        return False
    return True


class MlpProblem(MnistTrainingProblem):
    """Trains the MLP with the estimator at its hidden units; per-epoch learning curves and
    checkpoint probes of the hidden-layer gradient.

    Parameters (our choices; the claim names none): ``hidden`` '500-500' (784-500-500-10);
    ``epochs`` 30; SGD with ``lr`` 0.1 and ``momentum`` 0.9, constant, mini-batches of
    ``batch_size`` 100, the same for every estimator (the claim compares like with like); weights
    W ~ U(+-1/sqrt(fan_in)), biases 0, from the run's seed; no weight decay, no early stopping.
    ``train_subset`` / ``eval_subset``: the first N training / validation and test examples (0 = all);
    ``train_eval_subset``: training examples the training errors are measured on (default the first
    10,000; 0 = all the training examples in use).
    Checkpoints (``checkpoints``, epochs joined by '-', 0 = before training, later than ``epochs``
    ignored): a
    probe of the current weights on a fixed mini-batch of ``probe_batch`` training examples on which
    the harness draws ``probe_samples`` estimates of the hidden-bias gradient against the true
    gradient of the binary net (``probe_reference_samples`` unit-flip estimates), and
    ``minibatch_variance``: the variance over ``probe_minibatches`` random mini-batches of the
    estimator's one-draw gradient (unit noise plus mini-batch noise)."""

    resumable = True
    domains = {"hidden": layer_sizes(), "epochs": Count(1), "lr": Interval(0, None, closed="neither"),
               "momentum": Interval(0, 1, closed="left"), "batch_size": Count(1), "train_subset": subset(TRAIN_EXAMPLES),
               "eval_subset": subset(EVAL_EXAMPLES), "train_eval_subset": subset(TRAIN_EXAMPLES),
               "checkpoints": Satisfies(_checkpoint_format, "empty or epochs >= 0 joined by '-', like '0-1-5'",
                                        bad=("zero", "1-x")),
               "probe_batch": Count(1), "probe_samples": Count(2, why="a variance needs two draws"),
               "probe_reference_samples": Count(1), "probe_minibatches": Count(2, why="a variance needs two draws")}

    def __init__(self, hidden: str = DEFAULT_HIDDEN, epochs: int = DEFAULT_EPOCHS, lr: float = 0.1,
                 momentum: float = 0.9, batch_size: int = 100, train_subset: int = 0, eval_subset: int = 0,
                 train_eval_subset: int = 10_000, checkpoints: str = DEFAULT_CHECKPOINTS, probe_batch: int = 100,
                 probe_samples: int = 500, probe_reference_samples: int = 100, probe_minibatches: int = 100):
        super().__init__()
        self.widths = parse_sizes(hidden, "hidden")
        self.hidden, self.epochs, self.lr, self.momentum = hidden, epochs, lr, momentum
        self.batch_size, self.train_subset, self.eval_subset = batch_size, train_subset, eval_subset
        self.train_eval_subset = train_eval_subset
        self.checkpoints = checkpoints
        self.checkpoint_epochs = tuple(e for e in parse_checkpoints(checkpoints) if e <= epochs)
        self.probe_batch, self.probe_samples = probe_batch, probe_samples
        self.probe_reference_samples, self.probe_minibatches = probe_reference_samples, probe_minibatches

    @property
    def units(self) -> int:
        return max(self.widths)

    def check_estimator(self, estimator) -> None:
        for width in self.widths:
            estimator.check_units(width)

    def build_model(self, seed: int) -> Mlp:
        return Mlp(self.widths, seeded_generator(seed, Stream.INIT)).to(self.device)

    def data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """train / train_eval / valid / test (images, labels) on the device, subsets applied."""
        moved = self.splits()
        moved["train_eval"] = first_examples(moved["train"], self.train_eval_subset)
        return moved

    def model_for(self, estimator, seed: int) -> Mlp:
        return self.build_model(seed)

    def fit(self, estimator, seed: int, progress: Callable[[int], None] | None = None,
            resume: dict | None = None, snapshots: bool = False) -> Iterator[Record | Checkpoint | Snapshot]:
        """Train for ``epochs``. Yields first (epoch None) ``lr`` and ``momentum``; per epoch e:
        ``train_criterion`` (mean per-example cross-entropy, nats, over the epoch's mini-batches as
        trained: the estimator's surrogate value), ``train_error`` / ``valid_error`` / ``test_error``
        (% misclassified by the deterministic net, units at their mean activation) and
        ``train_error_sampled`` / ``valid_error_sampled`` / ``test_error_sampled`` (units produced
        as in training, one draw, a separate noise stream), ``epoch_time_s`` (the training pass) and
        ``eval_time_s``; at each checkpoint epoch, a :class:`Checkpoint` and ``minibatch_variance``
        per scope ('all', 'layer1', ...); then, with ``snapshots``, a :class:`Snapshot` (``resume``,
        its state, continues after that epoch). The trained net is ``self.trained_model``."""
        device = self.device
        data = self.data()
        model = self.trained_model = self.build_model(seed)
        optimizer = sgd([{"params": list(model.parameters())}], self.lr, self.momentum)
        own_parameters = OwnParameterOptimizer(estimator)
        n_train = data["train"][0].shape[0]
        order_rng = seeded_generator(seed, Stream.ORDER)
        evaluation_noise = _noise(seed, Stream.EVAL_NOISE, device)
        probe_rng = seeded_generator(seed, Stream.PROBE_BATCHES)
        state = TrainingState(snapshots, model=model, optimizer=optimizer, own_parameters=own_parameters,
                              order=order_rng, evaluation_noise=evaluation_noise, probe=probe_rng)

        def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
            optimizer.zero_grad()
            own_parameters.zero_grad()
            surrogate = model.surrogate(x, y, estimator)
            surrogate.mean().backward()
            optimizer.step()
            own_parameters.step()
            return (surrogate.detach().sum(),)

        first = 0
        if resume is not None:
            first = state.restore(resume)["epoch"] + 1
        else:
            yield Record("lr", float(self.lr))
            yield Record("momentum", float(self.momentum))

        for epoch in range(first, self.epochs + 1):
            if epoch:
                (criterion_sum,), epoch_time = train_epoch(step, data["train"], self.batch_size, order_rng,
                                                           [torch.zeros((), device=device)], (model, estimator),
                                                           progress)
                watch = Stopwatch(device)
                errors = self._errors(model, estimator, data, evaluation_noise)
                values = torch.stack([criterion_sum / n_train, *errors.values()]).tolist()
                eval_time = watch.seconds()
                yield Record("train_criterion", values[0], epoch=epoch)
                for name, value in zip(errors, values[1:]):
                    yield Record(name, value, epoch=epoch)
                yield Record("epoch_time_s", epoch_time, epoch=epoch)
                yield Record("eval_time_s", eval_time, epoch=epoch)
            if epoch in self.checkpoint_epochs:
                yield from self._checkpoint(model, estimator, data["train"], epoch, probe_rng, seed)
            yield from state.resume_point(epoch * self.batches_per_epoch(), epoch=epoch)

    def _errors(self, model: Mlp, estimator, data, noise: Noise) -> dict[str, torch.Tensor]:
        """% misclassified (device scalars), deterministic and sampled, on each evaluation set."""
        mean_field, sampled = {}, {}

        def measure(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return ((model.mean_field(xb, estimator.activation).argmax(-1) != yb).sum(),
                    model.sampled_errors(xb, yb, estimator).sum())

        with _evaluating(model, estimator, noise):
            for split, name in (("train_eval", "train"), ("valid", "valid"), ("test", "test")):
                x, y = data[split]
                counts = [torch.zeros((), device=x.device, dtype=torch.float64) for _ in range(2)]
                wrong, wrong_sampled = chunked_sums(measure, x, y, counts)
                mean_field[f"{name}_error"] = wrong * (100.0 / x.shape[0])
                sampled[f"{name}_error_sampled"] = wrong_sampled * (100.0 / x.shape[0])
        return {**mean_field, **sampled}

    def _checkpoint(self, model: Mlp, estimator, train: tuple[torch.Tensor, torch.Tensor], epoch: int,
                    generator: torch.Generator, seed: int) -> Iterator[Record | Checkpoint]:
        """The probe of the current weights (a fixed mini-batch) and the mini-batch variance."""
        x, y = train
        batch = min(self.probe_batch, x.shape[0])
        chosen = torch.randperm(x.shape[0], generator=generator)[:batch].to(x.device)
        readout = (model.output.weight, model.output.bias)
        probe = MlpProbe.at(model.layers(), readout, x[chosen], y[chosen], self.probe_reference_samples,
                            reference_seed=seed_stream(seed, Stream.CHECKPOINT_REFERENCE + epoch))
        yield Checkpoint(probe, self.probe_samples, epoch=epoch)

        draws = torch.stack([torch.randperm(x.shape[0], generator=generator)[:batch]
                             for _ in range(self.probe_minibatches)]).to(x.device)
        gradients = []
        chunk = max(1, 2**21 // (batch * max(self.widths)))
        with _evaluating(model, estimator, _noise(seed, Stream.CHECKPOINT_NOISE + epoch, x.device), autograd=True):
            for start in range(0, self.probe_minibatches, chunk):
                rows = draws[start:start + chunk]
                gradients.append(hidden_bias_gradients(model.layers(), readout, x[rows], y[rows], estimator,
                                                       rows.shape[0]).detach())
        variance = torch.cat(gradients).to(torch.float64).var(dim=0)
        bounds = np.cumsum((0, *self.widths))
        yield Record("minibatch_variance", float(variance.sum()), epoch=epoch)
        for l in range(len(self.widths)):
            yield Record("minibatch_variance", float(variance[bounds[l]:bounds[l + 1]].sum()),
                         scope=f"layer{l + 1}", epoch=epoch)


@contextlib.contextmanager
def _evaluating(model: Mlp, estimator, noise: Noise, autograd: bool = False):
    """Measure without training: estimator frozen (no state updates) on its own noise, in training
    mode (so its units are drawn as in training), no autograd unless asked for; the training noise
    source (by :meth:`~estimators.base.Estimator.drawing_from`) and the model's mode are restored."""
    model_mode = model.training
    model.eval()
    try:
        with estimator.drawing_from(noise), estimator.frozen(), torch.set_grad_enabled(autograd):
            yield
    finally:
        model.train(model_mode)


def _noise(seed: int, stream: int, device: torch.device) -> Noise:
    return Noise(seeded_generator(seed, stream, device=device))


@register_problem("mnist-mlp", "MLP on MNIST with the estimator at every hidden unit (binary units as a "
                               "regulariser): learning curves, sampled vs mean-field errors, gradient checkpoints")
class MnistMlp(MlpProblem):
    """The MLP on MNIST (50,000 train / 10,000 valid / 10,000 test)."""

    dataset = "mnist"


@register_problem("fashion-mnist-mlp", "The MLP regulariser experiment on Fashion-MNIST")
class FashionMnistMlp(MlpProblem):
    """The MLP on Fashion-MNIST (50,000 train / 10,000 valid / 10,000 test)."""

    dataset = "fashion-mnist"
