"""Categorical forms of the estimators (``categorical=True``): straight-through, ST-Gumbel,
Gumbel-softmax, Gumbel-Rao, gapped ST, ReinMax, and the categorical families ARSM and IndeCateR.

(a) exact values on a tiny case, by replay (discrete randomness) or fixed noise, against hand
computations; (b) K = 2 consistency with the binary forms; (c) unbiasedness of ARSM and IndeCateR:
z-tests and, for IndeCateR, the exact mean by replay; (d) Gumbel-Rao's conditional Gumbels and
its derivative (not taken through them); (e) the shape contract and the traits.

The test loss is written here (Sum_i <h_i, c_i> squared plus a sine), its exact gradient by
enumerating all K^units configurations. Statistical tests run at fixed seeds; each states its
false-alarm rate at a random seed.
"""
from __future__ import annotations

import itertools
import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from estimators import build_estimator
from estimators.base import Noise, NotEnumerable, ReplayNoise
from estimators.families import family_of
from estimators.gumbel import conditional_gumbel

F64 = torch.float64
CATEGORICAL = ["straight-through", "st-gumbel", "gumbel-softmax", "gumbel-rao", "gapped-st", "reinmax",
               "arsm", "indecater"]
UNBIASED = ["arsm", "indecater"]

pytestmark = pytest.mark.usefixtures("one_thread")


# =============================================================================================
# helpers
# =============================================================================================

def estimate(estimator, logits, loss_fn, noise, categorical=True):
    """(surrogate value, gradient w.r.t. logits) of one call drawing from ``noise``."""
    logits = logits.detach().clone().requires_grad_(True)
    with estimator.drawing_from(noise):
        surrogate = estimator(logits, loss_fn, categorical=True) if categorical else estimator(logits, loss_fn)
    (grad,) = torch.autograd.grad(surrogate.sum(), logits)
    return surrogate.detach(), grad


def seeded(seed=0):
    return Noise(torch.Generator().manual_seed(seed))


class FixedNoise(Noise):
    """Hands out given draws: ``gumbel`` (expanded to the requested shape), ``logistic``, and
    ``categorical`` as one-hot of the given indices."""

    def __init__(self, gumbel=None, logistic=None, index=None):
        super().__init__(None)
        self.g, self.l, self.index = gumbel, logistic, index

    def gumbel(self, shape, like):
        return self.g.to(like.dtype).expand(tuple(shape)).clone()

    def logistic(self, shape, like):
        return self.l.to(like.dtype).expand(tuple(shape)).clone()

    def categorical(self, probs, shape=None):
        shape = probs.shape if shape is None else torch.Size(shape)
        return F.one_hot(self.index.expand(shape[:-1]), shape[-1]).to(probs.dtype)


def jacobian_times(p, v):
    """J(p) v = p v - p <p, v>, the softmax Jacobian at probabilities p times v."""
    return p * v - p * (p * v).sum(-1, keepdim=True)


class Toy:
    """A nonlinear loss of categorical units with its exact gradient by enumeration."""

    def __init__(self, units=2, K=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.units, self.K = units, K
        self.logits = torch.randn(units, K, generator=g, dtype=F64)
        self.c = torch.randn(units, K, generator=g, dtype=F64)

    def loss(self, h):
        s = (h * self.c).sum((-2, -1))
        return s**2 + torch.sin(3 * s)

    def configurations(self):
        index = torch.tensor(list(itertools.product(range(self.K), repeat=self.units)))
        return index, F.one_hot(index, self.K).to(F64)

    def exact_gradient(self):
        _, h = self.configurations()
        a = self.logits.clone().requires_grad_(True)
        weight = (h * torch.log_softmax(a, -1)).sum((-2, -1)).exp()
        (grad,) = torch.autograd.grad((weight * self.loss(h)).sum(), a)
        return grad


def z_test_pvalue(samples, truth):
    """Smallest two-sided p-value of per-coordinate z-tests of the mean, Bonferroni-corrected."""
    n = samples.shape[0]
    mean = samples.mean(0).flatten()
    stderr = (samples.std(0) / math.sqrt(n)).flatten()
    live = stderr > 0
    assert torch.equal(mean[~live], truth.flatten()[~live])
    z = ((mean - truth.flatten())[live] / stderr[live]).numpy()
    return min(1.0, float(2 * scipy.stats.norm.sf(abs(z)).min()) * int(live.sum()))


# =============================================================================================
# (a) exact values on a tiny case: one unit, K = 3, p = (1/4, 1/2, 1/4), L(h) = <h, c>^2, c = (0, 1, 3)
# dL/dh = 2 c_D c;  J(p) c = p c - p <p, c> = (0, 1/2, 3/4) - 5/4 p = (-5/16, -1/8, 7/16)
# exact gradient p_j (c_j^2 - <p, c^2>) = p_j (c_j^2 - 11/4) = (-11/16, -7/8, 25/16)
# =============================================================================================

TINY_LOGITS = torch.log(torch.tensor([[1.0, 2.0, 1.0]], dtype=F64))
TINY_C = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
TINY_EXACT = torch.tensor([-11 / 16, -7 / 8, 25 / 16], dtype=F64)


def tiny_loss(h):
    return (h * TINY_C).sum((-2, -1)) ** 2


def replay_tiny(name, **params):
    """Per category D = 0, 1, 2 replayed: (values (3,), gradients (3, K), P(D) (3,))."""
    noise = ReplayNoise(torch.tensor([[0], [1], [2]]))
    value, grad = estimate(build_estimator(name, params), TINY_LOGITS.expand(3, 1, 3), tiny_loss, noise)
    return value, grad[:, 0], noise.log_prob.exp()


def test_straight_through_by_replay():
    # 2 c_D J(p) c: D = 0 gives 0, D = 1 twice, D = 2 six times (-5/16, -1/8, 7/16)
    value, grad, weight = replay_tiny("straight-through")
    torch.testing.assert_close(weight, torch.tensor([0.25, 0.5, 0.25], dtype=F64))
    torch.testing.assert_close(value, torch.tensor([0.0, 1.0, 9.0], dtype=F64))
    expected = torch.tensor([[0, 0, 0], [-5 / 8, -1 / 4, 7 / 8], [-15 / 8, -3 / 4, 21 / 8]], dtype=F64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)
    # biased: its mean is 2 <p, c> J(p) c = 5/2 (-5/16, -1/8, 7/16), not the exact gradient
    torch.testing.assert_close(weight @ grad, torch.tensor([-25 / 32, -5 / 16, 35 / 32], dtype=F64))


def test_reinmax_by_replay_is_exact_on_a_quadratic_loss():
    # pi_1 = (D + p) / 2; 2 J(pi_1) g - J(p) g / 2 with g = 2 c_D c:
    # D = 1: pi_1 = (1/8, 3/4, 1/8), J(pi_1) c = (-9/64, -3/32, 15/64): 4 J(pi_1) c - J(p) c = (-1/4, -1/4, 1/2)
    # D = 2: pi_1 = (1/8, 1/4, 5/8), J(pi_1) c = (-17/64, -9/32, 35/64): 12 J(pi_1) c - 3 J(p) c = (-9/4, -3, 21/4)
    value, grad, weight = replay_tiny("reinmax")
    expected = torch.tensor([[0, 0, 0], [-1 / 4, -1 / 4, 1 / 2], [-9 / 4, -3, 21 / 4]], dtype=F64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-14)
    # the mean is the exact gradient (ReinMax is exact for quadratic losses at tau = 1)
    torch.testing.assert_close(weight @ grad, TINY_EXACT, rtol=0, atol=1e-14)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_gapped_st_by_replay(tau):
    # logits (0, log 2, 0), max log 2, gap 1: the sampled logit goes to log 2, the others to
    # min(a_j, log 2 - 1); D = 1: z = (log 2 - 1, log 2, log 2 - 1), D = 2: (log 2 - 1, log 2 - 1, log 2)
    value, grad, _ = replay_tiny("gapped-st", tau=tau, gap=1.0)
    e = math.exp(1 / tau)
    s1 = torch.tensor([1, e, 1], dtype=F64) / (e + 2)
    s2 = torch.tensor([1, 1, e], dtype=F64) / (e + 2)
    expected = torch.stack([torch.zeros(3, dtype=F64), 2 * jacobian_times(s1, TINY_C) / tau,
                            6 * jacobian_times(s2, TINY_C) / tau])
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-14)


def test_gapped_st_without_gap_moves_only_the_sampled_logit():
    # gap 0: D = 0 lifts logit 0 to log 2 (a tie with class 1), nothing else moves
    noise = ReplayNoise(torch.tensor([[0]]))
    loss = lambda h: (h * torch.tensor([1.0, 2.0, 5.0], dtype=F64)).sum((-2, -1))  # noqa: E731
    _, grad = estimate(build_estimator("gapped-st", {"gap": 0.0}), TINY_LOGITS[None], loss, noise)
    s = torch.tensor([2, 2, 1], dtype=F64) / 5
    torch.testing.assert_close(grad[0, 0], jacobian_times(s, torch.tensor([1.0, 2.0, 5.0], dtype=F64)))


def test_st_gumbel_and_gumbel_softmax_by_fixed_noise():
    # G = (0, -log 2, log 3): a + G = (0, 0, log 3), argmax 2; softmax at tau = 1: (1, 1, 3) / 5
    G = torch.tensor([[0.0, -math.log(2), math.log(3)]], dtype=F64)
    s = torch.tensor([1.0, 1.0, 3.0], dtype=F64) / 5
    value, grad = estimate(build_estimator("st-gumbel"), TINY_LOGITS, tiny_loss, FixedNoise(gumbel=G))
    assert value.item() == 9.0
    torch.testing.assert_close(grad[0], jacobian_times(s, 6 * TINY_C), rtol=0, atol=1e-15)
    # relaxed forward: <s, c> = 2, L(s) = 4, dL/dh = 2 <s, c> c = 4 c; at tau = 1/2 s = (1, 1, 9) / 11
    value, grad = estimate(build_estimator("gumbel-softmax"), TINY_LOGITS, tiny_loss, FixedNoise(gumbel=G))
    torch.testing.assert_close(value, torch.tensor(4.0, dtype=F64))
    torch.testing.assert_close(grad[0], jacobian_times(s, 4 * TINY_C), rtol=0, atol=1e-15)
    half = torch.tensor([1.0, 1.0, 9.0], dtype=F64) / 11
    value, grad = estimate(build_estimator("gumbel-softmax", {"tau": 0.5}), TINY_LOGITS, tiny_loss,
                           FixedNoise(gumbel=G))
    torch.testing.assert_close(value, torch.tensor((28 / 11) ** 2, dtype=F64))
    torch.testing.assert_close(grad[0], jacobian_times(half, 2 * 28 / 11 * TINY_C) / 0.5, rtol=0, atol=1e-14)


def test_arsm_by_fixed_noise():
    # pi = softmax(-G) = (1/2, 3/10, 1/5); scores log pi - a pick z = 1; the swaps 0<->1, 0<->2,
    # 1<->2 pick 2, 1, 1. With L = c_z^2: F[c][j] = L(z^{c<->j}) = [[1, 9, 1], [9, 1, 1], [1, 1, 1]],
    # F - column means = [[-8/3, 16/3, 0], [16/3, -8/3, 0], [-8/3, -8/3, 0]], weights 1/3 - pi =
    # (-1/6, 1/30, 2/15): g = (28/45, -44/45, 16/45); the value is the mean of the four losses, 3.
    G = -torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=F64))
    value, grad = estimate(build_estimator("arsm"), TINY_LOGITS, tiny_loss, FixedNoise(gumbel=G))
    torch.testing.assert_close(value, torch.tensor(3.0, dtype=F64))
    torch.testing.assert_close(grad[0], torch.tensor([28 / 45, -44 / 45, 16 / 45], dtype=F64), rtol=0, atol=1e-14)


def test_indecater_by_replay():
    # two units, K = 2: p_1 = (1/4, 3/4), p_2 = (1/2, 1/2); L = x_1 x_2 + x_1 (x_v = category index)
    # unit 1 sums L(k, x_2) = (0, 1 + x_2): g_1 = (-3/16, 3/16) if x_2 = 0, (-3/8, 3/8) if x_2 = 1;
    # unit 2 sums L(x_1, k) = x_1 (1, 2): g_2 = 0 if x_1 = 0, (-1/4, 1/4) if x_1 = 1.
    logits = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]], dtype=F64)

    def loss(h):
        x = h[..., 1]
        return x[..., 0] * x[..., 1] + x[..., 0]

    configs = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
    noise = ReplayNoise(configs)
    value, grad = estimate(build_estimator("indecater"), logits.expand(4, 2, 2), loss, noise)
    g1 = {0: [-3 / 16, 3 / 16], 1: [-3 / 8, 3 / 8]}
    g2 = {0: [0.0, 0.0], 1: [-1 / 4, 1 / 4]}
    expected = torch.tensor([[g1[int(x2)], g2[int(x1)]] for x1, x2 in configs], dtype=F64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)
    # value: mean over units of sum_k p_vk L(k, x_-v): (3/4 (1 + x_2) + x_1 3/2) / 2
    torch.testing.assert_close(value, torch.tensor([3 / 8, 9 / 8, 3 / 4, 3 / 2], dtype=F64))
    # the exact mean by replay is the exact gradient: d/da (p_11 (p_21 + 1)) etc.
    mean = (noise.log_prob.exp()[:, None, None] * grad).sum(0)
    torch.testing.assert_close(mean, torch.tensor([[-9 / 32, 9 / 32], [-3 / 16, 3 / 16]], dtype=F64))


@pytest.mark.parametrize("N", [1, 2])
def test_indecater_exact_mean_by_replay_is_the_enumerated_gradient(N):
    toy = Toy(units=2, K=3, seed=1)
    index, _ = toy.configurations()
    rows = torch.tensor(list(itertools.product(range(len(index)), repeat=N)))
    configs = index[rows].reshape(len(rows), N * toy.units)  # N samples of both units per row
    noise = ReplayNoise(configs)
    _, grad = estimate(build_estimator("indecater", {"N": N}), toy.logits.expand(len(rows), 2, 3), toy.loss, noise)
    mean = (noise.log_prob.exp()[:, None, None] * grad).sum(0)
    torch.testing.assert_close(mean, toy.exact_gradient(), rtol=1e-12, atol=1e-14)


# =============================================================================================
# (b) K = 2: logits (0, a), h_1 the bit; the categorical gradient is (-g, g), g the binary one
# =============================================================================================

def quadratic(units=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(units, units, generator=g, dtype=F64)
    b = torch.randn(units, generator=g, dtype=F64)
    return torch.randn(units, generator=g, dtype=F64), lambda x: ((x @ A) * x).sum(-1) + x @ b


@pytest.mark.parametrize("categorical_name, binary_name, params", [
    ("straight-through", "straight-through-sigmoid", {}),
    ("gapped-st", "gapped-st", {"tau": 0.7, "gap": 1.5}),
    ("reinmax", "reinmax", {"tau": 2.0}),
    ("indecater", "indecater", {}),
], ids=["straight-through~straight-through-sigmoid", "gapped-st", "reinmax", "indecater"])
def test_two_categories_match_the_binary_form_by_replay(categorical_name, binary_name, params):
    a, loss = quadratic()
    configs = torch.tensor(list(itertools.product(range(2), repeat=3)))
    two = torch.stack([torch.zeros_like(a), a], -1).expand(8, 3, 2)
    value_c, grad_c = estimate(build_estimator(categorical_name, params), two, lambda h: loss(h[..., 1]),
                               ReplayNoise(configs))
    value_b, grad_b = estimate(build_estimator(binary_name, params), a.expand(8, 3), loss,
                               ReplayNoise(configs.to(F64)), categorical=False)
    torch.testing.assert_close(value_c, value_b, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad_c[..., 1], grad_b, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad_c[..., 0], -grad_b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name, tau", [("st-gumbel", 1.0), ("st-gumbel", 0.3), ("gumbel-softmax", 1.0),
                                       ("gumbel-softmax", 0.3)])
def test_two_categories_gumbel_match_the_binary_form_with_logistic_noise(name, tau):
    # G_1 - G_0 of two standard Gumbels is standard logistic: the binary form with L = G_1 - G_0
    a, loss = quadratic()
    G = seeded(5).gumbel((3, 2), a)
    two = torch.stack([torch.zeros_like(a), a], -1)
    h_c = lambda h: h[..., 1]  # noqa: E731
    est = build_estimator(name, {"tau": tau})
    value_c, grad_c = estimate(est, two, lambda h: loss(h_c(h)), FixedNoise(gumbel=G))
    value_b, grad_b = estimate(est, a, loss, FixedNoise(logistic=G[:, 1] - G[:, 0]), categorical=False)
    torch.testing.assert_close(value_c, value_b, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grad_c[..., 1], grad_b, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad_c[..., 0], -grad_b, rtol=1e-12, atol=1e-13)


def test_binary_indecater_is_the_local_expectation_gradient():
    # g_v = sigm'(a_v) (L(x with x_v = 1) - L(x with x_v = 0)), every configuration replayed
    a, loss = quadratic()
    configs = torch.tensor(list(itertools.product(range(2), repeat=3)))
    _, grad = estimate(build_estimator("indecater"), a.expand(8, 3), loss, ReplayNoise(configs), categorical=False)
    x = configs.to(F64)
    for v in range(3):
        up, down = x.clone(), x.clone()
        up[:, v], down[:, v] = 1, 0
        slope = torch.sigmoid(a[v]) * torch.sigmoid(-a[v])
        torch.testing.assert_close(grad[:, v], slope * (loss(up) - loss(down)), rtol=0, atol=1e-14)


# =============================================================================================
# (c) unbiased: z-tests (Bonferroni over coordinates; 0.1% false alarms at a random seed)
# =============================================================================================

@pytest.mark.parametrize("name, params", [("arsm", {}), ("indecater", {}), ("indecater", {"N": 3})],
                         ids=["arsm", "indecater", "indecater(N=3)"])
@pytest.mark.parametrize("units, K", [(2, 3), (3, 4)], ids=["2x3", "3x4"])
def test_unbiased_categorical_estimators_pass_a_z_test(name, params, units, K):
    toy = Toy(units, K, seed=3)
    n = 20_000
    _, grads = estimate(build_estimator(name, params), toy.logits.expand(n, units, K), toy.loss, seeded(11))
    assert z_test_pvalue(grads, toy.exact_gradient()) > 1e-3


@pytest.mark.parametrize("name", ["arsm", "indecater"])
def test_binary_forms_of_the_categorical_families_are_unbiased(name):
    a, loss = quadratic(units=4)
    n = 20_000
    _, grads = estimate(build_estimator(name), a.expand(n, 4), loss, seeded(12), categorical=False)
    x = torch.tensor(list(itertools.product(range(2), repeat=4)), dtype=F64)
    logits = a.clone().requires_grad_(True)
    p = torch.sigmoid(logits)
    weight = (x * p + (1 - x) * (1 - p)).prod(-1)
    (truth,) = torch.autograd.grad((weight * loss(x)).sum(), logits)
    assert z_test_pvalue(grads, truth) > 1e-3


def test_biased_estimators_fail_the_z_test_on_the_toy():
    # the same z-test has power: a biased estimator of the family is rejected
    toy = Toy(2, 3, seed=3)
    _, grads = estimate(build_estimator("straight-through"), toy.logits.expand(20_000, 2, 3), toy.loss, seeded(11))
    assert z_test_pvalue(grads, toy.exact_gradient()) < 1e-6


# =============================================================================================
# (d) Gumbel-Rao: the conditional Gumbels and the partial derivative
# =============================================================================================

def test_conditional_gumbels_have_the_sample_as_argmax_and_the_gumbel_law():
    """Drawing D ~ softmax(a), then G | argmax(a + G) = D, gives unconditional i.i.d. Gumbels:
    Kolmogorov-Smirnov per category (Bonferroni over 4; 0.1% false alarms at a random seed)."""
    noise = seeded(21)
    a = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=F64)
    n = 20_000
    hard = noise.categorical(torch.softmax(a, -1), (n, 4))
    perturbed = conditional_gumbel(a, hard, noise.gumbel((n, 4), a))
    assert torch.equal(perturbed.argmax(-1), hard.argmax(-1))
    G = perturbed - a
    pvalues = [scipy.stats.kstest(G[:, k].numpy(), scipy.stats.gumbel_r.cdf).pvalue for k in range(4)]
    assert min(pvalues) * 4 > 1e-3


def test_gumbel_rao_takes_no_derivative_through_the_conditional_gumbels():
    toy = Toy(2, 3, seed=4)
    tau, K = 0.5, 6
    _, grad = estimate(build_estimator("gumbel-rao", {"tau": tau, "K": K}), toy.logits, toy.loss, seeded(7))
    # the same draws, in the same order: D, then K conditional Gumbels
    noise = seeded(7)
    hard = noise.categorical(torch.softmax(toy.logits, -1))
    g = noise.gumbel((K, 2, 3), toy.logits)
    h = hard.clone().requires_grad_(True)
    (dL_dh,) = torch.autograd.grad(toy.loss(h), h)
    perturbed = conditional_gumbel(toy.logits, hard, g)  # noise at the detached logits
    relaxed = torch.softmax(perturbed / tau, -1)
    expected = (jacobian_times(relaxed, dL_dh) / tau).mean(0)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
    # differentiating through the construction of G_k (it depends on a) gives another vector
    a = toy.logits.clone().requires_grad_(True)
    through = torch.softmax(conditional_gumbel(a, hard, g) / tau, -1).mean(0)
    (other,) = torch.autograd.grad((through * dL_dh).sum(), a)
    assert (other - grad).abs().max() > 1e-3


# =============================================================================================
# (e) the shape contract, traits and families
# =============================================================================================

@pytest.mark.parametrize("batch", [(), (5,), (2, 3)], ids=["unbatched", "batch5", "batch2x3"])
@pytest.mark.parametrize("name", CATEGORICAL)
def test_shape_contract(name, batch):
    """Output of the batch shape, finite; gradients to the logits only, each unit's summing to
    zero over its categories (softmax is shift-invariant); the loss sees one-hot h (a point of the
    simplex for the relaxed forward) of the logits' shape, plus leading evaluation axes."""
    est = build_estimator(name)
    logits = torch.randn(*batch, 4, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    c = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    seen = []

    def loss(h):
        seen.append(h.detach())
        return ((h * c).sum((-2, -1)) - 1) ** 2

    with est.drawing_from(seeded(3)):
        surrogate = est(logits, loss, categorical=True)
    assert surrogate.shape == batch and torch.isfinite(surrogate).all()
    surrogate.sum().backward()
    assert logits.grad.shape == logits.shape and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(*batch, 4), rtol=0, atol=1e-5)
    assert list(est.parameters()) == []
    for h in seen:
        assert h.shape[h.ndim - len(batch) - 2:] == (*batch, 4, 5)
        torch.testing.assert_close(h.sum(-1), torch.ones(h.shape[:-1]))
        if est.binary_forward:
            assert set(h.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name, evaluations", [
    ("straight-through", 1), ("st-gumbel", 1), ("gumbel-softmax", 1), ("gumbel-rao", 1), ("gapped-st", 1),
    ("reinmax", 1), ("arsm", 10 * 9 // 2 + 1), ("indecater", 10 * 128)])
def test_traits_and_counted_loss_evaluations(name, evaluations):
    est = build_estimator(name)
    assert est.variables == "both"
    assert est.unbiased == (name in UNBIASED)
    assert family_of(type(est)) == {"arsm": "score function", "indecater": "score function",
                                    "gumbel-softmax": "relaxation", "st-gumbel": "relaxation",
                                    "gumbel-rao": "relaxation"}.get(name, "straight-through")
    assert est.loss_evaluations(128, categories=10) == evaluations
    assert est.loss_evaluations(128) == (evaluations if evaluations == 1 else est.loss_evaluations(128, categories=2))
    calls = []
    logits = torch.zeros(2, 128, 10)
    with est.drawing_from(seeded(0)):
        est(logits, lambda h: calls.append(h.numel() // (128 * 10)) or h.sum((-2, -1)), categorical=True)
    assert sum(calls) == evaluations * 2  # two examples


@pytest.mark.parametrize("name", CATEGORICAL)
def test_declared_randomness_matches_what_is_drawn(name):
    """Discrete-only estimators replay exactly; the others ask for continuous noise and refuse."""
    est = build_estimator(name)
    with est.drawing_from(ReplayNoise(torch.zeros(3, 64, dtype=torch.long))):
        if est.randomness == "continuous":
            with pytest.raises(NotEnumerable):
                est(torch.zeros(3, 2, 4, dtype=F64), lambda h: h.sum((-2, -1)), categorical=True)
        else:
            est(torch.zeros(3, 2, 4, dtype=F64), lambda h: h.sum((-2, -1)), categorical=True)
    expected = {"straight-through": "bernoulli", "gapped-st": "bernoulli", "reinmax": "bernoulli",
                "indecater": "bernoulli"}
    assert est.randomness == expected.get(name, "continuous")


@pytest.mark.parametrize("name", ["gumbel-softmax", "st-gumbel", "gumbel-rao", "gapped-st", "reinmax"])
@pytest.mark.parametrize("tau", [1e-30, 1e6])
def test_extreme_temperatures_stay_finite(name, tau):
    logits = (torch.randn(16, 3, 5, generator=torch.Generator().manual_seed(0)) * 30).requires_grad_(True)
    est = build_estimator(name, {"tau": tau})
    with est.drawing_from(seeded(1)):
        surrogate = est(logits, lambda h: (h * torch.arange(5.0)).sum((-2, -1)), categorical=True)
    surrogate.sum().backward()
    assert torch.isfinite(surrogate).all() and torch.isfinite(logits.grad).all()


def test_indecater_refuses_no_samples():
    with pytest.raises(ValueError, match="N must be at least 1"):
        build_estimator("indecater", {"N": 0})
