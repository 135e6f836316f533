"""Conditional execution (problems/conditional.py): same outputs as the dense path, FLOP accounting.

A small stand-in with the MNIST gater's parts plays the model; speed is benchmarked
(benchmarks/conditional_speedup.py), not tested.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from problems.conditional import (UNION_MAX_FRACTION, GatedShape, conditional_forward, dense_forward,
                                  flops_per_example, inference_gates)

STRATEGIES = ("auto", "union", "per-example")


class StandIn(nn.Module):
    """The gated network's parts; gates are sigmoid(a) where a > threshold, else exactly 0."""

    def __init__(self, inputs=784, hidden=400, gates=2000, classes=10, threshold=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.gater_hidden = nn.Linear(inputs, hidden)
        self.gater_out = nn.Linear(hidden, gates)
        self.expert = nn.Linear(inputs, gates)
        self.output = nn.Linear(gates, classes)
        self.threshold = threshold

    def test_gates(self, logits):
        return torch.where(logits > self.threshold, torch.sigmoid(logits), torch.zeros_like(logits))


def threshold_for(net: StandIn, x: torch.Tensor, active_fraction: float) -> float:
    """The gate-logit quantile leaving ``active_fraction`` of the units on over ``x``."""
    with torch.no_grad():
        logits = net.gater_out(torch.tanh(net.gater_hidden(x)))
    return torch.quantile(logits.double().flatten(), 1 - active_fraction).item()


def inputs(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 784, generator=torch.Generator().manual_seed(seed))


CASES = [pytest.param(fraction, batch, strategy, id=f"{label}-batch{batch}-{strategy}")
         for label, fraction in (("none-active", 0.0), ("10pct-active", 0.1), ("all-active", 1.0))
         for batch in (1, 8, 64) for strategy in STRATEGIES]


@pytest.mark.parametrize("fraction, batch, strategy", CASES)
def test_conditional_equals_dense(fraction, batch, strategy):
    net = StandIn(hidden=100, gates=500)
    x = inputs(batch)
    net.threshold = {0.0: math.inf, 1.0: -math.inf}.get(fraction) or threshold_for(net, x, fraction)
    with torch.no_grad():
        gates = inference_gates(net, x)
        dense = dense_forward(net, x)
        sparse = conditional_forward(net, x, strategy)
    active = gates.ne(0).float().mean().item()
    assert active == pytest.approx(fraction, abs=0.02)
    assert sparse.shape == dense.shape == (batch, 10)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    if fraction == 0.0:
        assert torch.equal(sparse, net.output.bias.expand(batch, 10))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_examples_with_different_active_counts_in_one_batch(strategy):
    """Per-example active sets of sizes 0, 1, 5 and 2000 in the same batch."""
    net = StandIn(hidden=100, gates=2000, seed=3)
    x = inputs(4, seed=4)
    with torch.no_grad():
        logits = net.gater_out(torch.tanh(net.gater_hidden(x)))
    forced = torch.full_like(logits, -1.0)
    forced[1, 17] = forced[2, [3, 99, 500, 1500, 1999]] = forced[3] = 1.0
    net.test_gates = lambda a: torch.where(forced > 0, torch.sigmoid(a), torch.zeros_like(a))
    with torch.no_grad():
        assert inference_gates(net, x).ne(0).sum(1).tolist() == [0, 1, 5, 2000]
        torch.testing.assert_close(conditional_forward(net, x, strategy), dense_forward(net, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["auto", "union"])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_union_never_reads_rows_of_units_inactive_in_the_batch(batch, strategy):
    """Poison the expert rows / output columns of every unit no example uses: the dense path turns
    NaN (0 * NaN), the conditional one must not, and must equal dense with those units removed."""
    net = StandIn(hidden=100, gates=500)
    x = inputs(batch)
    net.threshold = threshold_for(net, x, 0.02)
    with torch.no_grad():
        unused = inference_gates(net, x).ne(0).any(0).logical_not()
        assert 0 < unused.sum() < 500
        clean = dense_forward(net, x)
        net.expert.weight[unused] = math.nan
        net.expert.bias[unused] = math.nan
        net.output.weight[:, unused] = math.nan
        assert dense_forward(net, x).isnan().all()
        torch.testing.assert_close(conditional_forward(net, x, strategy), clean, rtol=1e-5, atol=1e-5)


def test_auto_computes_the_dense_product_when_the_union_is_most_units():
    net = StandIn(hidden=100, gates=500)
    x = inputs(64)
    net.threshold = threshold_for(net, x, 0.3)
    with torch.no_grad():
        assert inference_gates(net, x).ne(0).any(0).float().mean() > UNION_MAX_FRACTION
        assert torch.equal(conditional_forward(net, x, "auto"), dense_forward(net, x))  # the same operations


def test_unknown_strategy_is_a_value_error():
    with pytest.raises(ValueError, match=r"^strategy must be one of auto, union, per-example, got 'sparse'$"):
        conditional_forward(StandIn(gates=20), inputs(1), "sparse")


# -- FLOP accounting -------------------------------------------------------------------------------
def test_flops_for_the_papers_shape_by_hand():
    count = flops_per_example(GatedShape(784, 400, 2000, 10), active_fraction=0.1)
    assert count.gater == 784 * 400 + 400 * 2000 == 1_113_600
    assert count.dense_expert == 784 * 2000 == 1_568_000
    assert count.sparse_expert == pytest.approx(156_800)
    assert (count.dense_output, count.sparse_output) == (20_000, pytest.approx(2_000))
    assert count.dense == 2_701_600
    assert count.conditional == pytest.approx(1_272_400)
    assert count.speedup_bound == pytest.approx(2_701_600 / 1_272_400) and round(count.speedup_bound, 2) == 2.12


def test_flops_where_the_saving_is_larger_and_from_a_network():
    count = flops_per_example(StandIn(hidden=100, gates=4000, seed=5), active_fraction=0.1)
    assert count.gater == 784 * 100 + 100 * 4000 == 478_400
    assert count.dense == 478_400 + 3_136_000 + 40_000
    assert count.conditional == pytest.approx(478_400 + 313_600 + 4_000)
    assert count.speedup_bound == pytest.approx(3_654_400 / 796_000)  # about 4.6x
    assert flops_per_example(GatedShape(), 1.0).speedup_bound == 1.0


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan])
def test_active_fraction_outside_0_1_is_a_value_error(fraction):
    with pytest.raises(ValueError, match=r"^active_fraction must be in \[0, 1\]"):
        flops_per_example(GatedShape(), fraction)
