"""NVIL (Mnih & Gregor 2014, sec. 3): REINFORCE with a learned input-dependent baseline and,
optionally, variance normalisation of the learning signal."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import Estimator, LossFn, attach_gradient, parameter_trait
from estimators.domains import FLAG, SEED, Count, Interval
from estimators.own_parameters import LazyMLP, add_objective_gradient


@register_estimator("nvil", "NVIL: REINFORCE with a learned baseline network on the logits, optional "
                            "variance normalisation (Mnih & Gregor 2014)")
class NVIL(Estimator):
    """g = (L - C_psi(a)) (b - sigm(a)): Mnih & Gregor's (2014, sec. 3) learning signal centred by
    an input-dependent baseline C_psi(x). The logits a are a function of the input, so
    C_psi is a ``hidden``-unit tanh network on the detached logits; it is the estimator's own
    parameter, trained on its squared error (L - C_psi(a))^2 (added into ``.grad`` while
    ``update_state``) and starts at exactly 0 (REINFORCE). Since C_psi(a) does not depend on b,
    g is unbiased.

    ``normalise=True`` adds their variance normalisation (sec. 3): the centred signal l = L - C_psi(a)
    becomes (l - m) / max(1, sqrt(v)), with m, v running (``decay``) mean and variance of l from
    earlier calls (the first call initialises them). The estimate is then rescaled by a positive
    common factor: unbiased in direction only, so such an instance is not ``unbiased`` and is
    ``stateful`` (the class declares the default, ``normalise=False``)."""

    family = "control variate"
    unbiased = True
    loss_evals = 1
    needs_loss_backprop = False
    randomness = "bernoulli"
    has_parameters = True
    loss_rounding = 1.0  # (L - C_psi(a)) (b - sigm(a))
    domains = {"hidden": Count(1), "normalise": FLAG, "decay": Interval(0, 1, closed="left"), "init_seed": SEED}

    def __init__(self, hidden: int = 16, normalise: bool = False, decay: float = 0.9, init_seed: int = 0):
        super().__init__()
        self.hidden, self.normalise, self.decay = hidden, normalise, decay
        self.baseline = LazyMLP(hidden, init_seed)
        self.register_buffer("signal_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("signal_var", torch.ones((), dtype=torch.float64))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    @parameter_trait(default=True)
    def unbiased(self) -> bool:
        """Variance normalisation rescales the estimate by a common factor: biased in length."""
        return not self.normalise

    @parameter_trait(default=False)
    def stateful(self) -> bool:
        """Variance normalisation keeps running moments of the learning signal."""
        return self.normalise

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        a = logits.detach()
        probs = torch.sigmoid(a)
        b = self.rng.bernoulli(probs)
        loss = loss_fn(b)
        value = loss.detach()
        with torch.set_grad_enabled(self.update_state):
            baseline = self.baseline(a)
        signal = value - baseline.detach()
        if self.normalise:
            scale = torch.clamp(self.signal_var.sqrt(), min=1.0)
            centred = (signal - self.signal_mean.to(signal.dtype)) / scale.to(signal.dtype)
        else:
            centred = signal
        grad = centred.unsqueeze(-1) * (b - probs)
        if self.update_state:
            add_objective_gradient(((value - baseline) ** 2).mean(), self.baseline.parameters())
            if self.normalise:
                self._observe(signal)
        return attach_gradient(loss, logits, grad)

    @torch.no_grad()
    def _observe(self, signal: torch.Tensor) -> None:
        signal = signal.to(torch.float64)
        batch_mean = signal.mean()
        if not bool(self.seen):
            self.signal_mean.copy_(batch_mean)
            self.signal_var.copy_(((signal - batch_mean) ** 2).mean())
            self.seen.fill_(True)
            return
        mean = self.decay * self.signal_mean + (1 - self.decay) * batch_mean
        self.signal_var.mul_(self.decay).add_((1 - self.decay) * ((signal - mean) ** 2).mean())
        self.signal_mean.copy_(mean)

