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


LEAKY_SLOPE = 0.3  # Keras LeakyReLU(alpha=0.3), DisARM's control network


class LazyMLP(torch.nn.Module):
    """x (..., units) -> w2' act(W1 x + b1) + b2, shape (...): one hidden layer of ``hidden`` units.

    Parameters exist from construction (so an optimiser or a trait check sees them) but W1 has no
    input columns until the first call, which sizes it to ``units`` in place (the same Parameter
    objects, so an optimiser built before then still holds them). ``form`` 'zero-output' (the
    default): act = tanh, W1, b1 drawn from ``init_seed`` uniform in +-1/sqrt(units) (nn.Linear's
    range), the output layer 0, so the network is exactly 0 until trained. 'keras': DisARM's control
    network, act = LeakyReLU(0.3), both weight matrices Glorot-uniform (Keras Dense's default,
    +-sqrt(6 / (fan_in + fan_out))) from ``init_seed``, biases 0. A call with a different width
    re-sizes it (a layer copy of a stacked model takes its own layer's width). Runs in its
    parameters' dtype."""

    FORMS = ("zero-output", "keras")

    def __init__(self, hidden: int, init_seed: int = 0, form: str = "zero-output"):
        super().__init__()
        if form not in self.FORMS:
            raise ValueError(f"form must be one of {', '.join(self.FORMS)}, got {form!r}")
        self.hidden, self.init_seed, self.form = hidden, init_seed, form
        self.weight1 = torch.nn.Parameter(torch.zeros(hidden, 0))
        self.bias1 = torch.nn.Parameter(torch.zeros(hidden))
        self.weight2 = torch.nn.Parameter(torch.zeros(1, hidden))
        self.bias2 = torch.nn.Parameter(torch.zeros(1))

    @property
    def units(self) -> int:
        return self.weight1.shape[1]

    def materialise(self, units: int) -> None:
        generator = torch.Generator().manual_seed(self.init_seed)

        def uniform(shape, bound):
            return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound

        like = self.weight1
        if self.form == "keras":
            w1 = uniform((self.hidden, units), math.sqrt(6 / (units + self.hidden)))
            b1 = torch.zeros(self.hidden, dtype=torch.float64)
            w2 = uniform((1, self.hidden), math.sqrt(6 / (self.hidden + 1)))
        else:
            w1 = uniform((self.hidden, units), 1 / math.sqrt(units))
            b1 = uniform(self.hidden, 1 / math.sqrt(units))
            w2 = torch.zeros(1, self.hidden, dtype=torch.float64)
        with torch.no_grad():
            self.weight1.data = w1.to(like.dtype).to(like.device)
            self.bias1.data = b1.to(like.dtype).to(like.device)
            self.weight2.copy_(w2.to(like.dtype))
            self.bias2.zero_()
        for p in self.parameters():
            p.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.units != x.shape[-1]:
            self.materialise(x.shape[-1])
        pre = F.linear(x.to(self.weight1.dtype), self.weight1, self.bias1)
        hidden = F.leaky_relu(pre, LEAKY_SLOPE) if self.form == "keras" else torch.tanh(pre)
        return F.linear(hidden, self.weight2, self.bias2).squeeze(-1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "weight1")
        if stored is not None and stored.shape[1] != self.units:
            self.materialise(stored.shape[1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
