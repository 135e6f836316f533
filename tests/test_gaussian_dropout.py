"""The ``gaussian-dropout`` noise control: a Bernoulli unit's mean and variance without quantisation.

Exact where the noise can be fixed (the pathwise derivative for a given eps, the eval-mode output);
a z-test with a fixed seed (1e-3 error rate, Bonferroni) for the moments of its draws; and the
property that makes it the right control: on a quadratic loss, which sees only the first two
moments, its expected loss equals the Bernoulli one, so its gradient is unbiased there.
"""
from __future__ import annotations

import scipy.stats
import torch

import estimators
from bench.harness import make_config, run
from estimators.base import Noise

F64 = torch.float64
ALPHA = 1e-3


def seeded(seed: int = 0):
    """``with seeded(seed) as estimator:`` -- gaussian-dropout drawing from ``seed``."""
    return estimators.build_estimator("gaussian-dropout").drawing_from(Noise(torch.Generator().manual_seed(seed)))


def test_traits():
    estimator = estimators.build_estimator("gaussian-dropout")
    assert (estimator.unbiased, estimator.binary_forward, estimator.randomness, estimator.activation,
            estimator.needs_loss_backprop) == (False, False, "continuous", "sigmoid", True)


def test_draws_have_the_bernoulli_mean_and_variance():
    logits = torch.tensor([-3.0, -0.5, 0.0, 1.2, 4.0], dtype=F64)
    with seeded(1) as estimator:
        h = estimator.sample(logits.expand(200_000, 5)).detach().numpy()
    p = torch.sigmoid(logits).numpy()
    n = h.shape[0]
    z_mean = (h.mean(0) - p) / (h.std(0, ddof=1) / n**0.5)
    # the sample variance of a Gaussian has standard error sigma^2 sqrt(2 / (n - 1))
    z_var = (h.var(0, ddof=1) - p * (1 - p)) / (p * (1 - p) * (2 / (n - 1)) ** 0.5)
    limit = scipy.stats.norm.isf(ALPHA / (2 * 10))
    assert abs(z_mean).max() < limit and abs(z_var).max() < limit


def test_pathwise_derivative_for_a_fixed_eps():
    logits = torch.tensor([-50.0, -2.0, 0.0, 0.7, 50.0], dtype=F64, requires_grad=True)
    with seeded(3) as estimator:
        h = estimator.sample(logits)
    (grad,) = torch.autograd.grad(h.sum(), logits)
    eps = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=F64)
    p, q = torch.sigmoid(logits.detach()), torch.sigmoid(-logits.detach())  # q = 1 - p without cancelling
    std = (p * q).sqrt()
    torch.testing.assert_close(h.detach(), p + std * eps, rtol=0, atol=1e-15)
    # d/da [p + sqrt(p(1-p)) eps] = p(1-p) + eps sqrt(p(1-p)) (1 - 2p) / 2, finite where p saturates
    torch.testing.assert_close(grad, p * q + eps * std * (q - p) / 2, rtol=1e-12, atol=1e-15)
    assert torch.isfinite(grad).all()


def test_eval_mode_is_the_sigmoid():
    logits = torch.linspace(-4, 4, 9, dtype=F64)
    with seeded() as estimator:
        torch.testing.assert_close(estimator.eval().sample(logits), torch.sigmoid(logits), rtol=0, atol=0)


def test_unbiased_on_a_quadratic_loss_which_sees_only_two_moments():
    result = run(make_config("gaussian-dropout", {}, "bernoulli-quadratic", {}, seed=0, samples=200_000, warmup=0))
    metrics = {m.name: m.value for m in result.metrics if m.scope == "all"}
    assert metrics["unbiased_pvalue"] > ALPHA
