"""Discrete VAEs with Bernoulli latents: the benchmark of the estimator papers (REBAR, RELAX, ARM,
DisARM), under a named protocol: ``protocol='disarm'`` (the default) is the official DisARM code
(Dong, Mnih & Tucker 2020, google-research ``disarm/binary``), ``'suite'`` this suite's own
variant (see :data:`BERNOULLI_PROTOCOLS` and :class:`VaeTraining`).

Model: encoder q(z|x) = Bernoulli(sigm(enc(x))), decoder p(x|z) = Bernoulli(sigm(dec(z))), prior
p(z) = Bernoulli(sigm(prior_logits)) with learned logits. Architectures: 'linear' (x -> z -> x, linear
maps), 'nonlinear' (two hidden layers of ``hidden`` LeakyReLU(0.3) units each way) and 'two-layer'
(x -> z1 -> z2, prior on z2, p(z1|z2) and p(x|z1), all linear: REBAR/RELAX). DisARM's initialisation:
the encoder reads x minus the training set's pixel means, the decoder's output bias is the logit of
those means (clipped to [0.001, 0.999]), the prior logits start at 0.

The estimator is applied to the encoder's logits through the contract (``estimators.base``): layer
l's loss_fn maps z_l (*extra, *batch, latents) to the per-example negative ELBO downstream of it,
log q(z_l | .) - log p(z_{l-1} | z_l) [- log p(z_L) at the top | + the next layer's surrogate, with
``estimator.layer(l)`` on its logits], so the terms add up to -(log p(x, z) - log q(z | x)). Under the
'suite' protocol log q keeps its autograd dependence on the logits (the direct term, differentiated
exactly; its expectation is zero, so it changes variance only); under 'disarm' log q enters the
learning signal with the logits held fixed, so the encoder gradient is the estimator's signal alone.
The latent distribution is one small piece (:class:`BernoulliLatents`), so a categorical-latent VAE
can reuse the rest.

Problems: ``bernoulli-vae`` / ``fashion-mnist-bernoulli-vae`` (training, records and checkpoints as
in the docstring of :class:`VaeTraining`) and ``bernoulli-vae-probe`` (a gradient problem: the
encoder-logit gradient of a fixed model on a fixed binary mini-batch, what each checkpoint measures).
Categorical latents: ``categorical-vae`` / ``fashion-mnist-categorical-vae`` and
``categorical-vae-probe``, ReinMax's categorical VAE with the same data, records and checkpoints
(:class:`CategoricalVaeTraining`).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterator

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

from estimators.base import all_categories, all_configurations
from estimators.domains import POSITIVE, SEED, Anything, Count, OneOf
from problems import register_problem
from problems import training as mnist_training
from problems.base import (MAX_ENUMERATION_UNITS, CategoricalProblem, Checkpoint, LossObserver, OwnParameterOptimizer,
                           Problem, Record, Reference, Snapshot, TrainingProblem, TrainingState, layer_sizes,
                           parse_sizes)
from problems.training import (EVAL_EXAMPLES, INPUTS, TRAIN_EXAMPLES, Binariser, MnistTrainingProblem, Stopwatch,
                               Stream, subset, chunked_sums, first_examples, seed_stream, seeded_generator,
                               seeded_linear)

ARCHITECTURES = ("linear", "nonlinear", "two-layer")
LEAKY_SLOPE = 0.3
MEAN_CLIP = 1e-3             # decoder output bias = logit(clip(pixel mean, 0.001, 0.999)), DisARM's
EMA_DECAY = 0.999            # DisARM's trajectory variance
REFERENCE_CONTINUATIONS = 8  # K of the leave-one-out reference estimator
REFERENCE_BATCHES = 64       # batch means behind the reference's standard error
ELEMENTS = 2**22             # values per vectorised step of enumeration, reference and evaluation
REFERENCE_METHODS = ("auto", "exact", "sampled")
VAE_BINARISATIONS = ("dynamic", "static", "none")  # 'none': grey levels, the likelihood a binary cross-entropy
# The Bernoulli VAE's protocols: what each one fixes beyond the numeric parameters (README, "Protocols").
BERNOULLI_PROTOCOLS = {
    "disarm": "the official DisARM code (google-research disarm/binary): signal-only encoder gradient, decoder "
              "and prior gradients from one fresh draw z ~ q, networks reading 2z - 1, Keras Adam's epsilon, "
              "control-variate parameters by Adam(lr, beta1 = 0.999)",
    "suite": "this suite's variant: log q's direct term in the encoder gradient, decoder and prior gradients "
             "from the estimator's own loss evaluations, networks reading z, torch's Adam",
}
KERAS_ADAM_EPSILON = 1e-7    # tf.keras.optimizers.Adam's default epsilon (torch's is 1e-8)
CONTROL_VARIATE_BETA1 = 0.999  # DisARM's theta_optimizer = Adam(infnet_lr, beta_1=0.999)

Encode = Callable[[int, torch.Tensor], torch.Tensor]


class BernoulliLatents:
    """The latent distribution: factorised Bernoulli(sigm(logits)). The swappable piece of the model
    (:class:`CategoricalLatents` replaces it: log_prob, sample, configurations)."""

    @staticmethod
    def log_prob(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log P(z) summed over the last axis; z may be relaxed (in [0, 1]); broadcasts."""
        return (z * logits - F.softplus(logits)).sum(-1)

    @staticmethod
    def sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(logits), generator=generator)

    @staticmethod
    def configurations(width: int, dtype: torch.dtype, device=None) -> torch.Tensor:
        return all_configurations(width, dtype, device)


class CategoricalLatents:
    """Factorised Categorical(softmax(logits)) latents: logits and one-hot z of shape (..., latents, K)."""

    @staticmethod
    def log_prob(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log P(z) summed over the last two axes (latents, K); z may be relaxed (a point of the
        simplex, as Gumbel-softmax feeds); broadcasts."""
        return (z * torch.log_softmax(logits, -1)).sum((-2, -1))

    @staticmethod
    def sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One-hot draws by the inverse CDF, one seeded uniform per latent."""
        probs = torch.softmax(logits, -1)
        u = torch.rand(logits.shape[:-1], generator=generator, dtype=logits.dtype, device=logits.device)
        index = (u.unsqueeze(-1) >= torch.cumsum(probs, -1)[..., :-1]).sum(-1)
        return F.one_hot(index, logits.shape[-1]).to(logits.dtype)

    @staticmethod
    def configurations(width: int, categories: int, dtype: torch.dtype, device=None) -> torch.Tensor:
        return all_categories(width, categories, dtype, device)


def _mlp(sizes: tuple[int, ...], generator: torch.Generator,
         activation: Callable[[], torch.nn.Module] = lambda: torch.nn.LeakyReLU(LEAKY_SLOPE),
         uniform_bias: bool = False) -> torch.nn.Module:
    """Linear maps between ``sizes`` with ``activation`` (default LeakyReLU(0.3)) between them (one
    map: just linear). Biases start at 0, or with ``uniform_bias`` as torch's nn.Linear draws them,
    U(+-1/sqrt(fan_in)) (after each layer's weights, from the same generator)."""
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(activation())
        layer = seeded_linear(sizes[i], sizes[i + 1], generator)
        if uniform_bias:
            bound = 1.0 / math.sqrt(sizes[i])
            with torch.no_grad():
                layer.bias.copy_(torch.rand(sizes[i + 1], generator=generator) * (2 * bound) - bound)
        layers.append(layer)
    return layers[0] if len(layers) == 1 else torch.nn.Sequential(*layers)


def _last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    return module if isinstance(module, torch.nn.Linear) else module[-1]


class VaeModel(torch.nn.Module):
    """The VAE's networks: ``encoders[l]`` gives layer l's logits from the layer below (x minus the
    pixel means for l = 0), ``decoders[l]`` the logits of the layer below from z_l, ``prior_logits``.

    ``protocol`` 'disarm' sets two flags (DisARM's ``networks.py``): ``signed_inputs``, every network
    reading a latent reads 2z - 1 (``BinaryNetwork(demean_input=True)`` without ``mean_xs``), and
    ``signal_only``, the surrogate's log q term holds the logits fixed (``estimate_gradients``
    back-propagates only the learning signal times d logits / d phi)."""

    latent = BernoulliLatents

    def __init__(self, architecture: str, pixels: int, latents: int, hidden: int, generator: torch.Generator,
                 pixel_mean: torch.Tensor, protocol: str = "suite"):
        super().__init__()
        self.architecture = architecture
        self.signed_inputs = self.signal_only = protocol == "disarm"
        inner = (hidden, hidden) if architecture == "nonlinear" else ()
        self.encoders = torch.nn.ModuleList([_mlp((pixels, *inner, latents), generator)])
        self.decoders = torch.nn.ModuleList([_mlp((latents, *inner[::-1], pixels), generator)])
        if architecture == "two-layer":
            self.encoders.append(seeded_linear(latents, latents, generator))
            self.decoders.append(seeded_linear(latents, latents, generator))
        self.prior_logits = torch.nn.Parameter(torch.zeros(latents))
        self.register_buffer("pixel_mean", pixel_mean.detach().clone())
        with torch.no_grad():
            _last_linear(self.decoders[0]).bias.copy_(torch.logit(pixel_mean.clamp(MEAN_CLIP, 1 - MEAN_CLIP)))

    @property
    def depth(self) -> int:
        return len(self.encoders)

    def latent_input(self, z: torch.Tensor) -> torch.Tensor:
        """What a network reads of a latent z: 2z - 1 with ``signed_inputs`` (DisARM), else z."""
        return 2 * z - 1 if self.signed_inputs else z

    def encode(self, l: int, below: torch.Tensor) -> torch.Tensor:
        """Logits of stochastic layer l from the layer below (x for l = 0)."""
        return self.encoders[0](below - self.pixel_mean) if l == 0 else self.encoders[l](self.latent_input(below))

    def log_likelihood(self, l: int, below: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(below | z_l) (Bernoulli, summed over the last axis); broadcasts."""
        return BernoulliLatents.log_prob(below, self.decoders[l](self.latent_input(z)))

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.encoders.parameters())

    def decoder_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.decoders.parameters())

    def encode_held(self, l: int, below: torch.Tensor) -> torch.Tensor:
        """Layer l's logits (l >= 1) with the encoder's parameters held fixed: still a function of
        the layer below (its pathwise derivative kept), without log q's direct parameter term."""
        layer = self.encoders[l]
        return F.linear(self.latent_input(below), layer.weight.detach(), layer.bias.detach())

    # -- the objective -------------------------------------------------------------------------
    def surrogate(self, x: torch.Tensor, logits: torch.Tensor, estimator, encode: Encode | None = None,
                  wrap_last: Callable | None = None, held_encode: Encode | None = None) -> torch.Tensor:
        """The estimator's per-example surrogate of -ELBO(x), ``logits`` = layer 0's logits.

        Layer l's loss_fn: log q(z_l | .) - log p(below | z_l), then - log p(z_l) at the top or the
        next layer's surrogate (``estimator.layer(l + 1)`` on ``encode(l + 1, z_l)``). With
        ``signal_only`` log q is evaluated at the logits with the encoder's parameters held fixed
        (layer 0: the logits detached; above: ``held_encode``, default :meth:`encode_held`): its value
        is in the learning signal, its direct gradient is not. ``wrap_last`` wraps the top layer's
        loss_fn (a loss observer)."""
        held_encode = held_encode or (self.encode_held if encode is None else lambda l, z: encode(l, z).detach())
        encode = encode or self.encode
        top = self.depth - 1

        def loss_for(l: int, below: torch.Tensor, logits_l: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            held = logits_l if not self.signal_only else logits_l.detach() if l == 0 else held_encode(l, below)

            def loss_fn(z: torch.Tensor) -> torch.Tensor:
                value = self.latent.log_prob(z, held) - self.log_likelihood(l, below, z)
                if l == top:
                    return value - self.latent.log_prob(z, self.prior_logits)
                following = encode(l + 1, z)
                return value + estimator.layer(l + 1)(following, loss_for(l + 1, z, following))

            return wrap_last(loss_fn) if l == top and wrap_last is not None else loss_fn

        return estimator(logits, loss_for(0, x, logits))

    def joint(self, x: torch.Tensor, zs: list[torch.Tensor], logits: torch.Tensor,
              encode: Encode | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log q(z | x), -ELBO term log q - log p(x, z)) of whole configurations ``zs`` (one tensor
        per layer, broadcasting with x), ``logits`` = layer 0's."""
        encode = encode or self.encode
        log_q, negative, below, a = 0, 0, x, logits
        for l, z in enumerate(zs):
            if l:
                a = encode(l, below)
            term = self.latent.log_prob(z, a)
            log_q = log_q + term
            negative = negative + term - self.log_likelihood(l, below, z)
            below = z
        return log_q, negative - self.latent.log_prob(zs[-1], self.prior_logits)

    def sample_posterior(self, x: torch.Tensor, samples: int, generator: torch.Generator,
                         logits: torch.Tensor | None = None,
                         encode: Encode | None = None) -> list[torch.Tensor]:
        """``samples`` ancestral draws z ~ q(z | x), one tensor (samples, *x.shape[:-1], latents) per layer."""
        encode = encode or self.encode
        a = self.encode(0, x) if logits is None else logits
        zs = [self.latent.sample(a.expand(samples, *a.shape), generator)]
        for l in range(1, self.depth):
            zs.append(self.latent.sample(encode(l, zs[-1]), generator))
        return zs


# -- the gradient problem at fixed parameters ---------------------------------------------------------
class _ProbeReference:
    """What both VAE probes share: the reference is exact by per-example enumeration (``_enumerate``)
    where the example's configurations fit the budget (``_enumerable``) or ``reference_method`` is
    'exact', else the sampled one (``sampled_reference``)."""

    reference_method: str

    def _enumerable(self) -> bool:
        raise NotImplementedError

    def reference(self) -> Reference:
        exact = self.reference_method == "exact" or (self.reference_method == "auto" and self._enumerable())
        return Reference(self.exact_gradient()) if exact else self.sampled_reference()

    def exact_gradient(self) -> torch.Tensor:
        return self._enumerate(gradient=True)[1]

    def enumerate_gradient(self) -> torch.Tensor:
        return self._enumerate(gradient=True)[1]

    def expected_loss(self) -> float:
        return self._enumerate(gradient=False)[0]


@register_problem("bernoulli-vae-probe",
                  "A Bernoulli VAE at fixed weights on a fixed binary mini-batch: gradient of the mean negative "
                  "ELBO w.r.t. the encoder's logits (exact up to 20 latents per example)")
class VaeProbe(_ProbeReference, Problem):
    """d/d(encoder logits) of mean_b E_q[-ELBO(x_b)] for a fixed model and binary mini-batch.

    Gradient order: layer 1's logits (batch x latents, example-major); for 'two-layer' then the
    second encoder layer's weight (row-major) and bias. Scopes 'layer1' (and 'layer2'). ``units``
    counts every example's latents (batch x latents x layers), example-major, each example's layers
    side by side: what ``loss(h)`` takes.

    As a registered problem it is a seeded toy (``architecture``, ``pixels``, ``latents``,
    ``hidden``, ``batch`` binary examples, from ``data_seed``); the training problems build one of
    their current model at each checkpoint (:meth:`at`).

    Reference: exact when one example's latents (all layers) number at most 20 (the expectation
    factorises over examples; enumeration per example in float64, differentiated by autograd);
    otherwise, or with ``reference_method='sampled'``, ``reference_samples`` (rounded up to a
    multiple of 64) draws of the leave-one-out score-function estimator over K = 8 joint draws of
    the latents, unbiased, with standard errors from 64 batch means (scipy.stats.sem)."""

    domains = {"architecture": OneOf(*ARCHITECTURES), "pixels": Count(1, INPUTS), "latents": Count(1),
               "hidden": Count(1), "batch": Count(1), "data_seed": SEED, "reference_method": OneOf(*REFERENCE_METHODS),
               "reference_samples": Count(REFERENCE_BATCHES)}

    def __init__(self, architecture: str = "linear", pixels: int = 6, latents: int = 4, hidden: int = 8,
                 batch: int = 3, data_seed: int = 0, reference_method: str = "auto", reference_samples: int = 4096):
        super().__init__()
        generator = seeded_generator(data_seed, Stream.PROBE_DATA)
        pixel_mean = torch.rand(pixels, generator=generator) * 0.8 + 0.1
        model = VaeModel(architecture, pixels, latents, hidden, generator, pixel_mean)
        with torch.no_grad():  # a toy away from the symmetric start
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
        x = torch.bernoulli(pixel_mean.expand(batch, pixels), generator=generator)
        self._configure(model, x, reference_method, reference_samples, data_seed)

    @classmethod
    def at(cls, model: VaeModel, x: torch.Tensor, reference_samples: int, reference_seed: int) -> "VaeProbe":
        """A probe of ``model`` (copied, frozen) on the binary mini-batch ``x``."""
        probe = cls.__new__(cls)
        Problem.__init__(probe)
        probe._configure(model, x, "auto", reference_samples, reference_seed)
        return probe

    def _configure(self, model: VaeModel, x: torch.Tensor, reference_method: str, reference_samples: int,
                   reference_seed: int) -> None:
        self.register_buffer("x", x.detach().clone())
        model = copy.deepcopy(model)
        with torch.no_grad():
            self.register_buffer("logits1", model.encode(0, self.x).detach().clone())
        if model.depth > 1:
            self.register_buffer("weight2", model.encoders[1].weight.detach().clone())
            self.register_buffer("bias2", model.encoders[1].bias.detach().clone())
        model.requires_grad_(False)  # layer 1's logits (and layer 2's encoder) are the point, held apart
        self.model = model
        self.depth, self.batch, self.latents = model.depth, int(x.shape[0]), int(model.prior_logits.shape[0])
        self.reference_method, self.reference_samples, self.reference_seed = (reference_method, reference_samples,
                                                                               reference_seed)
        if reference_method == "exact":
            self._check_enumerable()

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def example_units(self) -> int:
        return self.depth * self.latents

    @property
    def units(self) -> int:
        return self.batch * self.example_units

    @property
    def dim(self) -> int:
        return self.batch * self.latents + (self.latents * (self.latents + 1) if self.depth > 1 else 0)

    def scopes(self) -> dict[str, slice]:
        first = self.batch * self.latents
        return {"layer1": slice(0, first), **({"layer2": slice(first, self.dim)} if self.depth > 1 else {})}

    def check_estimator(self, estimator) -> None:
        check_latent_values(estimator, self.name)
        for l in range(self.depth):
            estimator.layer(l).check_units(self.latents)

    def event_probabilities(self) -> torch.Tensor:
        """Layer 1's coordinates: sigm(-|logit|) of each example's latent; layer 2's weights and
        biases (two-layer) are about many draws: NaN."""
        first = torch.sigmoid(-self.logits1.detach().to("cpu", torch.float64).abs()).reshape(-1)
        return torch.cat([first, torch.full((self.dim - first.numel(),), float("nan"), dtype=torch.float64)])

    def _encode(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                records: list | None = None) -> Encode:
        """Layer 2's logits from z1 with the given (or the probe's) weight and bias."""
        def encode(l: int, z: torch.Tensor) -> torch.Tensor:
            read = self.model.latent_input(z)
            logits = F.linear(read, self.weight2 if weight is None else weight, self.bias2 if bias is None else bias)
            if records is not None:
                records.append((logits, read.detach()))
            return logits

        return encode

    # -- the loss of whole configurations (enumeration and the contract tests) -------------------
    def loss(self, h: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of -ELBO at configurations h (..., batch * layers * latents)."""
        per_example = h.unflatten(-1, (self.batch, self.example_units))
        zs = list(per_example.split(self.latents, dim=-1))
        _, negative = self.model.joint(self.x, zs, self.logits1, self._encode())
        return negative.mean(-1)

    # -- gradient estimates ----------------------------------------------------------------------
    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        """(n, dim): units laid out (*extra, batch, n, latents), samples second to last as replay and
        loss observers expect; layer 2's weight gradient per sample by einsum over the recorded
        (dS/dlogits, z1) pairs (W enters only through logits = z1 W' + b)."""
        batch, latents = self.batch, self.latents
        logits = self.logits1.detach().unsqueeze(1).expand(batch, n, latents).clone().requires_grad_(True)
        records: list = []
        encode = held = None
        if self.depth > 1:
            encode = self._encode(self.weight2.detach().requires_grad_(True),
                                  self.bias2.detach().requires_grad_(True), records)
            held = self._encode(self.weight2.detach(), self.bias2.detach())
        wrap = None
        if observe is not None:  # the observer sees one row per sample: the batch's latents side by side
            def wrap(loss_fn):
                observed = observe(lambda rows: loss_fn(rows.unflatten(-1, (batch, latents)).movedim(-2, -3)))
                return lambda z: observed(z.movedim(-3, -2).flatten(-2))
        surrogate = self.model.surrogate(self.x.unsqueeze(1), logits, estimator, encode, wrap, held)
        leaves = [logits, *(record[0] for record in records)]
        grads = torch.autograd.grad(surrogate.mean(0).sum(), leaves, allow_unused=True)
        out = [grads[0].transpose(0, 1).reshape(n, batch * latents)]
        if self.depth > 1:
            weight = torch.zeros(n, latents, latents, dtype=logits.dtype, device=logits.device)
            bias = torch.zeros(n, latents, dtype=logits.dtype, device=logits.device)
            for (_, z), g in zip(records, grads[1:]):
                if g is None:
                    continue
                g, z = g.reshape(-1, n, latents), z.expand(g.shape).reshape(-1, n, latents)
                bias += g.sum(0)
                weight += torch.einsum("eno,eni->noi", g, z)
            out += [weight.reshape(n, -1), bias]
        return torch.cat(out, dim=-1)

    # -- the reference -----------------------------------------------------------------------------
    def _enumerable(self) -> bool:
        return self.example_units <= MAX_ENUMERATION_UNITS

    def _check_enumerable(self) -> None:
        if not self._enumerable():
            raise ValueError(f"{self.name or 'bernoulli-vae-probe'}: {self.example_units} latents per example are "
                             f"too many to enumerate (at most {MAX_ENUMERATION_UNITS})")

    def _leaves(self, gradient: bool) -> tuple["VaeProbe", list[torch.Tensor]]:
        probe = copy.deepcopy(self).to("cpu", torch.float64)
        leaves = [probe.logits1.detach().requires_grad_(gradient)]
        if self.depth > 1:
            leaves += [probe.weight2.detach().requires_grad_(gradient), probe.bias2.detach().requires_grad_(gradient)]
        return probe, leaves

    def _enumerate(self, gradient: bool) -> tuple[float, torch.Tensor | None]:
        """(E[L], dE[L]/d(logits1, W2, b2)) in float64: per example, every configuration of its
        latents weighted by q, summed in chunks; autograd through q and the direct term."""
        self._check_enumerable()
        probe, leaves = self._leaves(gradient)
        encode = probe._encode(*leaves[1:]) if self.depth > 1 else None
        total = 0.0
        grads = [torch.zeros_like(leaf) for leaf in leaves]
        count = 2**self.example_units
        chunk = max(1, ELEMENTS // (self.batch * max(probe.x.shape[-1], self.example_units)))
        for start in range(0, count, chunk):
            codes = torch.arange(start, min(start + chunk, count)).unsqueeze(1)
            configs = ((codes >> torch.arange(self.example_units)) & 1).to(torch.float64).unsqueeze(1)
            zs = list(configs.split(self.latents, dim=-1))  # (C, 1, latents): broadcast over the batch
            with torch.set_grad_enabled(gradient):
                log_q, negative = probe.model.joint(probe.x, zs, leaves[0], encode)
                expected = (log_q.exp() * negative).sum() / self.batch
            total += float(expected.detach())
            if gradient:
                for g, part in zip(grads, torch.autograd.grad(expected, leaves)):
                    g += part
        flat = torch.cat([g.reshape(-1) for g in grads]) if gradient else None
        return total, flat

    def sampled_reference(self) -> Reference:
        """The estimated reference (class docstring): float64 on the CPU, seeded by ``reference_seed``."""
        probe, leaves = self._leaves(False)
        logits, model, K = leaves[0], probe.model, REFERENCE_CONTINUATIONS
        encode = probe._encode() if self.depth > 1 else None
        generator = seeded_generator(self.reference_seed, Stream.VAE_REFERENCE, self.reference_samples)
        rows = -(-self.reference_samples // REFERENCE_BATCHES)
        per = max(1, ELEMENTS // (K * self.batch * max(probe.x.shape[-1], self.latents)))
        sums = torch.zeros(REFERENCE_BATCHES, self.dim, dtype=torch.float64)
        scopes = self.scopes()
        with torch.no_grad():
            for b in range(REFERENCE_BATCHES):
                for start in range(0, rows, per):
                    m = min(per, rows - start)
                    zs = model.sample_posterior(probe.x, K * m, generator, logits, encode)
                    zs = [z.view(K, m, *z.shape[1:]) for z in zs]  # (K, m, batch, latents)
                    _, negative = model.joint(probe.x, zs, logits, encode)  # (K, m, batch)
                    centred = negative - (negative.sum(0, keepdim=True) - negative) / (K - 1)
                    signal = (zs[0] - torch.sigmoid(logits)) * centred.unsqueeze(-1)
                    sums[b, scopes["layer1"]] += signal.mean(0).sum(0).reshape(-1) / self.batch
                    if self.depth > 1:
                        score2 = (zs[1] - torch.sigmoid(encode(1, zs[0]))) * centred.unsqueeze(-1)
                        weight = torch.einsum("kmbo,kmbi->oi", score2, model.latent_input(zs[0])) / K
                        sums[b, scopes["layer2"]] += torch.cat([weight.reshape(-1), score2.sum((0, 1, 2)) / K]) / self.batch
        means = (sums / rows).numpy()
        return Reference(torch.from_numpy(means.mean(0)),
                         torch.from_numpy(np.asarray(scipy.stats.sem(means, axis=0), dtype=np.float64)))


def check_latent_values(estimator, problem: str) -> None:
    """Refuse an estimator whose units are unbounded (``activation`` 'rectifier'): log q(z|x) and
    log p(z) of a Bernoulli latent are defined for z in [0, 1] (relaxed samples included), not beyond."""
    if estimator.activation == "rectifier":
        raise ValueError(f"{estimator.name or type(estimator).__name__} gives unbounded (rectifier) units; "
                         f"{problem}'s Bernoulli latents need values in [0, 1] for log q(z|x) and log p(z)")


# -- the training problem ------------------------------------------------------------------------------
class VaeTraining(MnistTrainingProblem):
    """Trains the VAE with the estimator at its latents under ``protocol`` (parameters recorded in the
    run config as constructor parameters).

    Protocols (:data:`BERNOULLI_PROTOCOLS`). 'disarm' (the default) is the official DisARM code,
    google-research ``disarm/binary/experiment_launcher_singlelayer.py`` (``estimate_gradients``,
    ``train_one_step``, ``main``) and ``networks.py`` (``BinaryNetwork``, ``DiscreteVAE``): the
    encoder gradient is the estimator's learning signal times d logits / d phi only (no log q direct
    term); the decoder and prior gradients are those of -mean ELBO at one fresh draw z ~ q (the
    ``genmo_loss`` of the forward call); every network reading a latent reads 2z - 1; Adam with
    Keras's epsilon 1e-7, the encoder's applied to the batch-sum gradient as theirs (here: the
    batch mean with epsilon 1e-7 / batch, the same update); the estimator's own parameters
    (REBAR / RELAX control variates) by Adam(lr, beta1 = 0.999, epsilon 1e-7), their
    ``theta_optimizer``; ``train_elbo`` is the fresh draw's ELBO (their ``train_objective``).
    Deviations from that code, all documented in the README ("Protocols"): the data order (a
    seeded permutation per pass, theirs tf.data's shuffle(1024) of a repeated set); the encoder's
    pixel means are the intensities' means (theirs: one pass of binarised images); REBAR is RELAX
    without the network (their binary launcher has no REBAR); RELAX's control-variate network reads
    the logits and the relaxed sample (theirs reads x and z: the estimator contract hands
    estimators the logits, not x), and its parameters minimise the mean squared per-example logit
    gradient (theirs: the squared batch-sum encoder-parameter gradient, which needs the encoder's
    Jacobian); their RELAX also differentiates log q(sigma(z / lambda)) directly in phi (a zero-mean
    term) and takes its decoder gradient at its own b; 1,000,000 steps there, ``steps`` here.
    'suite' keeps this suite's earlier variant: log q's direct term in the encoder gradient (zero
    mean, more variance), decoder and prior gradients from the estimator's own evaluations, networks
    reading z, torch's Adam for everything, own parameters by Adam at the estimator's ``adaptation_lr``.

    Data: the first ``pixels`` pixels of each image (all 784 by default), binarised 'dynamic'
    (a fresh seeded draw each time an example is used, training and evaluation alike) or 'static'
    (one fixed draw per split from seed 0, the same for every run). Mini-batches of ``batch`` in a
    fresh seeded order every pass over the ``train_subset`` (0 = all 50,000). Adam at ``lr`` for
    encoder and decoder, SGD at ``prior_lr`` for the prior logits.

    Records (``step`` = training step): every ``log_every`` steps ``train_elbo`` (mean per-example
    ELBO of the mini-batches trained on in the interval: under 'disarm' the fresh draw's; under
    'suite' the surrogate's value for an unbiased estimator with binary forward samples, whose
    evaluations are draws from q, otherwise one extra seeded draw z ~ q per example),
    ``loss_evals_total`` (steps x full-model loss evaluations per example: the product over nested
    layers of each layer's evaluations per estimate), ``trajectory_variance`` (an EMA, decay 0.999,
    bias-corrected, of the first and second moments of the batch-mean encoder-parameter gradient,
    variance summed over coordinates; scopes 'all', and 'layer1' / 'layer2' for two layers),
    ``disarm_variance`` (DisARM's ``compute_grad_variance`` / batch^2: the same EMAs without bias
    correction, started at 0, variance averaged over coordinates; scope 'all'), ``seconds_per_step``
    and ``wall_time_s`` (training only, device-synchronised). At step 0, every ``eval_every`` steps
    and the last step: ``train_set_elbo`` and ``test_elbo`` (one-sample ELBO, mean with standard
    error over the examples: the first ``eval_subset`` of each, 0 = all), ``test_bound``
    (importance-weighted bound with ``test_samples`` samples) and a :class:`Checkpoint` of a
    :class:`VaeProbe` of the current model on ``probe_batch`` training examples (``probe_samples``
    estimates of the training step's encoder-logit gradient; sampled reference from
    ``probe_reference_samples`` draws; ``basket`` estimators measured beside it).
    After every log and evaluation step a :class:`~problems.base.Snapshot` to resume from."""

    resumable = True

    protocols = BERNOULLI_PROTOCOLS
    domains = {"architecture": OneOf(*ARCHITECTURES), "latents": Count(1), "hidden": Count(1), "pixels": Count(1, INPUTS),
               "binarisation": OneOf(*VAE_BINARISATIONS), "steps": Count(1), "batch": Count(1), "lr": POSITIVE,
               "prior_lr": POSITIVE, "log_every": Count(1), "eval_every": Count(1), "test_samples": Count(1),
               "train_subset": Count(1, zero="all"), "eval_subset": subset(EVAL_EXAMPLES), "probe_batch": Count(1),
               "probe_samples": Count(2, why="a variance needs two draws"),
               "probe_reference_samples": Count(REFERENCE_BATCHES),
               "basket": Anything("'+'-joined estimator specs (checked when the run starts)"),
               "protocol": OneOf(*BERNOULLI_PROTOCOLS)}

    def __init__(self, architecture: str = "linear", latents: int = 200, hidden: int = 200, pixels: int = INPUTS,
                 binarisation: str = "dynamic", steps: int = 100_000, batch: int = 50, lr: float = 1e-4,
                 prior_lr: float = 1e-2, log_every: int = 1000, eval_every: int = 10_000, test_samples: int = 100,
                 train_subset: int = 0, eval_subset: int = 0, probe_batch: int = 10, probe_samples: int = 1000,
                 probe_reference_samples: int = 2048, basket: str = "", protocol: str = "disarm"):
        super().__init__()
        self.protocol = self._check_protocol(protocol)
        self._schedule(binarisation, steps, batch, log_every, eval_every, test_samples, train_subset, eval_subset,
                       probe_batch, probe_samples, probe_reference_samples, basket, {"lr": lr, "prior_lr": prior_lr})
        self.architecture, self.latents, self.hidden, self.pixels = architecture, latents, hidden, pixels

    def _check_protocol(self, protocol: str) -> str:
        return protocol  # declared: domains["protocol"]

    probe_class: type = VaeProbe  # the checkpoints' gradient problem (built by its ``at``)

    def _schedule(self, binarisation: str, steps: int, batch: int, log_every: int, eval_every: int,
                  test_samples: int, train_subset: int, eval_subset: int, probe_batch: int, probe_samples: int,
                  probe_reference_samples: int, basket: str, rates: dict[str, float]) -> None:
        """Validate and keep the data, schedule, probe, basket and learning-rate parameters (a
        ValueError of one line for a bad one): what every VAE variant shares."""
        if binarisation not in VAE_BINARISATIONS:  # 'categorical-vae' resolves '' by its protocol first
            raise ValueError(f"binarisation must be one of {', '.join(VAE_BINARISATIONS)}, got {binarisation!r}")
        if train_subset > self.training_examples:  # the protocol's training set: a relation, not a domain
            raise ValueError(f"train_subset must be in [0, {self.training_examples}] (0 = all), got {train_subset}")
        if train_subset and batch > train_subset:
            raise ValueError(f"batch ({batch}) must not exceed train_subset ({train_subset})")
        self.binarisation, self.steps, self.batch = binarisation, steps, batch
        for name, value in rates.items():
            setattr(self, name, value)
        self.log_every, self.eval_every, self.test_samples = log_every, eval_every, test_samples
        self.train_subset, self.eval_subset = train_subset, eval_subset
        self.probe_batch, self.probe_samples = probe_batch, probe_samples
        self.probe_reference_samples = probe_reference_samples
        self.basket = tuple(part.strip() for part in str(basket).split("+") if part.strip())
        self.batch_size, self.epochs = batch, 1  # MnistTrainingProblem's names

    @property
    def depth(self) -> int:
        return 2 if self.architecture == "two-layer" else 1

    @property
    def units(self) -> int:
        return self.latents

    def progress_total(self) -> int:
        return self.steps

    def check_estimator(self, estimator) -> None:
        check_latent_values(estimator, self.name)
        for l in range(self.depth):
            estimator.layer(l).check_units(self.latents)

    def evaluations_per_example(self, estimator) -> int:
        """Full-model loss evaluations per example and step: nested layers multiply."""
        return math.prod(estimator.layer(l).loss_evaluations(self.latents) for l in range(self.depth))

    # -- data --------------------------------------------------------------------------------------
    @property
    def training_examples(self) -> int:
        """The size of the training set (``train_subset`` 0 = all of it): the 50,000 of the split."""
        return TRAIN_EXAMPLES

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(training, test) images in [0, 1] on the device, subsets applied."""
        splits = self.splits()
        return splits["train"][0], splits["test"][0]

    def data(self) -> dict[str, torch.Tensor]:
        """train / train_eval / test images on the device, the first ``pixels`` pixels: intensities
        for 'dynamic' (binarised as used) and 'none' (grey levels, a Bernoulli likelihood of grey
        targets: the binary cross-entropy), binary for 'static' (a fixed draw per split from seed 0,
        the same in every run)."""
        train, test = self.images()
        train, test = train[:, :self.pixels], test[:, :self.pixels]
        if self.binarisation == "static":
            train = Binariser("static", seed_stream(0, 0))(train)
            test = Binariser("static", seed_stream(0, 1))(test)
        return {"train": train, "test": test, "train_eval": train[:self.eval_subset] if self.eval_subset else train}

    def binarisers(self, seed: int) -> tuple[Callable, Callable]:
        """(training, evaluation) binarisation: dynamic draws from their own seeded streams; static
        data is binary already, 'none' keeps grey levels."""
        if self.binarisation in ("static", "none"):
            return (lambda x: x), (lambda x: x)
        return Binariser("dynamic", seed), Binariser("dynamic", seed_stream(seed, Stream.VAE_EVALUATION))

    def build_model(self, seed: int, train: torch.Tensor) -> VaeModel:
        return VaeModel(self.architecture, self.pixels, self.latents, self.hidden,
                        seeded_generator(seed, Stream.INIT), train.mean(0).cpu(), self.protocol).to(self.device)

    def optimisers(self, model: VaeModel) -> list[torch.optim.Optimizer]:
        """Adam at ``lr`` for encoder and decoder, then SGD at ``prior_lr`` for the prior logits.
        'disarm': DisARM's separate Keras Adams (epsilon 1e-7; the encoder's batch-sum gradient
        there is our batch mean times ``batch``, so its epsilon here is 1e-7 / batch: the same steps)."""
        prior = torch.optim.SGD([model.prior_logits], lr=self.prior_lr)
        if self.protocol == "disarm":
            return [_adam(model.encoder_parameters(), self.lr, KERAS_ADAM_EPSILON / self.batch),
                    _adam(model.decoder_parameters(), self.lr, KERAS_ADAM_EPSILON), prior]
        return [_adam(model.encoder_parameters() + model.decoder_parameters(), self.lr), prior]

    def own_parameter_optimiser(self, estimator) -> OwnParameterOptimizer:
        """The estimator's own parameters: 'disarm', DisARM's ``theta_optimizer`` (Adam at the
        encoder's lr, beta1 = 0.999, Keras's epsilon); otherwise Adam at its ``adaptation_lr``."""
        if self.protocol == "disarm":
            return OwnParameterOptimizer(estimator, self.lr, (CONTROL_VARIATE_BETA1, 0.999), KERAS_ADAM_EPSILON)
        return OwnParameterOptimizer(estimator)

    def fresh_decoder_draw(self) -> bool:
        """Whether decoder and prior learn from one fresh draw z ~ q (DisARM) rather than from the
        estimator's own evaluations."""
        return self.protocol == "disarm"

    def elbo_from_surrogate(self, estimator) -> bool:
        """Whether the surrogate's value is a one-sample -ELBO: its evaluations are draws from q."""
        return estimator.unbiased and estimator.binary_forward

    # -- training ------------------------------------------------------------------------------------
    def model_for(self, estimator, seed: int) -> VaeModel:
        """The untrained model for ``seed`` with a placeholder pixel mean (a kept state replaces it)."""
        return self.build_model(seed, torch.full((1, self.pixels), 0.5))

    def fit(self, estimator, seed: int, progress: Callable[[int], None] | None = None,
            resume: dict | None = None, snapshots: bool = False) -> Iterator[Record | Checkpoint | Snapshot]:
        """Train for ``steps`` (records: the class docstring), with ``snapshots`` a :class:`Snapshot`
        after every log and evaluation step; ``resume`` (a snapshot's state) continues after that step."""
        device = self.device
        data = self.data()
        binarise, binarise_eval = self.binarisers(seed)
        model = self.trained_model = self.build_model(seed, data["train"])
        optimisers = self.optimisers(model)
        own_parameters = self.own_parameter_optimiser(estimator)
        encoder = model.encoder_parameters()
        generative = model.decoder_parameters() + [p for p in (model.prior_logits,) if p.requires_grad]
        order = seeded_generator(seed, Stream.ORDER)
        evaluation = seeded_generator(seed, Stream.VAE_EVALUATION, device=device)
        probe_rng = seeded_generator(seed, Stream.VAE_PROBE)
        fresh = self.fresh_decoder_draw()
        decoder_rng = seeded_generator(seed, Stream.VAE_DECODER, device=device) if fresh else None
        elbo_rng = None if (fresh or self.elbo_from_surrogate(estimator)) else \
            seeded_generator(seed, Stream.VAE_ELBO, device=device)
        per_step = self.evaluations_per_example(estimator)
        train = data["train"]
        batches = MiniBatches(train.shape[0], self.batch, order, device)
        interval_elbo = torch.zeros((), dtype=torch.float64, device=device)
        interval_steps, interval_seconds, wall = 0, 0.0, 0.0
        moments = GradientMoments(encoder, self._encoder_scopes(encoder))

        def assign(parameters: list, objective: torch.Tensor) -> None:
            for p, g in zip(parameters, torch.autograd.grad(objective, parameters, allow_unused=True)):
                p.grad = g
        state = TrainingState(snapshots, model=model, optimisers=optimisers, own_parameters=own_parameters,
                              first=moments.first, second=moments.second, batches=batches, evaluation=evaluation,
                              probe=probe_rng, elbo=elbo_rng, decoder=decoder_rng, interval_elbo=interval_elbo,
                              binarise=binarise if isinstance(binarise, Binariser) else None,
                              binarise_eval=binarise_eval if isinstance(binarise_eval, Binariser) else None)

        def step() -> None:
            x = binarise(train[next(batches)])
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            own_parameters.zero_grad()
            logits = model.encode(0, x)
            surrogate = model.surrogate(x, logits, estimator)
            if fresh:  # the encoder from the estimator, decoder and prior from one fresh draw
                assign(encoder, surrogate.mean())
                with torch.no_grad():
                    zs = model.sample_posterior(x, 1, decoder_rng, logits.detach())
                negative = model.joint(x, zs, logits.detach())[1]
                assign(generative, negative.mean())
            else:
                surrogate.mean().backward()
            for optimiser in optimisers:
                optimiser.step()
            own_parameters.step()
            with torch.no_grad():
                moments.update([p.grad for p in encoder])
                if fresh:
                    interval_elbo.sub_(negative.detach().sum())
                elif elbo_rng is None:
                    interval_elbo.sub_(surrogate.detach().sum())
                else:
                    zs = model.sample_posterior(x, 1, elbo_rng, logits.detach())
                    interval_elbo.sub_(model.joint(x, zs, logits.detach())[1].sum())

        start = 1
        if resume is not None:
            values = state.restore(resume)
            start = values["step"] + 1
            interval_steps, interval_seconds = values["interval_steps"], values["interval_seconds"]
            wall = values["wall"]
        else:
            yield from self._evaluate(model, estimator, data, binarise_eval, evaluation, probe_rng, seed, 0)
        watch = Stopwatch(device)
        for index in range(start, self.steps + 1):
            step()
            interval_steps += 1
            if progress is not None:
                progress(1)
            logging, evaluating = index % self.log_every == 0 or index == self.steps, \
                index % self.eval_every == 0 or index == self.steps
            if not (logging or evaluating):
                continue
            interval_seconds += watch.seconds()
            if logging:
                wall += interval_seconds
                yield Record("train_elbo", float(interval_elbo) / (interval_steps * self.batch), step=index)
                yield Record("loss_evals_total", float(index * per_step), step=index)
                yield from moments.records(index)
                yield Record("seconds_per_step", interval_seconds / interval_steps, step=index)
                yield Record("wall_time_s", wall, step=index)
                interval_elbo.zero_()
                interval_steps, interval_seconds = 0, 0.0
            if evaluating:
                yield from self._evaluate(model, estimator, data, binarise_eval, evaluation, probe_rng, seed, index)
            yield from state.resume_point(index, step=index, interval_steps=interval_steps,
                                          interval_seconds=interval_seconds, wall=wall)
            watch = Stopwatch(device)

    def _encoder_scopes(self, encoder: list) -> dict[str, list[int]]:
        """Indices of the encoder's parameter tensors per scope ('all'; 'layer1', 'layer2')."""
        scopes = {"all": list(range(len(encoder)))}
        if self.depth > 1:
            counts = [len(list(module.parameters())) for module in self.trained_model.encoders]
            bounds = np.cumsum((0, *counts))
            scopes.update({f"layer{l + 1}": list(range(bounds[l], bounds[l + 1])) for l in range(self.depth)})
        return scopes

    # -- evaluation ------------------------------------------------------------------------------------
    def _evaluate(self, model: VaeModel, estimator, data, binarise, generator: torch.Generator,
                  probe_rng: torch.Generator, seed: int, step: int) -> Iterator[Record | Checkpoint]:
        """The eval-step records and the checkpoint probe (see the class docstring)."""
        with torch.no_grad():
            binary = {split: binarise(data[split]) for split in ("train_eval", "test")}
            for name, split, samples in (("train_set_elbo", "train_eval", 1), ("test_elbo", "test", 1),
                                         ("test_bound", "test", self.test_samples)):
                values = self.bounds(model, binary[split], samples, generator).to("cpu", torch.float64).numpy()
                yield Record(name, float(values.mean()), float(scipy.stats.sem(values)) if len(values) > 1 else None,
                             step=step)
        train = data["train"]
        chosen = torch.randperm(train.shape[0], generator=probe_rng)[:self.probe_batch]
        x = train[chosen.to(train.device)].cpu()
        if self.binarisation == "dynamic":
            x = torch.bernoulli(x, generator=probe_rng)
        x = x.to(train.device)
        probe = self.probe_class.at(model, x, self.probe_reference_samples,
                            reference_seed=seed_stream(seed, Stream.VAE_REFERENCE, step))
        yield Checkpoint(probe, self.probe_samples, step=step, basket=self.basket)

    def bounds(self, model: VaeModel, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        """Per-example bound: log mean_s exp(ELBO_s) over ``samples`` draws z_s ~ q (one: the ELBO)."""
        chunk = max(1, ELEMENTS // (samples * max(self.pixels, self.latents)))
        parts: list[torch.Tensor] = []

        def measure(xb: torch.Tensor, _) -> tuple:
            zs = model.sample_posterior(xb, samples, generator)
            _, negative = model.joint(xb, zs, model.encode(0, xb))
            parts.append(torch.logsumexp(-negative.to(torch.float64), 0) - math.log(samples))
            return ()

        chunked_sums(measure, x, x, (), chunk)
        return torch.cat(parts)


class MiniBatches:
    """Index mini-batches forever: a fresh seeded permutation per pass, the last partial batch
    dropped; its position (``state_dict``) lets a resumed run draw the same batches."""

    def __init__(self, examples: int, batch: int, order: torch.Generator, device: torch.device):
        self.examples, self.batch, self.order, self.device = examples, batch, order, device
        self.permutation: torch.Tensor | None = None
        self.start = 0

    def __iter__(self) -> "MiniBatches":
        return self

    def __next__(self) -> torch.Tensor:
        if self.permutation is None or self.start + self.batch > self.examples:
            self.permutation = torch.randperm(self.examples, generator=self.order).to(self.device)
            self.start = 0
        indices = self.permutation[self.start:self.start + self.batch]
        self.start += self.batch
        return indices

    def state_dict(self) -> dict:
        return {"order": self.order.get_state(), "start": self.start,
                "permutation": None if self.permutation is None else self.permutation.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.order.set_state(state["order"])
        self.start = int(state["start"])
        permutation = state["permutation"]
        self.permutation = None if permutation is None else permutation.to(self.device)


def _adam(parameters: list, lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """Adam; the fused kernel where this torch and device have it."""
    try:
        return torch.optim.Adam(parameters, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr, eps=eps)


class GradientMoments:
    """The variance of the encoder-parameter gradient along training, two ways, from exponential
    moving averages (decay 0.999, started at 0) m1 of the batch-mean gradient g and m2 of g^2, per
    parameter tensor (float64):

    - ``trajectory_variance`` = sum over coordinates of m2 / c - (m1 / c)^2, c = 1 - 0.999^step (the
      averages bias-corrected; clamped at 0), per scope;
    - ``disarm_variance`` = mean over all coordinates of m2 - m1^2, not corrected: DisARM's
      ``DiscreteVAE.compute_grad_variance`` (``networks.py``, ``tf.train.ExponentialMovingAverage(0.999)``
      of the batch-sum gradient and its square) divided by batch^2 in ``train_one_step``
      (``experiment_launcher_singlelayer.py``), which is the batch mean's; scope 'all'.

    Once 0.999^step is small (0.7 % at 5,000 steps) the corrections vanish and
    trajectory_variance = coordinates x disarm_variance."""

    def __init__(self, parameters: list[torch.Tensor], scopes: dict[str, list[int]]):
        self.first = [torch.zeros_like(p, dtype=torch.float64) for p in parameters]
        self.second = [torch.zeros_like(p, dtype=torch.float64) for p in parameters]
        self.scopes = scopes
        self.coordinates = sum(p.numel() for p in parameters)

    def update(self, grads: list[torch.Tensor | None]) -> None:
        """One step's gradients (None: a parameter the step left without one, counted as 0)."""
        grads = [torch.zeros_like(f) if g is None else g.to(torch.float64) for f, g in zip(self.first, grads)]
        torch._foreach_lerp_(self.first, grads, 1 - EMA_DECAY)
        torch._foreach_lerp_(self.second, torch._foreach_mul(grads, grads), 1 - EMA_DECAY)

    def records(self, step: int) -> Iterator[Record]:
        correction = 1 - EMA_DECAY**step
        spread = [(s / correction - (f / correction) ** 2).clamp_min(0).sum() for f, s in zip(self.first, self.second)]
        for scope, parts in self.scopes.items():
            yield Record("trajectory_variance", float(sum(spread[i] for i in parts)), scope=scope, step=step)
        theirs = sum((s - f * f).sum() for f, s in zip(self.first, self.second))
        yield Record("disarm_variance", float(theirs) / self.coordinates, step=step)


@register_problem("bernoulli-vae", "Bernoulli VAE on dynamically binarised MNIST (DisARM protocol; linear, "
                                   "nonlinear, two-layer): ELBO curves, test bound, gradient variance")
class BernoulliVae(VaeTraining):
    """The Bernoulli VAE on MNIST (50,000 train / 10,000 test)."""

    dataset = "mnist"


@register_problem("fashion-mnist-bernoulli-vae", "The Bernoulli VAE benchmark on Fashion-MNIST")
class FashionMnistBernoulliVae(VaeTraining):
    """The Bernoulli VAE on Fashion-MNIST (50,000 train / 10,000 test)."""

    dataset = "fashion-mnist"


# -- categorical latents: the ReinMax / GST categorical VAE ---------------------------------------------------
CATEGORICAL_ARCHITECTURES = ("linear", "nonlinear")


CATEGORICAL_SIZES = {"architecture": OneOf(*CATEGORICAL_ARCHITECTURES), "pixels": Count(1, INPUTS), "latents": Count(1),
                     "categories": Count(2), "hidden": layer_sizes()}


def check_categorical_sizes(architecture: str, pixels: int, latents: int, categories: int,
                            hidden: str) -> tuple[int, ...]:
    """The categorical VAE's hidden layer sizes ('512-256') as a tuple (the sizes' domains are
    declared by the classes)."""
    return parse_sizes(hidden, "hidden")


class CategoricalVaeModel(VaeModel):
    """The categorical VAE of ReinMax's and GST's MNIST experiments: q(z|x) = prod_i Cat(softmax(enc(x)_i)),
    enc(x) reshaped to (latents, K); p(x|z) Bernoulli(sigm(dec(z))) on the flattened one-hot z
    (latents x K inputs); a fixed uniform prior (``prior_logits`` a zero buffer, log p(z) = -latents log K),
    its KL in closed form (:meth:`surrogate`).
    'linear' maps x -> z -> x directly; 'nonlinear' has ReLU hidden layers ``hidden`` (ReinMax:
    784-512-256 each way, the decoder the mirror). ``protocol`` 'reinmax': torch's default start
    (weights and biases U(+-1/sqrt(fan_in)); the encoder reads x itself), as ReinMax's ``model/vae.py``;
    'suite': DisARM's data-dependent start as for the Bernoulli model (the encoder reads x minus the
    pixel means, the decoder's output bias is their logit, other biases 0)."""

    latent = CategoricalLatents
    signed_inputs = signal_only = False  # the decoder reads the one-hot z; no log q term in the surrogate

    def __init__(self, architecture: str, pixels: int, latents: int, categories: int, hidden: tuple[int, ...],
                 generator: torch.Generator, pixel_mean: torch.Tensor, protocol: str = "suite"):
        torch.nn.Module.__init__(self)  # VaeModel's layers are Bernoulli-shaped; these are built here
        self.architecture, self.latents, self.categories = architecture, latents, categories
        inner = tuple(hidden) if architecture == "nonlinear" else ()
        width = latents * categories
        torch_start = protocol == "reinmax"
        self.encoders = torch.nn.ModuleList([_mlp((pixels, *inner, width), generator, torch.nn.ReLU, torch_start)])
        self.decoders = torch.nn.ModuleList([_mlp((width, *inner[::-1], pixels), generator, torch.nn.ReLU,
                                                  torch_start)])
        self.register_buffer("prior_logits", torch.zeros(latents, categories))
        self.register_buffer("pixel_mean", torch.zeros_like(pixel_mean) if torch_start else pixel_mean.detach().clone())
        if not torch_start:
            with torch.no_grad():
                _last_linear(self.decoders[0]).bias.copy_(torch.logit(pixel_mean.clamp(MEAN_CLIP, 1 - MEAN_CLIP)))

    def encode(self, l: int, below: torch.Tensor) -> torch.Tensor:
        """The encoder's logits, shape (..., latents, K)."""
        return self.encoders[0](below - self.pixel_mean).unflatten(-1, (self.latents, self.categories))

    def log_likelihood(self, l: int, below: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) of z (..., latents, K), flattened for the decoder; broadcasts."""
        return BernoulliLatents.log_prob(below, self.decoders[0](z.flatten(-2)))

    def kl(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) in closed form, summed over the latents: ReinMax's ``KLD``."""
        log_q = torch.log_softmax(logits, -1)
        return (log_q.exp() * (log_q - torch.log_softmax(self.prior_logits, -1))).sum((-2, -1))

    def surrogate(self, x: torch.Tensor, logits: torch.Tensor, estimator, encode: Encode | None = None,
                  wrap_last: Callable | None = None) -> torch.Tensor:
        """The per-example surrogate of -ELBO(x) = E_q[-log p(x|z)] + KL(q || p): the estimator (called
        with ``categorical=True``) on the reconstruction term, whose loss_fn maps z (*extra, *batch,
        latents, K) to -log p(x|z) (``wrap_last`` wraps it: a loss observer), plus the closed-form
        KL, differentiated exactly (ReinMax's and GST's protocol: every estimator gets the same exact
        KL gradient, and no score noise from log q's direct term)."""
        def loss_fn(z: torch.Tensor) -> torch.Tensor:
            return -self.log_likelihood(0, x, z)

        reconstruction = estimator(logits, loss_fn if wrap_last is None else wrap_last(loss_fn), categorical=True)
        return reconstruction + self.kl(logits)


@register_problem("categorical-vae-probe",
                  "A categorical VAE at fixed weights on a fixed binary mini-batch: gradient of the mean negative "
                  "ELBO w.r.t. the encoder's logits (exact while K^latents <= 2^20 per example)")
class CategoricalVaeProbe(_ProbeReference, CategoricalProblem):
    """d/d(encoder logits) of mean_b E_q[-ELBO(x_b)] for a fixed :class:`CategoricalVaeModel` and binary
    mini-batch: the gradient problem each checkpoint of ``categorical-vae`` measures. Estimates are
    the training step's: the estimator's gradient of the reconstruction term plus the closed-form KL's
    exact gradient (ReinMax's ``analyze_gradient`` measures the reconstruction term alone; the KL
    part is the same exact vector for every estimator, so bias and variance are the same either way).
    ``loss(h)`` is the -ELBO of whole configurations (log q(h|x) - log p(x, h)), whose expectation is
    E_q[-ELBO]: what enumeration and the contract tests use.

    ``logits`` is (batch x latents, K), example-major; ``units`` = batch x latents, what ``loss(h)``
    takes as one-hot h (..., units, K); the gradient is flattened row-major, dim = batch x latents x K.
    The harness stores at each checkpoint, besides variance, ``bias_norm`` and ``cosine`` against this
    reference (ReinMax's bias ratio and cosine similarity).

    As a registered problem it is a seeded toy (``architecture``, ``pixels``, ``latents``, ``categories``,
    ``hidden``, ``batch`` binary examples from ``data_seed``). Reference: exact when one example's
    K^latents configurations number at most 2^20 (4 x 8 in ReinMax, or 8 latents x 4 categories =
    65,536): enumeration per example in float64, differentiated by autograd; otherwise, or with
    ``reference_method='sampled'``, ``reference_samples`` (rounded up to a multiple of 64) draws of the
    leave-one-out score-function estimator over 8 joint draws, with standard errors from 64 batch
    means (scipy.stats.sem)."""

    domains = {**CATEGORICAL_SIZES, "batch": Count(1), "data_seed": SEED,
               "reference_method": OneOf(*REFERENCE_METHODS), "reference_samples": Count(REFERENCE_BATCHES)}

    def __init__(self, architecture: str = "linear", pixels: int = 6, latents: int = 3, categories: int = 3,
                 hidden: str = "8", batch: int = 2, data_seed: int = 0, reference_method: str = "auto",
                 reference_samples: int = 4096):
        super().__init__()
        sizes = check_categorical_sizes(architecture, pixels, latents, categories, hidden)
        generator = seeded_generator(data_seed, Stream.PROBE_DATA)
        pixel_mean = torch.rand(pixels, generator=generator) * 0.8 + 0.1
        model = CategoricalVaeModel(architecture, pixels, latents, categories, sizes, generator, pixel_mean)
        with torch.no_grad():  # a toy away from the symmetric start
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
        x = torch.bernoulli(pixel_mean.expand(batch, pixels), generator=generator)
        self._configure(model, x, reference_method, reference_samples, data_seed)

    @classmethod
    def at(cls, model: CategoricalVaeModel, x: torch.Tensor, reference_samples: int,
           reference_seed: int) -> "CategoricalVaeProbe":
        """A probe of ``model`` (copied, frozen) on the binary mini-batch ``x``."""
        probe = cls.__new__(cls)
        Problem.__init__(probe)
        probe._configure(model, x, "auto", reference_samples, reference_seed)
        return probe

    def _configure(self, model: CategoricalVaeModel, x: torch.Tensor, reference_method: str,
                   reference_samples: int, reference_seed: int) -> None:
        if reference_method not in REFERENCE_METHODS:
            raise ValueError(f"reference_method must be one of {', '.join(REFERENCE_METHODS)}, "
                             f"got {reference_method!r}")
        if reference_samples < REFERENCE_BATCHES:
            raise ValueError(f"reference_samples must be at least {REFERENCE_BATCHES}, got {reference_samples}")
        self.register_buffer("x", x.detach().clone())
        model = copy.deepcopy(model)
        with torch.no_grad():
            self.register_buffer("logits", model.encode(0, self.x).flatten(0, 1).detach().clone())
        model.requires_grad_(False)  # the encoder's logits are the point, held apart
        self.model = model
        self.batch, self.latents = int(x.shape[0]), model.latents
        self.reference_method, self.reference_samples, self.reference_seed = (reference_method, reference_samples,
                                                                               reference_seed)
        if reference_method == "exact":
            self._check_enumerable()

    def check_estimator(self, estimator) -> None:
        estimator.check_units(self.latents)  # the estimator sees one example's latents at a time

    def evaluations_per_estimate(self, estimator) -> int:
        """Loss evaluations per example's estimate (each example's latents are one layer)."""
        return estimator.loss_evaluations(self.latents, categories=self.categories)

    def _example_logits(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        return (self.logits if logits is None else logits).unflatten(0, (self.batch, self.latents))

    # -- the loss of whole configurations --------------------------------------------------------------
    def loss(self, h: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of -ELBO at one-hot h (..., batch * latents, K)."""
        z = h.unflatten(-2, (self.batch, self.latents))
        return self.model.joint(self.x, [z], self._example_logits())[1].mean(-1)

    # -- gradient estimates ------------------------------------------------------------------------
    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        """(n, dim): the estimator sees logits (batch, n, latents, K), samples third to last as replay
        expects; a loss observer sees one row per sample, the batch's latents side by side."""
        batch, latents = self.batch, self.latents
        logits = self._example_logits().detach().unsqueeze(1).expand(batch, n, latents, self.categories)
        logits = logits.clone().requires_grad_(True)
        wrap = None
        if observe is not None:
            def wrap(loss_fn):
                observed = observe(lambda rows: loss_fn(rows.unflatten(-2, (batch, latents)).movedim(-3, -4)))
                return lambda z: observed(z.movedim(-4, -3).flatten(-3, -2))
        surrogate = self.model.surrogate(self.x.unsqueeze(1), logits, estimator, None, wrap)
        (grad,) = torch.autograd.grad(surrogate.mean(0).sum(), logits)
        return grad.transpose(0, 1).reshape(n, self.dim)

    # -- the reference -----------------------------------------------------------------------------
    @property
    def example_configurations(self) -> int:
        return self.categories**self.latents

    def _enumerable(self) -> bool:
        return self.example_configurations <= 2**MAX_ENUMERATION_UNITS

    def _check_enumerable(self) -> None:
        if not self._enumerable():
            raise ValueError(f"{self.categories}^{self.latents} configurations per example are too many to "
                             f"enumerate (at most 2^{MAX_ENUMERATION_UNITS})")

    def _enumerate(self, gradient: bool) -> tuple[float, torch.Tensor | None]:
        """(E[L], dE[L]/dlogits flattened) in float64: per example, all K^latents configurations
        weighted by q, in chunks; autograd through q and the direct term."""
        self._check_enumerable()
        probe = copy.deepcopy(self).to("cpu", torch.float64)
        leaf = probe.logits.detach().requires_grad_(gradient)
        logits = probe._example_logits(leaf)
        K, latents = self.categories, self.latents
        total, grad = 0.0, torch.zeros_like(leaf)
        count = self.example_configurations
        chunk = max(1, ELEMENTS // (self.batch * max(probe.x.shape[-1], latents * K)))
        for start in range(0, count, chunk):
            codes = torch.arange(start, min(start + chunk, count)).unsqueeze(1)
            digits = (codes // K ** torch.arange(latents)) % K  # all_categories' order
            configs = F.one_hot(digits, K).to(torch.float64).unsqueeze(1)  # (C, 1, latents, K): over the batch
            with torch.set_grad_enabled(gradient):
                log_q, negative = probe.model.joint(probe.x, [configs], logits)
                expected = (log_q.exp() * negative).sum() / self.batch
            total += float(expected.detach())
            if gradient:
                grad += torch.autograd.grad(expected, leaf)[0]
        return total, grad.reshape(-1) if gradient else None

    def sampled_reference(self) -> Reference:
        """The estimated reference (class docstring) of the reconstruction term, plus the KL's exact
        gradient: float64 on the CPU, seeded by ``reference_seed``."""
        probe = copy.deepcopy(self).to("cpu", torch.float64)
        logits, model, K = probe._example_logits(), probe.model, REFERENCE_CONTINUATIONS
        probs = torch.softmax(logits, -1)
        leaf = logits.detach().requires_grad_(True)
        (kl_gradient,) = torch.autograd.grad(model.kl(leaf).sum() / self.batch, leaf)
        generator = seeded_generator(self.reference_seed, Stream.VAE_REFERENCE, self.reference_samples)
        rows = -(-self.reference_samples // REFERENCE_BATCHES)
        per = max(1, ELEMENTS // (K * self.batch * max(probe.x.shape[-1], self.latents * self.categories)))
        sums = torch.zeros(REFERENCE_BATCHES, self.dim, dtype=torch.float64)
        with torch.no_grad():
            for b in range(REFERENCE_BATCHES):
                for start in range(0, rows, per):
                    m = min(per, rows - start)
                    (z,) = model.sample_posterior(probe.x, K * m, generator, logits)
                    z = z.view(K, m, *z.shape[1:])  # (K, m, batch, latents, categories)
                    negative = -model.log_likelihood(0, probe.x, z)  # (K, m, batch)
                    centred = negative - (negative.sum(0, keepdim=True) - negative) / (K - 1)
                    signal = (z - probs) * centred[..., None, None]
                    sums[b] += signal.mean(0).sum(0).reshape(-1) / self.batch
        means = (sums / rows).numpy()
        return Reference(torch.from_numpy(means.mean(0)) + kl_gradient.reshape(-1),
                         torch.from_numpy(np.asarray(scipy.stats.sem(means, axis=0), dtype=np.float64)))


CATEGORICAL_PROTOCOLS = {
    "reinmax": "ReinMax's MNIST VAE (LiyuanLucasLiu/ReinMax mnist_vae): 60,000 grey-level images, binary "
               "cross-entropy likelihood, torch's default initialisation, 160 epochs; lr, temperature and "
               "optimiser per estimator from ReinMax's Table 8",
    "suite": "this suite's earlier variant: 50,000 dynamically binarised images, DisARM's data-dependent start, "
             "80,000 steps",
}
EPOCHS = 160                    # ReinMax's gumbel_softmax_vae.py --epochs default, what Table 8's runs train
REINMAX_TRAIN_EXAMPLES = 60_000  # torchvision's MNIST(train=True): the whole training file, no validation split
CATEGORICAL_OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}


class CategoricalVaeTraining(VaeTraining):
    """Trains :class:`CategoricalVaeModel` (``latents`` x ``categories``) with the estimator at its
    categorical latents; schedule, records and checkpoints as :class:`VaeTraining`'s (the same record
    names; ``disarm_variance`` the same formula), the checkpoints probing a :class:`CategoricalVaeProbe`
    (exact reference while categories^latents <= 2^20, e.g. ReinMax's 8 categories x 4 latents; else
    sampled with standard errors). As ReinMax's, the estimator sees the reconstruction term
    -log p(x|z) and the KL to the uniform prior is added in closed form
    (:meth:`CategoricalVaeModel.surrogate`); encoder and decoder learn from the same surrogate.

    ``protocol`` 'reinmax' (the default; Liu et al. 2023, LiyuanLucasLiu/ReinMax
    ``mnist_vae/gumbel_softmax_vae.py`` and ``model/vae.py``): 'nonlinear' 784-512-256 ReLU encoder and
    mirrored decoder, fixed uniform prior, batch 100, the 60,000 training images as grey levels
    (``binarisation`` '' = 'none': a Bernoulli likelihood of grey targets, their
    ``binary_cross_entropy``), torch's default initialisation, ``optimizer`` ('adam' or 'radam') at
    ``lr`` over encoder and decoder, ``steps`` 0 = 160 epochs (96,000 updates). The per-estimator
    lr, temperature and optimiser of their Table 8 are passed as parameters (the experiment
    ``categorical-vae-seeds`` does); ``train_elbo`` is the surrogate's value whenever the estimator's
    forward sample is one-hot (their training loss: BCE at the method's own sample plus the KL), so
    with ``log_every`` = 600 its last value is their "Average loss" of the last epoch, negated. The
    test set (``test_elbo``) is their test loss. Deviations: the shuffling (a seeded permutation per
    epoch, theirs torch's DataLoader), their KL's log(q + 1e-10) (here exact), and an extra draw for
    the training ELBO of estimators whose forward sample is not one-hot (none in Table 8).
    'suite': the 50,000 training images binarised 'dynamic', DisARM's data-dependent start (see
    :class:`CategoricalVaeModel`), ``steps`` 0 = 160 epochs of 50,000 (80,000 updates), ``train_elbo``
    as the Bernoulli VAE's 'suite' protocol."""

    variables = "categorical"
    probe_class = CategoricalVaeProbe
    protocols = CATEGORICAL_PROTOCOLS
    domains = {**CATEGORICAL_SIZES, "binarisation": OneOf("", *VAE_BINARISATIONS),
               "steps": Count(1, zero=f"{EPOCHS} epochs"), "protocol": OneOf(*CATEGORICAL_PROTOCOLS),
               "optimizer": OneOf(*CATEGORICAL_OPTIMIZERS)}

    def __init__(self, architecture: str = "nonlinear", latents: int = 30, categories: int = 10,
                 hidden: str = "512-256", pixels: int = INPUTS, binarisation: str = "", steps: int = 0,
                 batch: int = 100, lr: float = 1e-3, log_every: int = 1000, eval_every: int = 10_000,
                 test_samples: int = 100, train_subset: int = 0, eval_subset: int = 0, probe_batch: int = 10,
                 probe_samples: int = 1000, probe_reference_samples: int = 2048, basket: str = "",
                 protocol: str = "reinmax", optimizer: str = "adam"):
        TrainingProblem.__init__(self)  # VaeTraining's own __init__ takes the Bernoulli sizes
        sizes = check_categorical_sizes(architecture, pixels, latents, categories, hidden)
        self.protocol = self._check_protocol(protocol)
        binarisation = binarisation or ("none" if protocol == "reinmax" else "dynamic")
        examples = train_subset or self.training_examples
        steps = steps or max(1, EPOCHS * (examples // max(batch, 1)))
        self._schedule(binarisation, steps, batch, log_every, eval_every, test_samples, train_subset, eval_subset,
                       probe_batch, probe_samples, probe_reference_samples, basket, {"lr": lr})
        self.architecture, self.latents, self.categories, self.hidden = architecture, latents, categories, sizes
        self.pixels, self.optimizer = pixels, optimizer

    @property
    def depth(self) -> int:
        return 1

    @property
    def training_examples(self) -> int:
        """60,000 under 'reinmax' (the whole MNIST training file), else the split's 50,000."""
        return REINMAX_TRAIN_EXAMPLES if self.protocol == "reinmax" else TRAIN_EXAMPLES

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """'reinmax': the 60,000 training images (the split's train then valid: the file's order), the
        first ``train_subset``; the test set as for 'suite'."""
        if self.protocol != "reinmax":
            return super().images()
        splits = mnist_training.load_splits(self.dataset)
        train = torch.cat([splits["train"][0], splits["valid"][0]])
        train = train[:self.train_subset] if self.train_subset else train
        return train.to(self.device), first_examples(splits["test"], self.eval_subset)[0].to(self.device)

    def check_estimator(self, estimator) -> None:
        estimator.check_units(self.latents)

    def evaluations_per_example(self, estimator) -> int:
        return estimator.loss_evaluations(self.latents, categories=self.categories)

    def build_model(self, seed: int, train: torch.Tensor) -> CategoricalVaeModel:
        return CategoricalVaeModel(self.architecture, self.pixels, self.latents, self.categories, self.hidden,
                                   seeded_generator(seed, Stream.INIT), train.mean(0).cpu(),
                                   self.protocol).to(self.device)

    def optimisers(self, model: CategoricalVaeModel) -> list[torch.optim.Optimizer]:
        """``optimizer`` at ``lr`` for encoder and decoder (the prior is fixed), torch's defaults otherwise."""
        parameters = model.encoder_parameters() + model.decoder_parameters()
        if self.optimizer == "adam":
            return [_adam(parameters, self.lr)]
        return [CATEGORICAL_OPTIMIZERS[self.optimizer](parameters, lr=self.lr)]

    def own_parameter_optimiser(self, estimator) -> OwnParameterOptimizer:
        return OwnParameterOptimizer(estimator)

    def fresh_decoder_draw(self) -> bool:
        return False

    def elbo_from_surrogate(self, estimator) -> bool:
        """'reinmax': whenever the forward sample is one-hot (their training loss); else as 'suite'."""
        return estimator.binary_forward if self.protocol == "reinmax" else super().elbo_from_surrogate(estimator)


@register_problem("categorical-vae", "Categorical VAE on MNIST (ReinMax protocol by default: grey levels, latents x "
                                     "categories, uniform prior): ELBO curves, test bound, gradient bias and variance")
class CategoricalVae(CategoricalVaeTraining):
    """The categorical VAE on MNIST (60,000 train under 'reinmax', 50,000 under 'suite'; 10,000 test)."""

    dataset = "mnist"


@register_problem("fashion-mnist-categorical-vae", "The categorical VAE benchmark on Fashion-MNIST")
class FashionMnistCategoricalVae(CategoricalVaeTraining):
    """The categorical VAE on Fashion-MNIST (60,000 or 50,000 train as for MNIST; 10,000 test)."""

    dataset = "fashion-mnist"
