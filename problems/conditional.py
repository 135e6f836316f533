"""Conditional execution of the gated layer of Bengio, Léonard & Courville (2013), sec. 5.

The network (appendix A): gater ``h = tanh(W1 x + b1)``, gate logits ``a = W2 h + b2``, test-time
gates ``g = net.test_gates(a)`` (deterministic, exactly zero for inactive units), expert
``e = We x + be`` (no non-linearity), output logits ``y = Wo (g * e) + bo``. The paper's point is
that at inference only the expert units with ``g != 0`` (rows of ``We``) and the matching columns
of ``Wo`` need computing; :func:`conditional_forward` does that and gives :func:`dense_forward`'s
outputs to float tolerance.

Per-example active sets differ, so a batch needs a strategy:

* ``"union"``: one dense product over the union of the batch's active units. The gate of a unit
  inactive for one example but active for another is exactly zero there, so the result is the
  same up to float rounding. At batch 1 this is exactly the per-example computation; its saving
  shrinks as the union grows (independent 10% sets: 57% of the units at batch 8, 99.9% at 64),
  and gathering the union's weight rows costs more than it saves once it is about half the units.
* ``"per-example"``: gather every example's own expert rows (padded to the batch's largest active
  count with inactive units, whose gate is zero) and multiply batched. Fewest multiply-adds, but
  copying B x active x inputs weights is memory traffic the dense product does not pay.
* ``"auto"`` (default): the union when it is at most ``UNION_MAX_FRACTION`` of the units, else the
  dense expert product (nothing left to save).

Measured on CPU (``benchmarks/conditional_speedup.py``, 1 thread, a 2-core machine shared with
other jobs, so +-15% or worse): at batch 1 the union ran 1.6-2.3x faster than dense at 784-400-2000
(FLOP bound 2.13x) and 3.4-3.8x at 784-100-4000 (bound 4.5x); at batch 8 (union 56% of the units)
union and dense took about the same time; at batch 64 (union 99.7%) the union gather was 10-25%
slower than dense; the per-example gather ran at 0.3-0.4x dense speed at batch 8, 0.1x at 64.

:func:`flops_per_example` does the accounting of PAPER.md's note on compute: at 784-400-2000 the
gater alone costs 1.1 M multiply-adds, so 10% active gates bound the saving at about 2.1x.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

STRATEGIES = ("auto", "union", "per-example")
UNION_MAX_FRACTION = 0.5  # "auto": above this share of the units, the gather costs more than it saves


class GatedNetwork(Protocol):
    """What the functions here need from a model (the MNIST gater has exactly these parts)."""

    gater_hidden: nn.Linear  # inputs -> hidden, tanh after it
    gater_out: nn.Linear  # hidden -> gates: the gate logits
    expert: nn.Linear  # inputs -> gates, no non-linearity
    output: nn.Linear  # gates -> classes

    def test_gates(self, logits: torch.Tensor) -> torch.Tensor:
        """Deterministic test-time gate values, exactly zero for inactive units."""


def inference_gates(net: GatedNetwork, x: torch.Tensor) -> torch.Tensor:
    """Gate values (B, gates) at test time: the gater is always computed in full."""
    return net.test_gates(net.gater_out(torch.tanh(net.gater_hidden(x))))


def dense_forward(net: GatedNetwork, x: torch.Tensor) -> torch.Tensor:
    """Output logits (B, classes) computing every expert unit: the reference path."""
    gates = inference_gates(net, x)
    return net.output(gates * net.expert(x))


def conditional_forward(net: GatedNetwork, x: torch.Tensor, strategy: str = "auto") -> torch.Tensor:
    """Output logits (B, classes) computing only active expert units (see the module docstring)."""
    gates = inference_gates(net, x)
    if strategy in ("auto", "union"):
        active = gates.any(0).nonzero().squeeze(1)  # any() of floats: non-zero
        if strategy == "auto" and len(active) > UNION_MAX_FRACTION * gates.shape[1]:
            return net.output(gates * net.expert(x))
        return _union_forward(net, x, gates, active)
    if strategy == "per-example":
        return _per_example_forward(net, x, gates)
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def _union_forward(net: GatedNetwork, x: torch.Tensor, gates: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    expert = F.linear(x, net.expert.weight.index_select(0, active), _select(net.expert.bias, active))
    return F.linear(gates.index_select(1, active) * expert, net.output.weight.index_select(1, active),
                    net.output.bias)


def _per_example_forward(net: GatedNetwork, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    active = gates.ne(0)
    width = int(active.sum(1).max()) if len(x) else 0
    # The `width` largest of each 0/1 row: all its active units, then inactive ones (gate 0) as padding.
    units = active.to(torch.uint8).topk(width, dim=1, sorted=False).indices  # (B, width)
    expert = torch.bmm(net.expert.weight[units], x.unsqueeze(-1)).squeeze(-1)
    if net.expert.bias is not None:
        expert = expert + net.expert.bias[units]
    out = torch.bmm((gates.gather(1, units) * expert).unsqueeze(1), net.output.weight.t()[units]).squeeze(1)
    return out if net.output.bias is None else out + net.output.bias


def _select(bias: torch.Tensor | None, units: torch.Tensor) -> torch.Tensor | None:
    return None if bias is None else bias.index_select(0, units)


# -- accounting ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GatedShape:
    """Layer widths of the gated network; the defaults are the paper's 784-400-2000-10."""

    inputs: int = 784
    hidden: int = 400
    gates: int = 2000
    classes: int = 10

    @classmethod
    def of(cls, net: GatedNetwork) -> GatedShape:
        return cls(inputs=net.expert.in_features, hidden=net.gater_hidden.out_features,
                   gates=net.expert.out_features, classes=net.output.out_features)


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Multiply-adds per example of the affine layers. Biases, tanh, the gate non-linearity and the
    gate product are O(hidden + gates), about 0.2% at the paper's shape, and not counted."""

    gater: int
    dense_expert: int
    sparse_expert: float
    dense_output: int
    sparse_output: float

    @property
    def dense(self) -> int:
        return self.gater + self.dense_expert + self.dense_output

    @property
    def conditional(self) -> float:
        return self.gater + self.sparse_expert + self.sparse_output

    @property
    def speedup_bound(self) -> float:
        """The FLOP-bound speedup of conditional over dense execution."""
        return self.dense / self.conditional


def flops_per_example(net_or_shape: GatedNetwork | GatedShape, active_fraction: float) -> FlopCount:
    """Multiply-adds per example with ``active_fraction`` of the gates non-zero (expected values)."""
    if not 0.0 <= active_fraction <= 1.0:
        raise ValueError(f"active_fraction must be in [0, 1], got {active_fraction!r}")
    shape = net_or_shape if isinstance(net_or_shape, GatedShape) else GatedShape.of(net_or_shape)
    expert = shape.inputs * shape.gates
    output = shape.gates * shape.classes
    return FlopCount(gater=shape.inputs * shape.hidden + shape.hidden * shape.gates,
                     dense_expert=expert, sparse_expert=active_fraction * expert,
                     dense_output=output, sparse_output=active_fraction * output)
