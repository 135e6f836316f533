"""The paper's MNIST conditional-computation gater (Bengio, Leonard & Courville 2013, sec. 5 and
appendix A) as a training problem: any registered estimator is the gate non-linearity.

Model (appendix A): gater 784 -> ``hidden`` tanh -> ``gate_units`` gate logits a, the gates
h = the estimator's units at a; expert 784 -> ``gate_units`` linear; class logits =
output(h * expert(x)), softmax over 10 classes. The gater is trained through the estimator contract
``estimator(a, loss_fn)``, with ``loss_fn(h)`` the per-example classification loss of the rest of
the network, so score-function estimators (REINFORCE: the "stochastic binary neuron") never
back-propagate the classification loss into the gater, and multi-evaluation estimators stack h.

Choices the paper leaves open (all parameters of the problem spec, documented in ``GaterProblem``):
the sparsity criterion from the estimator's ``activation`` trait (KL, eq. 14, for 'sigmoid', on
sigm(a) for binary units and on the output for the others, so STS's Beta noise counts; L1, eq. 15,
with lambda adapted in the +-0.01 band for 'rectifier'); momentum 0.5 for estimators that
back-propagate through the loss, none for score-function ones (A.4: momentum helped STS, hurt SBN,
did not matter for ST and the noisy rectifier); the SBN gater's learning rate 0.001 for every
score-function estimator (A.4); test time (A.3): the unit's deterministic counterpart, thresholded
on the logits so that exactly the target fraction of gates is on over the first 10,000 training
examples (unsupervised, so tuning on training data leaves valid and test untouched).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from estimators.domains import POSITIVE, Count, Interval, Optional
from problems import register_problem
from problems.base import OwnParameterOptimizer, Record, Snapshot, TrainingState
from problems.conditional import GatedShape, flops_per_example
from problems.training import (CLASSES, EVAL_CHUNK, EVAL_EXAMPLES, INPUTS, TRAIN_EXAMPLES, MnistTrainingProblem,
                               Stopwatch, Stream, subset, chunked_sums, seeded_generator, seeded_linear, sgd,
                               train_epoch)

TUNE_EXAMPLES = 2_000  # default: training examples the test-time threshold is tuned on (4M logits at 2000 gates)
TEST_EVERY = 5  # default: epochs between test-set evaluations (the last epoch always has one)
SCORE_FUNCTION_GATER_LR = 1e-3  # A.4: the SBN gater learns 100x slower than the main part
DEFAULT_MOMENTUM = 0.5
DEFAULT_EPOCHS = 50
SPARSITY_BAND = 0.01  # A.1: lambda moves when the effective sparsity leaves target +- 0.01
ACTIVATIONS = ("sigmoid", "rectifier")


# -- the sparsity criteria (appendix A.1) ----------------------------------------------------------
def kl_sparsity_penalty(mean: torch.Tensor, target: float, lam: float | torch.Tensor) -> torch.Tensor:
    """Eq. 14: -lambda sum_i (s log p_i + (1 - s) log(1 - p_i)) for units' mean activations p_i
    over a mini-batch. As printed this is the cross-entropy form: it exceeds KL(s || p) by the
    constant lambda * units * H(s), with the same gradient. p is clamped into (0, 1), so a unit
    with no activity in the batch adds a finite value and no gradient."""
    tiny = torch.finfo(mean.dtype).tiny
    log_p = mean.clamp_min(tiny).log()
    log_q = (1 - mean).clamp_min(tiny).log()
    return -lam * (target * log_p + (1 - target) * log_q).sum()


def kl_sparsity_penalty_logits(logits: torch.Tensor, target: float, lam: float | torch.Tensor) -> torch.Tensor:
    """Eq. 14 with p_i the mini-batch mean (all axes but the last) of sigm(a_i): the exact mean
    activation of a Bernoulli(sigm(a)) unit. (In float32 only a unit whose logits are all below
    about -87, so dead, falls to the clamp; the log-mean-exp form would cost 5x as much.)"""
    return kl_sparsity_penalty(torch.sigmoid(logits).reshape(-1, logits.shape[-1]).mean(0), target, lam)


def l1_sparsity_penalty(h: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Eq. 15 per example: lambda sum_i |h_i|; its mini-batch mean is lambda sum_i |p_i| for h >= 0."""
    return lam * h.abs().sum(-1)


def adapt_l1_lambda(lam: torch.Tensor, nonzero_fraction: torch.Tensor, target: float,
                    step: float, band: float = SPARSITY_BAND) -> torch.Tensor:
    """A.1: raise lambda (times 1 + step) when the fraction of non-zero gates in the batch exceeds
    target + band, lower it (divided by 1 + step) below target - band, else keep it. On the
    device, without a host synchronisation."""
    up = torch.where(nonzero_fraction > target + band, lam * (1 + step), lam)
    return torch.where(nonzero_fraction < target - band, lam / (1 + step), up)


def tune_threshold(logits: torch.Tensor, target: float) -> torch.Tensor:
    """The logit threshold t such that exactly round(target * n) of the n values are > t (up to
    ties): the (n - k)-th smallest value. Thresholding the logits is thresholding any increasing
    function of them (sigmoid, rectifier) without float saturation ties."""
    flat = logits.detach().reshape(-1)
    k = int(round(target * flat.numel()))
    if k <= 0:
        return flat.max()
    if k >= flat.numel():
        return flat.min() - 1
    return torch.kthvalue(flat, flat.numel() - k).values


# -- the model ---------------------------------------------------------------------------------------
class GaterNet(torch.nn.Module):
    """The conditional layer: gate logits = gater_out(tanh(gater_hidden(x))), class logits =
    output(gates * expert(x)).

    ``test_gates`` is the deterministic test-time counterpart (A.3): with a sparsity target, a gate
    is on where its logit exceeds ``threshold`` t, tuned so the target fraction is on; 'sigmoid'
    gates are then rounded to 1 (A.2: the point of the Beta noise is to make sigmoids roundable),
    'rectifier' gates are max(0, a - t), the rectifier with its kink moved to the threshold (t < 0
    where noise-free units fire less than the noisy ones did in training). Inactive gates are
    exactly zero. Without a target: sigm(a) or max(0, a), unthresholded."""

    def __init__(self, hidden: int, gates: int, activation: str, target: float,
                 generator: torch.Generator, gate_bias: float = 0.0, inputs: int = INPUTS,
                 classes: int = CLASSES):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"gate activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.target = target
        self.gater_hidden = seeded_linear(inputs, hidden, generator)
        self.gater_out = seeded_linear(hidden, gates, generator, bias=gate_bias)
        self.expert = seeded_linear(inputs, gates, generator)
        self.output = seeded_linear(gates, classes, generator)
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def gater_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.gater_hidden.parameters(), *self.gater_out.parameters()]

    def main_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.expert.parameters(), *self.output.parameters()]

    def incoming_weights(self) -> list[torch.Tensor]:
        """Weight matrices whose rows are a unit's incoming weights (the max-norm constraint)."""
        return [self.gater_hidden.weight, self.gater_out.weight, self.expert.weight, self.output.weight]

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.gater_out(torch.tanh(self.gater_hidden(x)))

    def classify(self, gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Class logits from gates (any leading axes) and expert outputs (broadcast against them)."""
        return self.output(gates * experts)

    def mean_gates(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.relu(logits)

    @torch.no_grad()
    def tune(self, x: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
        """Set ``threshold`` so the target fraction of gates is on over the examples ``x``."""
        if self.target > 0:
            logits = torch.cat([self.gate_logits(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
            self.threshold.copy_(tune_threshold(logits, self.target))
        return self.threshold

    def test_gates(self, logits: torch.Tensor) -> torch.Tensor:
        if self.target <= 0:
            return self.mean_gates(logits)
        if self.activation == "sigmoid":
            return (logits > self.threshold).to(logits.dtype)
        return torch.relu(logits - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic test-time class logits (dense path)."""
        return self.classify(self.test_gates(self.gate_logits(x)), self.expert(x))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(% misclassified, fraction of exact-zero test gates) as device tensors, in chunks."""

        def measure(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            gates = self.test_gates(self.gate_logits(xb))
            logits = self.classify(gates, self.expert(xb))
            return (logits.argmax(-1) != yb).sum(), (gates == 0).sum()

        counts = [torch.zeros((), device=x.device, dtype=torch.long) for _ in range(2)]
        wrong, zeros = chunked_sums(measure, x, y, counts)
        n = x.shape[0]
        return wrong.double() * (100.0 / n), zeros.double() / (n * self.gater_out.out_features)


# -- one mini-batch ------------------------------------------------------------------------------------
class BatchObjective:
    """The training objective of one mini-batch and what it measured, without host syncs.

    ``objective`` = mean surrogate of the classification loss (+ the L1 penalty inside ``loss_fn``
    for rectifiers, so every estimator differentiates it its own way) + the KL penalty (sigmoids)
    on the units' mean activation p_i over the mini-batch: from the logits, sigm(a_i), when
    ``kl_on`` is 'logits'; from the units' output h as the estimator produced it when 'output'.
    ``nll_sum`` is the sum over examples of the classification loss (averaged over the
    estimator's evaluations), ``zeros`` the number of exact zeros among ``elements`` gate values
    fed to the loss."""

    def __init__(self, model: GaterNet, estimator, x: torch.Tensor, y: torch.Tensor,
                 criterion: str | None, target: float, lam: torch.Tensor | float, kl_on: str = "logits"):
        logits = model.gate_logits(x)
        experts = model.expert(x)
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def loss_fn(h: torch.Tensor) -> torch.Tensor:
            out = model.classify(h, experts)
            nll = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.expand(out.shape[:-1]).reshape(-1),
                                  reduction="none").reshape(out.shape[:-1])
            seen.append((nll, h))
            return nll + l1_sparsity_penalty(h, lam) if criterion == "l1" else nll

        surrogate = estimator(logits, loss_fn)
        objective = surrogate.mean()
        if criterion == "kl":
            if kl_on == "output":
                outputs = torch.cat([h.reshape(-1, h.shape[-1]) for _, h in seen])
                objective = objective + kl_sparsity_penalty(outputs.mean(0), target, lam)
            else:
                objective = objective + kl_sparsity_penalty_logits(logits, target, lam)
        self.objective = objective
        nll_values = torch.cat([nll.detach().reshape(-1) for nll, _ in seen])
        self.nll_sum = nll_values.sum() * (x.shape[0] / nll_values.numel())
        self.zeros = sum((h.detach() == 0).sum() for _, h in seen)
        self.elements = sum(h.numel() for _, h in seen)


class Trainer:
    """One run's training state: model, estimator, SGD (gater and main parameter groups), Adam on
    the estimator's own parameters, and the criterion's lambda. ``step`` trains on one mini-batch
    and ``epoch`` on one pass, without host synchronisation (statistics stay on the device)."""

    def __init__(self, model: GaterNet, estimator, settings: dict, lr: float, target: float,
                 max_norm: float, l1_step: float):
        self.model, self.estimator, self.settings = model, estimator, settings
        self.criterion, self.target = settings["criterion"], target
        self.max_norm, self.l1_step = max_norm, l1_step
        self.optimizer = sgd([{"params": model.gater_parameters(), "lr": settings["gater_lr"]},
                              {"params": model.main_parameters(), "lr": lr}], lr, settings["momentum"])
        self.own_parameters = OwnParameterOptimizer(estimator)
        self.lam = torch.tensor(float(settings["lambda"]), device=model.threshold.device)
        self.weights = model.incoming_weights()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> BatchObjective:
        estimator = self.estimator
        self.optimizer.zero_grad()
        self.own_parameters.zero_grad()
        batch = BatchObjective(self.model, estimator, x, y, self.criterion, self.target, self.lam,
                               self.settings["kl_on"])
        batch.objective.backward()
        self.optimizer.step()
        self.own_parameters.step()
        with torch.no_grad():
            for weight in self.weights:
                weight.renorm_(2, 0, self.max_norm)
            if self.criterion == "l1":
                self.lam = adapt_l1_lambda(self.lam, 1 - batch.zeros / batch.elements, self.target, self.l1_step)
        return batch

    def epoch(self, data: tuple[torch.Tensor, torch.Tensor], order: torch.Generator, batch_size: int,
              progress: Callable[[int], None] | None = None) -> tuple[list, float]:
        """One pass over ``data`` in a fresh order from ``order``: ((sum of per-example NLL,
        exact-zero gates, gates seen), wall seconds)."""

        def sums(x: torch.Tensor, y: torch.Tensor) -> tuple:
            batch = self.step(x, y)
            return batch.nll_sum.detach(), batch.zeros, batch.elements

        device = self.lam.device
        start = [torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0]
        return train_epoch(sums, data, batch_size, order, start, (self.model, self.estimator), progress)


# -- the problem ---------------------------------------------------------------------------------------
class GaterProblem(MnistTrainingProblem):
    """Trains the appendix-A conditional network with the estimator at the gates; per-epoch records.

    Parameters (the paper's value, or our choice where it gives none):
    ``epochs``: 50, i.e. 78,000 updates of 32 examples (not stated; the per-epoch ``valid_error``
    curve in the store shows whether a row has flattened by then).
    ``train_subset``: the first N of the 50,000 training examples, 0 = all.
    ``eval_subset``: the first N of the 10,000 valid and of the 10,000 test examples, 0 = all.
    ``gate_units`` 2000, ``hidden`` 400, ``sparsity_target`` 0.1 non-zero (0: no criterion, no
    threshold), ``lr`` 0.1 (expert and output layers), ``batch_size`` 32, ``max_norm`` 2 (every
    unit's incoming weights, in all four layers).
    ``gater_lr``: None = ``lr``, or 0.001 for estimators that do not back-propagate through the
    loss (A.4's SBN).
    ``momentum``: None = 0.5 for estimators that back-propagate through the loss, 0 for
    score-function ones (value not stated: with straight-through on MNIST, valid error after 8
    epochs was 3.5% at 0.5 against 6.1% at 0, and 0.9 stalled between 5% and 8%).
    ``kl_lambda``: 0.01 (eq. 14, sigmoid gates; not stated: after 3 epochs on 10,000 examples it
    kept straight-through's training fraction of non-zero gates at 0.11, where 0.001 let it drift
    to 0.17).
    ``l1_lambda``: 0.001, the initial eq. 15 lambda (rectifier gates); ``l1_step``: 0.01, its
    relative change per mini-batch while the batch's non-zero fraction is outside the band.
    ``gate_bias``: None = logit(target) for binary sigmoid gates, so their mean activation starts
    at the target; 0 otherwise.
    Initialisation: W ~ U(+-1/sqrt(fan_in)), biases 0 (gate biases: ``gate_bias``), from ``seed``.
    ``tune_examples``: 2,000, the first N training examples the test-time threshold is tuned on
    (its 10 % quantile is over N x ``gate_units`` logits: 4 million at the defaults).
    ``test_every``: 5, epochs between test-set evaluations (the last epoch is always evaluated);
    the valid error is measured every epoch. These two keep evaluation under 10 % of an epoch
    (measured on one CPU thread: 10,000 tuning and 10,000 test examples every epoch took 10-14 %).
    """

    resumable = True
    domains = {"epochs": Count(1), "train_subset": subset(TRAIN_EXAMPLES), "eval_subset": subset(EVAL_EXAMPLES),
               "gate_units": Count(1), "hidden": Count(1),
               "sparsity_target": Interval(0, 1, closed="left", description="in [0, 1) (0 = no sparsity criterion)"),
               "lr": POSITIVE, "gater_lr": Optional(POSITIVE, "from the estimator"),
               "momentum": Optional(Interval(0, 1, closed="left"), "from the estimator"), "kl_lambda": POSITIVE,
               "l1_lambda": POSITIVE, "l1_step": POSITIVE, "batch_size": Count(1), "max_norm": POSITIVE,
               "gate_bias": Optional(Interval(), "from the target"), "tune_examples": Count(1), "test_every": Count(1)}

    def __init__(self, epochs: int = DEFAULT_EPOCHS, train_subset: int = 0, eval_subset: int = 0,
                 gate_units: int = 2000, hidden: int = 400, sparsity_target: float = 0.1, lr: float = 0.1,
                 gater_lr: float | None = None, momentum: float | None = None, kl_lambda: float = 1e-2,
                 l1_lambda: float = 1e-3, l1_step: float = 0.01, batch_size: int = 32, max_norm: float = 2.0,
                 gate_bias: float | None = None, tune_examples: int = TUNE_EXAMPLES, test_every: int = TEST_EVERY):
        super().__init__()
        self.epochs, self.train_subset, self.eval_subset = epochs, train_subset, eval_subset
        self.gate_units, self.hidden, self.sparsity_target = gate_units, hidden, sparsity_target
        self.lr, self.gater_lr, self.momentum = lr, gater_lr, momentum
        self.kl_lambda, self.l1_lambda, self.l1_step = kl_lambda, l1_lambda, l1_step
        self.batch_size, self.max_norm, self.gate_bias = batch_size, max_norm, gate_bias
        self.tune_examples, self.test_every = tune_examples, test_every

    @property
    def units(self) -> int:
        return self.gate_units

    # -- hyper-parameters read from the estimator's traits -------------------------------------
    def settings(self, estimator) -> dict[str, object]:
        """Everything the estimator's traits decide: criterion, learning rates, momentum, gate bias."""
        activation = getattr(estimator, "activation", "sigmoid")
        if activation not in ACTIVATIONS:
            raise ValueError(f"estimator {estimator.name or type(estimator).__name__} declares activation "
                             f"{activation!r}; the gater needs one of {', '.join(ACTIVATIONS)}")
        backprop = bool(estimator.needs_loss_backprop)
        target = self.sparsity_target
        criterion = None if target <= 0 else ("kl" if activation == "sigmoid" else "l1")
        # Binary units: p_i from sigm(a), their exact mean. Other units trained by back-propagation:
        # from their output, which carries their training noise (A.2: STS's Beta noise at the input
        # of the sigmoid is part of the activation the KL sees).
        kl_on = "output" if (backprop and not estimator.binary_forward) else "logits"
        gate_bias = self.gate_bias
        if gate_bias is None:
            gate_bias = math.log(target / (1 - target)) if (criterion == "kl" and kl_on == "logits") else 0.0
        return {
            "activation": activation, "criterion": criterion, "kl_on": kl_on,
            "gater_lr": self.gater_lr if self.gater_lr is not None else (self.lr if backprop else SCORE_FUNCTION_GATER_LR),
            "momentum": self.momentum if self.momentum is not None else (DEFAULT_MOMENTUM if backprop else 0.0),
            "lambda": self.kl_lambda if criterion == "kl" else self.l1_lambda, "gate_bias": gate_bias,
        }

    def build_model(self, estimator, seed: int) -> GaterNet:
        """The untrained network for ``seed`` (initialised on the CPU, then moved to the device)."""
        config = self.settings(estimator)
        model = GaterNet(self.hidden, self.gate_units, config["activation"], self.sparsity_target,
                         seeded_generator(seed, Stream.INIT), config["gate_bias"])
        return model.to(self.device)

    def trainer(self, estimator, seed: int) -> "Trainer":
        """A fresh model for ``seed`` with its optimisers, ready for ``Trainer.step``."""
        return Trainer(self.build_model(estimator, seed), estimator, self.settings(estimator), self.lr,
                       self.sparsity_target, self.max_norm, self.l1_step)

    def data(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """train / tune / valid / test (images, labels) on the device, subsets applied."""
        moved = self.splits()
        moved["tune"] = tuple(t[:self.tune_examples] for t in moved["train"])
        return moved

    # -- training --------------------------------------------------------------------------------
    def model_for(self, estimator, seed: int) -> GaterNet:
        return self.build_model(estimator, seed)

    def fit(self, estimator, seed: int, progress: Callable[[int], None] | None = None,
            resume: dict | None = None, snapshots: bool = False) -> Iterator[Record | Snapshot]:
        """Train for ``epochs``; yield per epoch (``epoch`` = 1, 2, ...): ``train_criterion`` (mean
        per-example classification negative log-likelihood, nats, over the epoch's mini-batches in
        training mode, sparsity penalty excluded: our reading of the paper's "training criterion",
        whose values, 6e-5 to 1e-2, cannot include a KL penalty over 2000 units),
        ``valid_error`` and ``test_error`` (% misclassified, deterministic test-time gates; the test
        set every ``test_every`` epochs and at the last),
        ``sparsity_train`` (fraction of exact zeros among the gates fed to the loss in training),
        ``sparsity_test`` (same for the test-time gates on the test set, when tested), ``sparsity_lambda``
        (the criterion's lambda at the epoch's end, when there is a criterion), ``threshold`` (the
        tuned logit threshold, with a target), ``epoch_time_s`` (the training pass) and
        ``eval_time_s`` (tuning and evaluation). First, with epoch None: ``gater_lr`` and
        ``momentum`` as resolved; last, with epoch None: the final ``threshold`` (with a target)
        and per example, in multiply-adds as ``problems.conditional`` counts them, at the final test
        sparsity: ``flops_gater``, ``flops_expert_dense`` and ``flops_expert_sparse`` (expert with the
        output layer, all units or only the active ones) and ``flops_speedup_bound``. The network
        being trained is ``self.trained_model``. With ``snapshots``, a :class:`Snapshot` after every
        epoch; ``resume`` (its state) continues after that epoch."""
        estimator.check_units(self.gate_units)
        device = self.device
        data = self.data()
        trainer = self.trainer(estimator, seed)
        model = self.trained_model = trainer.model
        n_train = data["train"][0].shape[0]
        order_rng = seeded_generator(seed, Stream.ORDER)
        state = TrainingState(snapshots, model=model, optimizer=trainer.optimizer,
                              own_parameters=trainer.own_parameters, order=order_rng)
        test_sparsity = threshold = 0.0
        first = 1
        if resume is not None:
            values = state.restore(resume)
            first, test_sparsity, threshold = values["epoch"] + 1, values["test_sparsity"], values["threshold"]
            trainer.lam = values["lam"].to(device)
        else:
            yield Record("gater_lr", float(trainer.settings["gater_lr"]))
            yield Record("momentum", float(trainer.settings["momentum"]))

        for epoch in range(first, self.epochs + 1):
            (nll_sum, zeros, elements), epoch_time = trainer.epoch(data["train"], order_rng, self.batch_size,
                                                                   progress)
            watch = Stopwatch(device)
            tested = epoch % self.test_every == 0 or epoch == self.epochs
            with self._testing(model, estimator):
                model.tune(data["tune"][0])
                valid_error, _ = model.evaluate(*data["valid"])
                test_error, test_zeros = model.evaluate(*data["test"]) if tested else (valid_error, valid_error)
            summary = torch.stack([nll_sum / n_train, zeros.to(nll_sum.dtype) / max(elements, 1),
                                   valid_error, test_error, test_zeros, trainer.lam.to(nll_sum.dtype),
                                   model.threshold.to(nll_sum.dtype)]).tolist()
            eval_time = watch.seconds()
            criterion_value, sparsity_train, valid_err, test_err, tested_sparsity, lam_value, threshold = summary
            yield Record("train_criterion", criterion_value, epoch=epoch)
            yield Record("valid_error", valid_err, epoch=epoch)
            if tested:
                test_sparsity = tested_sparsity
                yield Record("test_error", test_err, epoch=epoch)
                yield Record("sparsity_test", test_sparsity, epoch=epoch)
            yield Record("sparsity_train", sparsity_train, epoch=epoch)
            if trainer.criterion is not None:
                yield Record("sparsity_lambda", lam_value, epoch=epoch)
                yield Record("threshold", threshold, epoch=epoch)
            yield Record("epoch_time_s", epoch_time, epoch=epoch)
            yield Record("eval_time_s", eval_time, epoch=epoch)
            yield from state.resume_point(epoch * self.batches_per_epoch(), epoch=epoch, lam=trainer.lam,
                                 test_sparsity=test_sparsity, threshold=threshold)

        if trainer.criterion is not None:
            yield Record("threshold", threshold)
        count = flops_per_example(GatedShape(INPUTS, self.hidden, self.gate_units, CLASSES), 1.0 - test_sparsity)
        yield Record("flops_gater", float(count.gater))
        yield Record("flops_expert_dense", float(count.dense_expert + count.dense_output))
        yield Record("flops_expert_sparse", float(count.sparse_expert + count.sparse_output))
        yield Record("flops_speedup_bound", count.speedup_bound)

    @contextlib.contextmanager
    def _testing(self, model: GaterNet, estimator):
        """Deterministic test time: model and estimator in eval mode, the estimator's state frozen."""
        model.eval()
        estimator.eval()
        try:
            with estimator.frozen(), torch.no_grad():
                yield
        finally:
            model.train()
            estimator.train()


@register_problem("mnist-gater", "The paper's MNIST conditional-computation gater (sec. 5, appendix A): "
                                 "learning curves, errors, sparsity")
class MnistGater(GaterProblem):
    """Appendix A on MNIST (50,000 train / 10,000 valid / 10,000 test)."""

    dataset = "mnist"


@register_problem("fashion-mnist-gater", "The MNIST gater experiment on Fashion-MNIST (same model and training)")
class FashionMnistGater(GaterProblem):
    """Appendix A on Fashion-MNIST (50,000 train / 10,000 valid / 10,000 test)."""

    dataset = "fashion-mnist"
