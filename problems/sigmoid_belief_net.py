"""Deep sigmoid belief nets (Neal 1992): stacked layers of stochastic binary units.

Layer 1 ~ Bernoulli(sigm(b_0)); layer l+1 ~ Bernoulli(sigm(W_l h_l + b_l)). The loss is a seeded
function of the last layer, plus ``hidden_weight`` times seeded functions of the hidden layers:

    L(h) = f_L(h_L) + hidden_weight * sum_{l < L} f_l(h_l),

with f_l either a tiny tanh read-out ``v' tanh(U h + c) + w' h`` (``loss='mlp'``) or a squared
distance to a target in (0, 1)^width (``loss='target'``). The estimator under test is applied at
every stochastic layer through the contract of ``estimators.base`` (Bengio et al. 2013 apply
theirs to one layer; stacking is where the contract has to compose): ``estimator.layer(l)`` gets
the logits of layer l and a loss_fn that takes h_l (*extra, n, width_l), samples the layers after it
with their own estimators and returns the downstream loss (*extra, n). So pathwise estimators
back-propagate through the layers downstream, score-function ones use the downstream loss as their
learning signal, and one with k evaluations per layer evaluates the net k^depth times per estimate.

Gradient order (``scopes()`` names the slices): for l = 1..L the parameters that produce layer l,
weight first (row-major, shape (width_l, width_{l-1}); layer 1 has none), then bias:
``layer1.bias = b_0``, ``layer2.weight = W_1``, ``layer2.bias = b_1``, ...
"""
from __future__ import annotations

import collections
import copy
import hashlib
import math
from typing import Callable, Iterator

import scipy.stats
import torch
import torch.nn.functional as F

from estimators.domains import SEED, Count, Interval, OneOf
from problems import register_problem
from problems.base import (MAX_ENUMERATION_UNITS, LossObserver, OwnParameterOptimizer, Problem, Record, Reference,
                           Snapshot, TrainingProblem, TrainingState, parse_sizes, layer_sizes)
from problems.training import BeliefNetStream, seeded_generator

DEFAULT_WIDTHS = (4, 3, 2)
LOSSES = ("mlp", "target")
REFERENCE_METHODS = ("auto", "exact", "sampled")
OPTIMIZERS = ("sgd", "adam")
READOUT_UNITS = 16           # hidden units of the 'mlp' read-out f_l
WEIGHT_SCALE = 2.0           # W_l ~ N(0, WEIGHT_SCALE^2 / width_{l-1}): units far from linear
BIAS_SCALE = 0.5             # b_l ~ N(0, BIAS_SCALE^2) for l >= 1; b_0 ~ N(0, 1)
REFERENCE_CONTINUATIONS = 8  # K of the leave-one-out reference estimator
REFERENCE_BATCHES = 64       # batch means behind the reference's standard error
REFERENCE_CHUNK = 8192       # prefixes per vectorised step of the reference
ENUMERATION_CHUNK = 2**16    # configurations per vectorised step of the enumeration
_REFERENCE_CACHE: "collections.OrderedDict[tuple, Reference]" = collections.OrderedDict()
_REFERENCE_CACHE_SIZE = 32


MAX_DEPTH = 1000  # layers: each is its own parameters, buffers and estimator call


def parse_widths(widths: str, depth: int, width: int) -> tuple[int, ...]:
    """Layer sizes from ``widths`` ('8-6-4') or from ``depth`` x ``width``; neither: 4-3-2."""
    if depth or width:
        if widths:
            raise ValueError(f"give either widths or depth and width, not both (widths={widths!r}, "
                             f"depth={depth}, width={width})")
        if not (depth and width):  # a relation between the two: each alone is 0 by default
            raise ValueError(f"give depth and width together, got depth={depth}, width={width}")
        return (width,) * depth
    if not widths:
        return DEFAULT_WIDTHS
    sizes = parse_sizes(widths, "widths")
    if len(sizes) > MAX_DEPTH:
        raise ValueError(f"widths must name at most {MAX_DEPTH} layers, got {len(sizes)}")
    return sizes


def initial_parameters(widths: tuple[int, ...],
                       seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Seeded (biases, weights): biases[l] produces layer l+1, weights[l] = W_l (weights[0] is None).

    Layer l draws from its own stream, so a deeper net shares its first layers with a shallower one."""
    biases, weights = [], []
    for l, w in enumerate(widths):
        g = seeded_generator(seed, BeliefNetStream.INIT, l)
        if l == 0:
            weights.append(None)
            biases.append(torch.randn(w, generator=g))
        else:
            weights.append(torch.randn(w, widths[l - 1], generator=g) * (WEIGHT_SCALE / math.sqrt(widths[l - 1])))
            biases.append(torch.randn(w, generator=g) * BIAS_SCALE)
    return biases, weights


def _flat(biases, weights) -> list[torch.Tensor]:
    """Parameter tensors in gradient order: b_0, W_1, b_1, W_2, b_2, ..."""
    out = []
    for b, W in zip(biases, weights):
        if W is not None:
            out.append(W)
        out.append(b)
    return out


class _BeliefNet:
    """What both SBN problems share: sizes, the seeded loss, the stochastic pass through the
    estimator, enumeration. Parameters are passed explicitly as (biases, weights) lists."""

    widths: tuple[int, ...]

    domains = {"widths": layer_sizes(optional=True), "depth": Count(1, MAX_DEPTH, zero="from widths"),
               "width": Count(1, zero="from widths"), "loss": OneOf(*LOSSES), "hidden_weight": Interval(),
               "data_seed": SEED}

    def _setup(self, widths: str, depth: int, width: int, loss: str, hidden_weight: float,
               data_seed: int) -> None:
        self.widths = parse_widths(widths, depth, width)
        self.loss_kind, self.hidden_weight, self.data_seed = loss, float(hidden_weight), data_seed
        for l, w in enumerate(self.widths):
            g = seeded_generator(data_seed, BeliefNetStream.LOSS, l)
            if loss == "target":
                self.register_buffer(f"target{l + 1}", torch.rand(w, generator=g))
            else:
                self.register_buffer(f"readout{l + 1}_U", torch.randn(READOUT_UNITS, w, generator=g)
                                     * (2 / math.sqrt(w)))
                self.register_buffer(f"readout{l + 1}_c", torch.randn(READOUT_UNITS, generator=g))
                self.register_buffer(f"readout{l + 1}_v", torch.randn(READOUT_UNITS, generator=g)
                                     / math.sqrt(READOUT_UNITS))
                self.register_buffer(f"readout{l + 1}_w", torch.randn(w, generator=g) * 0.1)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def units(self) -> int:
        return sum(self.widths)

    @property
    def parameter_count(self) -> int:
        return sum(w * (1 + (self.widths[l - 1] if l else 0)) for l, w in enumerate(self.widths))

    def parameter_scopes(self) -> dict[str, slice]:
        """'layerL' (all parameters producing stochastic layer L) and 'layerL.weight' / '.bias'."""
        out, start = {}, 0
        for l, w in enumerate(self.widths):
            first = start
            if l:
                out[f"layer{l + 1}.weight"] = slice(start, start + w * self.widths[l - 1])
                start += w * self.widths[l - 1]
            out[f"layer{l + 1}.bias"] = slice(start, start + w)
            start += w
            out[f"layer{l + 1}"] = slice(first, start)
        return out

    # -- the loss ------------------------------------------------------------------------------
    def layer_loss(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """f_l(h_l) for stochastic layer ``index`` (0-based); h is (..., width), result (...)."""
        l = index + 1
        if self.loss_kind == "target":
            return ((h - getattr(self, f"target{l}")) ** 2).sum(-1)
        U, c = getattr(self, f"readout{l}_U"), getattr(self, f"readout{l}_c")
        v, w = getattr(self, f"readout{l}_v"), getattr(self, f"readout{l}_w")
        return torch.tanh(h @ U.T + c) @ v + h @ w

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        """L of whole configurations: h is (..., units), every layer's units side by side."""
        layers = h.split(list(self.widths), dim=-1)
        total = self.layer_loss(self.depth - 1, layers[-1])
        if self.hidden_weight:
            for l in range(self.depth - 1):
                total = total + self.hidden_weight * self.layer_loss(l, layers[l])
        return total

    # -- the stochastic pass ---------------------------------------------------------------------
    def _surrogate(self, biases, weights, estimator, n: int, observe: LossObserver | None = None,
                   records: list[list] | None = None) -> torch.Tensor:
        """The per-sample surrogate (n,) of L with ``estimator.layer(l)`` at stochastic layer l.

        Layer l's loss_fn maps h_l (*extra, n, width_l) to the downstream loss (*extra, n): its
        hidden term plus the surrogate of layer l+1's estimator on logits W h_l + b. ``records``
        collects (logits, detached input) of every layer's logits for per-sample gradients."""
        last = self.depth - 1
        final = (lambda h: self.layer_loss(last, h))
        final = final if observe is None else observe(final)

        def loss_fn_for(l: int) -> Callable[[torch.Tensor], torch.Tensor]:
            if l == last:
                return final

            def loss_fn(h: torch.Tensor) -> torch.Tensor:
                logits = h @ weights[l + 1].T + biases[l + 1]
                if records is not None:
                    records[l + 1].append((logits, h.detach()))
                value = estimator.layer(l + 1)(logits, loss_fns[l + 1])
                if self.hidden_weight:
                    value = value + self.hidden_weight * self.layer_loss(l, h)
                return value

            return loss_fn

        loss_fns = [loss_fn_for(l) for l in range(self.depth)]
        logits = biases[0].expand(n, self.widths[0])
        if records is not None:
            records[0].append((logits, None))
        return estimator(logits, loss_fns[0])

    def _per_sample_gradients(self, biases, weights, estimator, n: int,
                              observe: LossObserver | None) -> torch.Tensor:
        """(n, dim): W_l enters only through logits = h W_l' + b_l, so dS/dW_l per sample is the
        sum over evaluation axes of outer(dS/dlogits, h); one autograd call for every logits."""
        records: list[list] = [[] for _ in self.widths]
        surrogate = self._surrogate(biases, weights, estimator, n, observe, records)
        flat = [(l, logits, h) for l, rec in enumerate(records) for logits, h in rec if logits.requires_grad]
        grads = torch.autograd.grad(surrogate.sum(), [logits for _, logits, _ in flat], allow_unused=True)
        out = torch.zeros(n, self.parameter_count, dtype=biases[0].dtype, device=biases[0].device)
        scopes = self.parameter_scopes()
        for (l, logits, h), g in zip(flat, grads):
            if g is None:
                continue
            g = g.reshape(-1, n, self.widths[l])
            out[:, scopes[f"layer{l + 1}.bias"]] += g.sum(0)
            if l:
                h = h.reshape(-1, n, self.widths[l - 1])
                weight = out[:, scopes[f"layer{l + 1}.weight"]].view(n, self.widths[l], self.widths[l - 1])
                if g.shape[0] == 1:
                    weight.addcmul_(g[0].unsqueeze(-1), h[0].unsqueeze(-2))
                else:
                    weight += torch.einsum("eno,eni->noi", g, h)
        return out

    # -- enumeration -----------------------------------------------------------------------------
    def _check_enumerable(self) -> None:
        if self.units > MAX_ENUMERATION_UNITS:
            raise ValueError(f"{self.name}: {self.units} stochastic units ({'-'.join(map(str, self.widths))}) "
                             f"are too many to enumerate (at most {MAX_ENUMERATION_UNITS})")

    def _enumerate(self, biases, weights, gradient: bool = True) -> tuple[float, torch.Tensor | None]:
        """(E[L], dE[L]/dtheta) in float64 over all 2^units configurations, by the score identity
        dE[L]/dtheta = sum_h P(h) L(h) dlog P(h)/dtheta, with dlog P/db_{l-1} = h_l - sigm(a_l) and
        dlog P/dW_{l-1} = (h_l - sigm(a_l)) h_{l-1}'."""
        self._check_enumerable()
        net = copy.deepcopy(self).to("cpu", torch.float64)
        biases = [b.detach().to("cpu", torch.float64) for b in biases]
        weights = [None if W is None else W.detach().to("cpu", torch.float64) for W in weights]
        total = torch.zeros((), dtype=torch.float64)
        bias_grad = [torch.zeros_like(b) for b in biases]
        weight_grad = [None if W is None else torch.zeros_like(W) for W in weights]
        bits = torch.arange(self.units)
        for start in range(0, 2**self.units, ENUMERATION_CHUNK):
            codes = torch.arange(start, min(start + ENUMERATION_CHUNK, 2**self.units)).unsqueeze(1)
            configs = ((codes >> bits) & 1).to(torch.float64)
            layers = configs.split(list(self.widths), dim=-1)
            log_p = torch.zeros(configs.shape[0], dtype=torch.float64)
            probs = []
            for l, h in enumerate(layers):
                logits = biases[0].expand_as(h) if l == 0 else layers[l - 1] @ weights[l].T + biases[l]
                log_p = log_p + (h * F.logsigmoid(logits) + (1 - h) * F.logsigmoid(-logits)).sum(-1)
                probs.append(torch.sigmoid(logits))
            weighted = torch.exp(log_p) * net.loss(configs)
            total += weighted.sum()
            if gradient:
                for l, h in enumerate(layers):
                    score = (h - probs[l]) * weighted.unsqueeze(-1)
                    bias_grad[l] += score.sum(0)
                    if l:
                        weight_grad[l] += score.T @ layers[l - 1]
        grad = torch.cat([t.reshape(-1) for t in _flat(bias_grad, weight_grad)]) if gradient else None
        return float(total), grad

    def _mc_loss(self, biases, weights, n: int, generator: torch.Generator) -> tuple[float, float]:
        """Monte Carlo E[L] from n ancestral samples: (mean, standard error)."""
        with torch.no_grad():
            h = torch.bernoulli(torch.sigmoid(biases[0]).expand(n, self.widths[0]), generator=generator)
            layers = [h]
            for l in range(1, self.depth):
                layers.append(torch.bernoulli(torch.sigmoid(h @ weights[l].T + biases[l]), generator=generator))
                h = layers[-1]
            values = self.loss(torch.cat(layers, dim=-1)).to("cpu", torch.float64).numpy()
        return float(values.mean()), float(scipy.stats.sem(values))


MAX_NESTED_VALUES = 2**22


@register_problem("sigmoid-belief-net",
                  "Deep sigmoid belief net (widths='8-6-4' or depth, width): estimator at every layer; "
                  "exact gradient up to 20 units")
class SigmoidBeliefNet(_BeliefNet, Problem):
    """E[L] of a seeded sigmoid belief net w.r.t. every weight and bias, estimators at every layer.

    Parameters: ``widths`` ('8-6-4') or ``depth`` and ``width`` (a sweep ``depth=1|2|3,width=4|8``);
    neither gives 4-3-2. ``data_seed`` draws the net and the loss; ``loss`` picks f_l ('mlp' or
    'target'); ``hidden_weight`` > 0 adds the hidden layers' terms.

    Reference: exact by enumeration over every layer's configurations (float64) up to 20 units in
    total. Beyond that (or with ``reference_method='sampled'``) it is estimated from
    ``reference_samples`` draws (rounded up to a multiple of 64) of an unbiased estimator: per
    layer l, one ancestral draw of the layers below, K = 8 continuations from layer l on, and the
    score-function estimate (h_l - sigm(a_l)) (L_k - mean_{j != k} L_j), the seed paper's Theorem 1
    with a leave-one-out baseline, unbiased by Corollary 1 since the baseline does not depend on
    the k-th draw (Kool et al. 2019's leave-one-out REINFORCE, conditioned on the layers below so
    upstream noise cancels). Its standard error comes from 64 batch means (scipy.stats.sem);
    ``Reference.exact`` is then False and the harness marks the run's reference as estimated and
    adds the reference's standard error to its unbiasedness test. References are cached per
    parameter values (the data is a function of them), so a sweep computes each once per process.
    ``reference_method='exact'`` refuses nets too large to enumerate.

    Per-sample gradients are vectorised: the estimator's surrogate for n samples is differentiated
    once w.r.t. every layer's logits, and dS/dW_l = sum over evaluations of outer(dS/da, h).
    """

    domains = {"reference_method": OneOf(*REFERENCE_METHODS), "reference_samples": Count(REFERENCE_BATCHES)}

    def __init__(self, widths: str = "", depth: int = 0, width: int = 0, loss: str = "mlp",
                 hidden_weight: float = 0.0, data_seed: int = 0, reference_method: str = "auto",
                 reference_samples: int = 200_000):
        super().__init__()
        self._setup(widths, depth, width, loss, hidden_weight, data_seed)
        if reference_method == "exact":
            self._check_enumerable()
        self.reference_method, self.reference_samples = reference_method, reference_samples
        biases, weights = initial_parameters(self.widths, data_seed)
        for l, (b, W) in enumerate(zip(biases, weights)):
            if W is not None:
                self.register_buffer(f"weight{l + 1}", W)
            self.register_buffer(f"bias{l + 1}", b)

    @property
    def dim(self) -> int:
        return self.parameter_count

    def scopes(self) -> dict[str, slice]:
        return self.parameter_scopes()

    @property
    def biases(self) -> list[torch.Tensor]:
        return [getattr(self, f"bias{l + 1}") for l in range(self.depth)]

    @property
    def weights(self) -> list[torch.Tensor | None]:
        return [None] + [getattr(self, f"weight{l + 1}") for l in range(1, self.depth)]

    def parameter_tensors(self) -> list[torch.Tensor]:
        """The net's parameters in gradient order (b_0, W_1, b_1, ...)."""
        return _flat(self.biases, self.weights)

    def enumerate_gradient(self) -> torch.Tensor:
        return self._enumerate(self.biases, self.weights)[1]

    def exact_gradient(self) -> torch.Tensor:
        """dE[L]/dtheta by enumeration (float64); ValueError beyond 20 units."""
        return self.enumerate_gradient()

    def expected_loss(self) -> float:
        return self._enumerate(self.biases, self.weights, gradient=False)[0]

    def _cache_key(self) -> tuple:
        digest = hashlib.sha256()
        for name, buffer in sorted(self.named_buffers()):
            digest.update(name.encode())
            digest.update(buffer.detach().to("cpu", torch.float64).numpy().tobytes())
        sampled = self.reference_method == "sampled" or self.units > MAX_ENUMERATION_UNITS
        return (self.widths, self.loss_kind, self.hidden_weight, digest.hexdigest(),
                self.reference_samples if sampled else None)

    def reference(self) -> Reference:
        key = self._cache_key()
        if key in _REFERENCE_CACHE:
            _REFERENCE_CACHE.move_to_end(key)
        else:
            if key[-1] is None:
                reference = Reference(self.exact_gradient())
            else:
                reference = self.sampled_reference()
            _REFERENCE_CACHE[key] = reference
            while len(_REFERENCE_CACHE) > _REFERENCE_CACHE_SIZE:
                _REFERENCE_CACHE.popitem(last=False)
        cached = _REFERENCE_CACHE[key]
        return Reference(cached.gradient.clone(), None if cached.stderr is None else cached.stderr.clone())

    def sampled_reference(self) -> Reference:
        """The estimated reference (see the class docstring), float64 on the CPU, seeded from
        ``data_seed``: the per-layer conditional leave-one-out score-function estimator, over
        ``reference_samples`` rounded up to a multiple of the 64 batches. Pieces of whole batches
        (or of one batch, when a batch is larger than a piece) are vectorised together."""
        net = copy.deepcopy(self).to("cpu", torch.float64)
        biases, weights = net.biases, net.weights
        K, depth, widths, scopes = REFERENCE_CONTINUATIONS, self.depth, self.widths, self.parameter_scopes()
        g = seeded_generator(self.data_seed, BeliefNetStream.REFERENCE, self.reference_samples)
        rows = -(-self.reference_samples // REFERENCE_BATCHES)  # per batch
        if rows <= REFERENCE_CHUNK:
            per = REFERENCE_CHUNK // rows
            pieces = [(b, min(per, REFERENCE_BATCHES - b), rows) for b in range(0, REFERENCE_BATCHES, per)]
        else:
            pieces = [(b, 1, min(REFERENCE_CHUNK, rows - start))
                      for b in range(REFERENCE_BATCHES) for start in range(0, rows, REFERENCE_CHUNK)]
        sums = torch.zeros(REFERENCE_BATCHES, self.parameter_count, dtype=torch.float64)
        with torch.no_grad():
            for first, count, size in pieces:  # ``count`` batches of ``size`` rows each
                m = count * size
                spine, h = [], None
                for l in range(depth):  # one ancestral draw: the prefixes of every layer
                    logits = biases[0].expand(m, widths[0]) if l == 0 else h @ weights[l].T + biases[l]
                    h = torch.bernoulli(torch.sigmoid(logits), generator=g)
                    spine.append((logits, h))
                for l in range(depth):
                    p = torch.sigmoid(spine[l][0])
                    h = torch.bernoulli(p.expand(K, m, widths[l]), generator=g)
                    score = h - p
                    value = torch.zeros(K, m, dtype=torch.float64)
                    for k in range(l, depth):
                        if k > l:
                            h = torch.bernoulli(torch.sigmoid(h @ weights[k].T + biases[k]), generator=g)
                        weight = 1.0 if k == depth - 1 else self.hidden_weight
                        if weight:
                            value = value + weight * net.layer_loss(k, h)
                    centred = value - (value.sum(0, keepdim=True) - value) / (K - 1)
                    signal = (score * centred.unsqueeze(-1)).mean(0).view(count, size, widths[l])
                    target = sums[first:first + count]
                    target[:, scopes[f"layer{l + 1}.bias"]] += signal.sum(1)
                    if l:
                        below = spine[l - 1][1].view(count, size, widths[l - 1])
                        target[:, scopes[f"layer{l + 1}.weight"]] += torch.einsum(
                            "cso,csi->coi", signal, below).reshape(count, -1)
        means = (sums / rows).numpy()
        return Reference(torch.from_numpy(means.mean(0)), torch.from_numpy(scipy.stats.sem(means, axis=0)))

    def check_estimator(self, estimator) -> None:
        """Refuse an estimator whose nested evaluations (k per layer, k^depth in all) would hold
        more than MAX_NESTED_VALUES unit values per estimate."""
        for l, width in enumerate(self.widths):
            estimator.check_units(width)
        values, nested = 0, 1  # a running product: the nested count of layer l is prod over layers <= l
        for width in self.widths:
            nested *= estimator.loss_evaluations(width)
            values += nested * width
            if values > MAX_NESTED_VALUES:
                break
        if values > MAX_NESTED_VALUES:
            raise ValueError(f"{estimator.name or type(estimator).__name__} would evaluate this net's layers "
                             f"{values:.3g} unit values per estimate through nested evaluations "
                             f"(at most {MAX_NESTED_VALUES:.3g}); use fewer or narrower layers")

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        biases = [b.detach().requires_grad_(True) for b in self.biases]
        weights = [None if W is None else W.detach().requires_grad_(True) for W in self.weights]
        return self._per_sample_gradients(biases, weights, estimator, n, observe)


@register_problem("sigmoid-belief-net-training",
                  "Train a sigmoid belief net's parameters with the estimator: loss curve and "
                  "trajectory variance")
class SigmoidBeliefNetTraining(_BeliefNet, TrainingProblem):
    """Minimise E[L] of a ``sigmoid-belief-net`` (same ``widths``/``depth``/``width``, ``loss``,
    ``hidden_weight``, ``data_seed`` for the loss) over its weights and biases, starting from
    parameters drawn from the run's ``seed`` (with seed == data_seed, exactly the point that
    ``sigmoid-belief-net`` measures), for ``steps`` steps of ``optimizer`` ('sgd' or 'adam') at
    ``lr`` on the mean of ``batch`` estimates per step.

    Records, at step 0 (loss only), every ``log_every`` steps and at the last step:
    ``train_loss`` -- E[L] at the current parameters: exact by enumeration up to 20 units (no
    stderr), else the mean of ``eval_samples`` ancestral samples with its standard error;
    ``trajectory_variance`` -- the REBAR / DisARM measure: exponential moving averages (decay
    ``ema_decay``, Adam-style bias correction) of the first and second moments of the update's
    gradient estimate g (the batch mean) along the run, variance = sum over coordinates of
    EMA(g^2) - EMA(g)^2, for scope 'all' and for every layer scope of ``sigmoid-belief-net``. It
    mixes the drift of E[g] as the parameters move into the number, so it is NOT the
    fixed-parameter variance that ``sigmoid-belief-net`` measures (and it scales as 1 / batch).

    Estimators with own parameters (``has_parameters``) are trained alongside: their grads are
    zeroed before each step and an Adam at ``estimator.adaptation_lr`` steps them after it.
    """

    resumable = True

    domains = {"steps": Count(1), "batch": Count(1), "log_every": Count(1), "optimizer": OneOf(*OPTIMIZERS),
               "lr": Interval(0, None, closed="neither"), "ema_decay": Interval(0, 1, closed="left"),
               "eval_samples": Count(2)}

    def __init__(self, widths: str = "", depth: int = 0, width: int = 0, loss: str = "mlp",
                 hidden_weight: float = 0.0, data_seed: int = 0, steps: int = 500, batch: int = 16,
                 optimizer: str = "adam", lr: float = 0.05, log_every: int = 25, ema_decay: float = 0.99,
                 eval_samples: int = 10_000):
        super().__init__()
        self._setup(widths, depth, width, loss, hidden_weight, data_seed)
        self.steps, self.batch, self.optimizer, self.lr = steps, batch, optimizer, lr
        self.log_every, self.ema_decay, self.eval_samples = log_every, ema_decay, eval_samples

    def progress_total(self) -> int:
        return self.steps

    def model_for(self, estimator, seed: int) -> "BeliefNetParameters":
        return BeliefNetParameters(*initial_parameters(self.widths, seed)).to(self.device, self.dtype)

    def fit(self, estimator, seed: int, progress: Callable[[int], None] | None = None,
            resume: dict | None = None, snapshots: bool = False) -> Iterator[Record | Snapshot]:
        """Train for ``steps`` (records: the class docstring), with ``snapshots`` a :class:`Snapshot`
        at every logged step; ``resume`` (a snapshot's state) continues after that step. The trained
        parameters are ``self.trained_model`` (a :class:`BeliefNetParameters`)."""
        device = self.device
        net = self.trained_model = self.model_for(estimator, seed)
        biases, weights = net.layers()
        params = _flat(biases, weights)
        optimiser = (torch.optim.Adam(params, lr=self.lr) if self.optimizer == "adam"
                     else torch.optim.SGD(params, lr=self.lr))
        evaluation = torch.Generator(device).manual_seed(
            int(torch.randint(0, 2**62, (), generator=seeded_generator(seed, BeliefNetStream.EVALUATION))))
        scopes = {"all": slice(0, self.parameter_count), **self.parameter_scopes()}
        first = torch.zeros(self.parameter_count, dtype=torch.float64, device=device)
        second = torch.zeros_like(first)
        own_parameters = OwnParameterOptimizer(estimator)
        state = TrainingState(snapshots, model=net, optimizer=optimiser, own_parameters=own_parameters,
                              evaluation=evaluation, first=first, second=second)

        def train_loss(step: int) -> Record:
            if self.units <= MAX_ENUMERATION_UNITS:
                return Record("train_loss", self._enumerate(biases, weights, gradient=False)[0], step=step)
            mean, stderr = self._mc_loss(biases, weights, self.eval_samples, evaluation)
            return Record("train_loss", mean, stderr, step=step)

        start = 1
        if resume is not None:
            start = state.restore(resume)["step"] + 1
        else:
            yield train_loss(0)
        for step in range(start, self.steps + 1):
            own_parameters.zero_grad()
            surrogate = self._surrogate(biases, weights, estimator, self.batch)
            grads = torch.autograd.grad(surrogate.mean(), params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            for p, g in zip(params, grads):
                p.grad = g
            optimiser.step()
            own_parameters.step()
            with torch.no_grad():
                flat = torch.cat([g.reshape(-1) for g in grads]).to(torch.float64)
                first.mul_(self.ema_decay).add_((1 - self.ema_decay) * flat)
                second.mul_(self.ema_decay).add_((1 - self.ema_decay) * flat**2)
            if progress is not None:
                progress(1)
            if step % self.log_every == 0 or step == self.steps:
                correction = 1 - self.ema_decay**step
                spread = (second / correction - (first / correction) ** 2).clamp_min(0)
                for scope, where in scopes.items():
                    yield Record("trajectory_variance", float(spread[where].sum()), scope=scope, step=step)
                yield train_loss(step)
                yield from state.resume_point(step, step=step)


class BeliefNetParameters(torch.nn.Module):
    """A sigmoid belief net's trainable parameters: ``biases[l]`` produces layer l+1, ``weights[l - 1]``
    is W_l (layer 1 has none); :meth:`layers` gives the (biases, weights) lists the problem takes."""

    def __init__(self, biases: list[torch.Tensor], weights: list[torch.Tensor | None]):
        super().__init__()
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(b.detach().clone()) for b in biases])
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(W.detach().clone()) for W in weights[1:]])

    def layers(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        return list(self.biases), [None, *self.weights]
