"""What estimators with their own parameters share (NVIL's baseline, REBAR/RELAX control variates):
a small network sized on first use, and the contract's way of training them (see ``Estimator``:
add the gradient of the estimator's own objective into its parameters' ``.grad``)."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F


def add_objective_gradient(objective: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> None:
    """Accumulate d objective / d p into ``p.grad`` for the given parameters only.

    ``torch.autograd.grad`` (not ``backward``) so nothing else reachable from the objective (the
    logits, parameters inside the loss) receives a gradient."""
    params = [p for p in parameters if p.requires_grad]
    if not params or not objective.requires_grad:
        return
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g.detach() if p.grad is None else p.grad + g.detach()


class LazyMLP(torch.nn.Module):
    """x (..., units) -> w2' tanh(W1 x + b1) + b2, shape (...): one hidden layer of ``hidden`` units.

    Parameters exist from construction (so an optimiser or a trait check sees them) but W1 has no
    input columns until the first call, which sizes it to ``units`` in place (the same Parameter
    objects, so an optimiser built before then still holds them). W1, b1 are drawn from
    ``init_seed`` (uniform in +-1/sqrt(units), as nn.Linear); the output layer starts at zero, so
    the network is exactly 0 until trained. A call with a different width re-sizes it (a layer
    copy of a stacked model takes its own layer's width). Runs in its parameters' dtype."""

    def __init__(self, hidden: int, init_seed: int = 0):
        super().__init__()
        self.hidden, self.init_seed = hidden, init_seed
        self.weight1 = torch.nn.Parameter(torch.zeros(hidden, 0))
        self.bias1 = torch.nn.Parameter(torch.zeros(hidden))
        self.weight2 = torch.nn.Parameter(torch.zeros(1, hidden))
        self.bias2 = torch.nn.Parameter(torch.zeros(1))

    @property
    def units(self) -> int:
        return self.weight1.shape[1]

    def materialise(self, units: int) -> None:
        generator = torch.Generator().manual_seed(self.init_seed)
        bound = 1 / math.sqrt(units)
        w1 = (torch.rand(self.hidden, units, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        b1 = (torch.rand(self.hidden, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        like = self.weight1
        with torch.no_grad():
            self.weight1.data = w1.to(like.dtype).to(like.device)
            self.bias1.data = b1.to(like.dtype).to(like.device)
            self.weight2.zero_()
            self.bias2.zero_()
        for p in self.parameters():
            p.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.units != x.shape[-1]:
            self.materialise(x.shape[-1])
        hidden = torch.tanh(F.linear(x.to(self.weight1.dtype), self.weight1, self.bias1))
        return F.linear(hidden, self.weight2, self.bias2).squeeze(-1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "weight1")
        if stored is not None and stored.shape[1] != self.units:
            self.materialise(stored.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
