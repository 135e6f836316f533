"""Straight-through with slope annealing (Chung, Ahn & Bengio 2016, "Hierarchical multiscale
recurrent neural networks", the slope annealing trick): a sigmoid whose slope grows during training."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import PathwiseEstimator
from estimators.domains import Interval
from estimators.gumbel import compute_dtype, straight_through


@register_estimator("slope-annealed-st", "Straight-through with slope annealing (Chung et al. 2016): "
                                         "h = 1[u < sigm(s a)], gradient s sigm'(s a), s grows per step")
class SlopeAnnealedStraightThrough(PathwiseEstimator):
    """h = 1[u < sigm(s a)] forward, dL/da := dL/dh s sigm'(s a) backward, with the slope
    s_t = min(max_slope, slope + growth t) after t training steps (Chung et al. 2016 grow it linearly,
    +0.04 per epoch up to 5; here t counts calls made while ``update_state`` is True, one per
    training step, default +0.001 per step up to 5, and a frozen estimator keeps its slope, so at
    fixed parameters it is a fixed estimator; growth = 0 pins the slope). The slope is a schedule
    (``schedule`` trait): the harness's warm-up holds it, so a gradient run measures the estimator at
    ``slope``, the state its parameters declare (``slope=3`` measures slope 3).

    The unit it samples is Bernoulli(sigm(s a)): at s = 1 this is straight-through-sigmoid exactly;
    for s > 1 the estimator measures a sharper unit than Bernoulli(sigm(a)), which is part of its
    bias. Its only randomness is the Bernoulli sample (exact moments by enumeration).
    """

    family = "straight-through"
    unbiased = False
    stateful = True
    schedule = True

    domains = {"slope": Interval(0, None, closed="neither"), "growth": Interval(0, None),
               "max_slope": Interval(0, None, closed="neither")}

    def __init__(self, slope: float = 1.0, growth: float = 0.001, max_slope: float = 5.0):
        super().__init__()
        if not max_slope >= slope:  # a relation between two parameters, beside their declared domains
            raise ValueError(f"max_slope must be finite and >= slope ({slope}), got {max_slope}")
        self.slope, self.growth, self.max_slope = float(slope), float(growth), float(max_slope)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def current_slope(self) -> float:
        return min(self.max_slope, self.slope + self.growth * int(self.steps))

    def schedule_state(self) -> str:
        return (f"slope {self.current_slope:g} (after {int(self.steps)} steps; training adds {self.growth:g} per "
                f"step up to {self.max_slope:g})")

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        a = logits.to(compute_dtype(logits.dtype))
        slope = self.current_slope
        scaled = slope * a.detach()
        hard = self.rng.bernoulli(torch.sigmoid(scaled))
        if self.advances_schedule:
            self.steps += 1
        derivative = slope * torch.sigmoid(scaled) * torch.sigmoid(-scaled)  # d sigm(s a) / da
        return straight_through(hard, a, derivative).to(logits.dtype)
