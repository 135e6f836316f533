"""STS, stochastic times smooth (paper sec. 2.2, eq. 2): h = b sqrt(p), b ~ Bernoulli(sqrt(p)),
p = sigm(a), back-propagating through the smooth factor sqrt(p) only."""
from __future__ import annotations

import math

import torch

from estimators import register_estimator
from estimators.base import NoiseLaw, PathwiseEstimator, parameter_trait
from estimators.domains import Either, Interval, OneOf


@register_estimator("sts", "Stochastic times smooth: h = b sqrt(sigm(a)), b ~ Bernoulli(sqrt(sigm(a))) (eq. 2)")
class StochasticTimesSmooth(PathwiseEstimator):
    """E[h] = sigm(a) (Proposition 2); optional Beta noise at the sigmoid input (appendix A.2).

    With ``beta_noise`` = beta > 1, noise n ~ Beta(alpha, beta) has its mode at ``target``
    (alpha = (1 + target (beta - 2)) / (1 - target)) and is scaled by logit(target) / target so
    that sigm(scaled mode) = target; it is added to a in training and its mean replaces it in eval.
    """

    family = "non-binary"
    binary_forward = False

    domains = {"beta_noise": Either(OneOf(0.0), Interval(1, None, closed="neither", description="greater than 1")),
               "target": Interval(0, 0.5, closed="neither")}

    def __init__(self, beta_noise: float = 0.0, target: float = 0.1):
        super().__init__()
        self.beta_noise = beta_noise
        self.target = target

    @parameter_trait(default="bernoulli")
    def randomness(self) -> str:
        """Beta noise at the sigmoid input is continuous randomness."""
        return "continuous" if self.beta_noise else "bernoulli"

    @property
    def beta_alpha(self) -> float:
        return (1 + self.target * (self.beta_noise - 2)) / (1 - self.target)

    @property
    def beta_scale(self) -> float:
        return math.log(self.target / (1 - self.target)) / self.target

    def noise_laws(self, logits, categorical=False):
        """n ~ Beta(alpha, beta_noise) per unit in training (then the Bernoulli draw, enumerated);
        h and its slope are smooth in n."""
        return (NoiseLaw("beta", shape=(self.beta_alpha, self.beta_noise)),) if self.beta_noise and self.training else ()

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.beta_noise:
            if self.training:
                noise = self.rng.beta(self.beta_alpha, self.beta_noise, logits.shape, logits)
            else:
                noise = torch.full_like(logits, self.beta_alpha / (self.beta_alpha + self.beta_noise))
            logits = logits + self.beta_scale * noise
        smooth = torch.sigmoid(logits).sqrt()
        return self.rng.bernoulli(smooth.detach()) * smooth
