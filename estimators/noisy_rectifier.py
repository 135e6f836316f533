"""Noisy rectifier (paper sec. 2.1): h = max(0, a + z) with zero-mean noise z, back-propagated
through the rectifier; with logistic noise P(h > 0) = sigm(a) and E[h] = softplus(a) (Prop. 1)."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import NoiseLaw, PathwiseEstimator, parameter_trait
from estimators.domains import Interval, OneOf

NOISES = ("gaussian", "logistic")
# Beyond this, std * z (|z| < 20 for every draw) is no longer finite in float32 sums of logits.
MAX_STD = 1e30


@register_estimator("noisy-rectifier", "Noisy rectifier h = max(0, a + z), Gaussian or logistic z (sec. 2.1)")
class NoisyRectifier(PathwiseEstimator):
    """``std`` is the Gaussian std, or the logistic scale; ``target_rate`` > 0 turns on the
    sec. 2.1 firing-rate control: a per-unit bias shift moves each unit's moving-average rate of
    h > 0 towards the target. In eval mode the noise is dropped (deterministic test time)."""

    family = "non-binary"
    binary_forward = False
    randomness = "continuous"
    activation = "rectifier"

    domains = {"std": Interval(0, MAX_STD), "noise": OneOf(*NOISES),
               "target_rate": Interval(0, 1, closed="left", description="in [0, 1) (0 turns the control off)"),
               "rate_decay": Interval(0, 1, closed="left"), "bias_step": Interval()}

    def __init__(self, std: float = 1.0, noise: str = "gaussian", target_rate: float = 0.0,
                 rate_decay: float = 0.99, bias_step: float = 0.1):
        super().__init__()
        self.std = std
        self.noise = noise
        self.target_rate = target_rate
        self.rate_decay = rate_decay
        self.bias_step = bias_step
        self.register_buffer("firing_rate", torch.zeros(0))
        self.register_buffer("bias_shift", torch.zeros(0))

    @parameter_trait(default=False)
    def stateful(self) -> bool:
        """The firing-rate control keeps a moving-average rate and a bias shift per unit."""
        return self.target_rate > 0

    def noise_laws(self, logits, categorical=False):
        """z per unit (Gaussian or logistic, in training); h = max(0, a + std z) kinks at z = -a / std."""
        if not (self.training and self.std > 0):
            return ()
        shifted = logits + self.bias_shift if self.stateful and self.bias_shift.numel() == logits.shape[-1] else logits
        return (NoiseLaw("normal" if self.noise == "gaussian" else "logistic", breaks=(-shifted / self.std)[..., None], grows=True),)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        units = logits.shape[-1]
        if self.stateful and self.bias_shift.numel() != units:
            self.bias_shift = torch.zeros(units, dtype=logits.dtype, device=logits.device)
            self.firing_rate = torch.full((units,), self.target_rate, dtype=logits.dtype, device=logits.device)
        shifted = logits + self.bias_shift if self.stateful else logits
        if self.training and self.std > 0:
            draw = self.rng.normal if self.noise == "gaussian" else self.rng.logistic
            shifted = shifted + self.std * draw(logits.shape, logits)
        h = torch.relu(shifted)
        if self.stateful and self.update_state:
            with torch.no_grad():
                rate = (h > 0).to(logits.dtype).reshape(-1, units).mean(0)
                self.firing_rate.mul_(self.rate_decay).add_((1 - self.rate_decay) * rate)
                self.bias_shift.add_(self.bias_step * (self.target_rate - self.firing_rate))
        return h
