"""The problem contract: a point where an estimator's gradient is measured, and the truth there.

A problem declares ``dim`` (gradient coordinates), gives its reference gradient (exact where one
exists) and produces per-sample gradient estimates for an estimator, vectorised over the sample
axis. Problems are ``nn.Module``s so ``.to(device, dtype)`` moves their buffers.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, ClassVar

import torch

from estimators.base import all_configurations

MAX_ENUMERATION_UNITS = 20
LossObserver = Callable[[Callable[[torch.Tensor], torch.Tensor]], Callable[[torch.Tensor], torch.Tensor]]


@dataclasses.dataclass
class Reference:
    """The true gradient (float64, CPU) and, when it is itself estimated, its standard error."""

    gradient: torch.Tensor
    stderr: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        return self.stderr is None


class Problem(torch.nn.Module):
    """Base class for every problem family."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def units(self) -> int:
        """Stochastic units per estimate (sizes chunks and exact enumeration)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype the problem computes in (the first floating buffer's; float32 if none)."""
        return next((b.dtype for b in self.buffers() if b.is_floating_point()), torch.float32)

    def reference(self) -> Reference:
        raise NotImplementedError

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        """``n`` independent gradient estimates, shape (n, dim)."""
        raise NotImplementedError


class BernoulliProblem(Problem):
    """E_{h ~ Bernoulli(sigm(phi))}[L(h)] at logits phi: subclasses set ``logits`` and ``loss``.

    ``loss(h)`` takes h of shape (..., units) and returns shape (...), in h's dtype and device.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def dim(self) -> int:
        return self.logits.shape[-1]

    @property
    def units(self) -> int:
        return self.logits.shape[-1]

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def exact_gradient(self) -> torch.Tensor:
        """dE[L]/dphi in float64; closed form where the family has one, else enumeration."""
        return self.enumerate_gradient()

    def _enumerated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(configurations, probabilities sigm(phi), P(configuration), L(configuration)) in float64."""
        if self.units > MAX_ENUMERATION_UNITS:
            raise ValueError(f"{self.name}: {self.units} units are too many to enumerate "
                             f"(at most {MAX_ENUMERATION_UNITS})")
        problem = copy.deepcopy(self).to("cpu", torch.float64)
        configs = all_configurations(self.units, torch.float64)
        probs = torch.sigmoid(problem.logits)
        weight = torch.exp((configs * torch.log(probs) + (1 - configs) * torch.log1p(-probs)).sum(-1))
        return configs, probs, weight, problem.loss(configs)

    def enumerate_gradient(self) -> torch.Tensor:
        """dE[L]/dphi_i = sum_h P(h) L(h) (h_i - sigm(phi_i)), summed over all 2^units configurations."""
        configs, probs, weight, values = self._enumerated()
        return ((weight * values).unsqueeze(-1) * (configs - probs)).sum(0)

    def expected_loss(self) -> float:
        _, _, weight, values = self._enumerated()
        return float((weight * values).sum())

    def reference(self) -> Reference:
        return Reference(self.exact_gradient().detach().to("cpu", torch.float64))

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        logits = self.logits.detach().expand(n, self.units).clone().requires_grad_(True)
        loss_fn = self.loss if observe is None else observe(self.loss)
        surrogate = estimator(logits, loss_fn)
        (grad,) = torch.autograd.grad(surrogate.sum(), logits)
        return grad
