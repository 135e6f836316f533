"""Black-box perturbation references (paper sec. 1.2): SPSA (Spall 1992) and central finite
differences, both with common random numbers u for h = 1[u < sigm(a)] on either side. They need
only loss values; their bias is O(c^2) from the perturbation size."""
from __future__ import annotations

import torch

from estimators import register_estimator
from estimators.base import Estimator, LossFn, NoiseLaw, attach_gradient, parameter_trait, reduce_to_batch
from estimators.domains import STRICTLY_POSITIVE


@register_estimator("spsa", "SPSA: (L(a + c D) - L(a - c D)) / (2 c D_i), D Rademacher; 2 evaluations")
class SPSA(Estimator):
    """Simultaneous perturbation (Spall 1992) of all logits at once: O(1) evaluations per estimate.
    The surrogate's value is the mean of the two perturbed losses."""

    family = "perturbation"
    needs_loss_backprop = False
    randomness = "continuous"
    loss_evals = 2
    domains = {"c": STRICTLY_POSITIVE}

    def __init__(self, c: float = 0.1):
        super().__init__()
        self.c = c

    @parameter_trait(default=5.0)
    def loss_rounding(self) -> float:
        """A difference of two loss values divided by 2 c."""
        return 1 / (2 * self.c)

    def noise_laws(self, logits, categorical=False):
        """u ~ U[0, 1] per unit (then the discrete direction D); h changes where u crosses sigm(a -+ c)."""
        return (NoiseLaw("uniform", breaks=torch.stack([torch.sigmoid(logits - self.c),
                                                        torch.sigmoid(logits + self.c)], -1)),)

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        base = logits.detach()
        u = self.rng.uniform(base.shape, base)
        direction = self.rng.rademacher(base.shape, base)
        sides = torch.stack([base + self.c * direction, base - self.c * direction])
        loss = loss_fn((u < torch.sigmoid(sides)).to(base.dtype))
        difference = (loss[0] - loss[1]).detach() / (2 * self.c)
        grad = difference.unsqueeze(-1) * direction  # 1 / D_i == D_i for D_i in {-1, 1}
        return attach_gradient(reduce_to_batch(loss, logits.ndim - 1), logits, grad)


@register_estimator("finite-difference",
                    "Central finite differences per unit with common random numbers; 2 x units evaluations")
class FiniteDifference(Estimator):
    """(L(a + eps e_i) - L(a - eps e_i)) / (2 eps) for each unit i: O(N) evaluations of an O(N)
    loss, the O(N^2) reference of sec. 1.2. The surrogate's value is the mean of all evaluations."""

    family = "perturbation"
    needs_loss_backprop = False
    randomness = "continuous"
    loss_evals = "2 * units"
    domains = {"eps": STRICTLY_POSITIVE}

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = eps

    @parameter_trait(default=5.0)
    def loss_rounding(self) -> float:
        """A difference of two loss values divided by 2 eps."""
        return 1 / (2 * self.eps)

    def loss_evaluations(self, units: int) -> int:
        return 2 * units

    def noise_laws(self, logits, categorical=False):
        """u ~ U[0, 1] per unit; h changes where u crosses sigm(a) or sigm(a -+ eps)."""
        return (NoiseLaw("uniform", breaks=torch.sigmoid(torch.stack([logits - self.eps, logits,
                                                                      logits + self.eps], -1))),)

    def forward(self, logits: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        base = logits.detach()
        units = base.shape[-1]
        u = self.rng.uniform(base.shape, base)
        eye = torch.eye(units, dtype=base.dtype, device=base.device)
        steps = torch.cat([eye, -eye]).reshape(2 * units, *([1] * (base.ndim - 1)), units)
        loss = loss_fn((u < torch.sigmoid(base + self.eps * steps)).to(base.dtype))
        difference = (loss[:units] - loss[units:]).detach() / (2 * self.eps)
        grad = difference.movedim(0, -1)
        return attach_gradient(reduce_to_batch(loss, logits.ndim - 1), logits, grad)
