"""bench.metrics: streaming moments against direct numpy, jackknife standard errors, the
unbiasedness test, exact moments by enumeration and the timing metric."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from bench.metrics import GradientMoments, exact_moments, time_metrics

POINT_METRICS = ("bias_norm", "relative_bias", "variance", "mse", "snr", "cosine", "sign_agreement",
                 "sparsity")


def as_dict(metrics):
    return {m.name: m for m in metrics}


def sample(n=96, dim=3, seed=0, shift=0.0):
    """Estimates around a truth, with one coordinate of the truth exactly zero (sign edge case)."""
    rng = np.random.default_rng(seed)
    truth = np.array([0.7, -0.3, 0.0, 1.2, -2.0][:dim])
    g = truth + shift + rng.normal(size=(n, dim))
    g[::7, 0] = 0.0  # some exact zeros, so sign agreement and cosine hit their edge cases
    g[5] = 0.0  # an all-zero estimate: its cosine counts as 0
    sparsity = rng.uniform(size=n)
    return torch.from_numpy(truth), torch.from_numpy(g), torch.from_numpy(sparsity)


def direct(truth, g, sparsity):
    """The point metrics computed directly with numpy over all samples."""
    t, x, s = truth.numpy(), g.numpy(), sparsity.numpy()
    mean = x.mean(0)
    norms = np.linalg.norm(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, x @ t / (norms * np.linalg.norm(t)), 0.0)
    variance = x.var(0, ddof=1).sum()
    return {
        "bias_norm": np.linalg.norm(mean - t),
        "relative_bias": np.linalg.norm(mean - t) / np.linalg.norm(t),
        "variance": variance,
        "mse": ((x - t) ** 2).sum(1).mean(),
        "snr": np.linalg.norm(mean) / math.sqrt(variance),
        "cosine": cos.mean(),
        "sign_agreement": (np.sign(x) == np.sign(t)).mean(),
        "sparsity": s.mean(),
    }


def accumulate(truth, g, sparsity, splits, groups=8):
    moments = GradientMoments(truth, len(g), groups=groups)
    start = 0
    for size in splits:
        moments.add(g[start:start + size], sparsity[start:start + size])
        start += size
    assert start == len(g)
    return as_dict(moments.metrics())


SPLITS = {
    "one-chunk": [96],
    "group-aligned": [12] * 8,
    "ragged": [1, 2, 3, 5, 8, 13, 21, 34, 9],
    "singletons": [1] * 96,
    "straddling": [7, 40, 49],
}


@pytest.mark.parametrize("splits", SPLITS.values(), ids=SPLITS.keys())
def test_point_metrics_match_numpy(splits):
    truth, g, sparsity = sample()
    got = accumulate(truth, g, sparsity, splits)
    expected = direct(truth, g, sparsity)
    for name in POINT_METRICS:
        assert got[name].value == pytest.approx(expected[name], rel=1e-10, abs=1e-12), name


def test_metrics_identical_for_every_chunking():
    truth, g, sparsity = sample()
    reference = accumulate(truth, g, sparsity, SPLITS["one-chunk"])
    for splits in SPLITS.values():
        got = accumulate(truth, g, sparsity, splits)
        assert got.keys() == reference.keys()
        for name, metric in reference.items():
            assert got[name].value == pytest.approx(metric.value, rel=1e-10, abs=1e-12), name
            if metric.stderr is None or math.isnan(metric.stderr):
                assert got[name].stderr is None or math.isnan(got[name].stderr), name
            else:
                assert got[name].stderr == pytest.approx(metric.stderr, rel=1e-10, abs=1e-12), name


def test_sparsity_is_nan_without_sparsity_data():
    truth, g, _ = sample()
    moments = GradientMoments(truth, len(g), groups=8)
    moments.add(g)
    assert math.isnan(as_dict(moments.metrics())["sparsity"].value)


@pytest.mark.parametrize("name", ["mse", "cosine", "sign_agreement", "sparsity"])
def test_jackknife_stderr_of_means_equals_batch_means_stderr(name):
    # With equal groups the delete-one-group jackknife of a mean is the batch-means standard error.
    truth, g, sparsity = sample(n=96)
    groups = 8
    got = accumulate(truth, g, sparsity, SPLITS["ragged"], groups=groups)[name]
    t, x = truth.numpy(), g.numpy()
    norms = np.linalg.norm(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = {
            "mse": ((x - t) ** 2).sum(1),
            "cosine": np.where(norms > 0, x @ t / (norms * np.linalg.norm(t)), 0.0),
            "sign_agreement": (np.sign(x) == np.sign(t)).mean(1),
            "sparsity": sparsity.numpy(),
        }[name]
    batch_means = per_sample.reshape(groups, -1).mean(1)
    expected = batch_means.std(ddof=1) / math.sqrt(groups)
    assert got.stderr == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("name", ["variance", "bias_norm", "snr"])
def test_jackknife_stderr_of_nonlinear_metrics_by_hand(name):
    # Delete-one-group jackknife recomputed from scratch with numpy (unequal groups: 10, 10, 11).
    truth, g, sparsity = sample(n=31)
    groups = 3
    got = accumulate(truth, g, sparsity, [31], groups=groups)[name]
    edges = [(k * 31) // groups for k in range(groups + 1)]
    replicates = []
    for k in range(groups):
        keep = torch.ones(31, dtype=torch.bool)
        keep[edges[k]:edges[k + 1]] = False
        replicates.append(direct(truth, g[keep], sparsity[keep])[name])
    replicates = np.array(replicates)
    expected = math.sqrt((groups - 1) / groups * ((replicates - replicates.mean()) ** 2).sum())
    assert got.stderr == pytest.approx(expected, rel=1e-9)


def test_groups_capped_by_total():
    truth = torch.tensor([1.0, 2.0], dtype=torch.float64)
    moments = GradientMoments(truth, total=3, groups=32)
    assert moments.groups == 3
    moments.add(torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.0, 3.0]], dtype=torch.float64))
    metrics = as_dict(moments.metrics())
    assert metrics["mse"].value == pytest.approx((0 + 2 + 2) / 3)


def test_misuse_is_reported():
    truth = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 1"):
        GradientMoments(truth, total=0)
    moments = GradientMoments(truth, total=4, groups=2)
    moments.add(torch.ones(3, 2))
    with pytest.raises(ValueError, match="only 3 of 4"):
        moments.metrics()
    with pytest.raises(ValueError, match="more samples"):
        moments.add(torch.ones(2, 2))


# -- the unbiasedness test --------------------------------------------------------------------
# Samples are N(truth, 1) at fixed seeds; the thresholds are the false-alarm rate (0.1%) and a
# miss at |z| = 10 (power 1 - 1e-20), so at these seeds the outcomes are deterministic.

def pvalue(truth, g, **kwargs):
    moments = GradientMoments(truth, len(g), **kwargs)
    moments.add(g)
    return as_dict(moments.metrics())["unbiased_pvalue"].value


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pvalue_not_small_for_unbiased_samples(seed):
    rng = np.random.default_rng(seed)
    truth = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    g = truth + torch.from_numpy(rng.normal(size=(10_000, 4)))
    assert pvalue(truth, g) > 1e-3


def test_pvalue_tiny_for_shifted_mean():
    rng = np.random.default_rng(0)
    truth = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    g = truth + torch.from_numpy(rng.normal(size=(10_000, 4)))
    g[:, 2] += 0.1  # one coordinate off by 10 standard errors
    assert pvalue(truth, g) < 1e-15


def test_pvalue_is_bonferroni_of_largest_t():
    rng = np.random.default_rng(3)
    truth = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    x = rng.normal(size=(500, 3)) + np.array([0.0, 0.1, 0.0])
    moments = GradientMoments(truth, 500)
    moments.add(torch.from_numpy(x))
    metrics = as_dict(moments.metrics())
    t = np.abs(x.mean(0) / (x.std(0, ddof=1) / math.sqrt(500)))
    # the 8 eps floor is ~1e-6 relative here: negligible at this tolerance
    assert metrics["bias_z_max"].value == pytest.approx(t.max(), rel=1e-6)
    assert metrics["unbiased_pvalue"].value == pytest.approx(
        min(1.0, 3 * 2 * scipy.stats.t.sf(t.max(), 499)), rel=1e-5)


def test_deterministic_estimate_equal_to_truth_up_to_float32_rounding_is_not_flagged():
    truth = torch.tensor([0.123456789, -2.718281828, 1e-3, 0.0], dtype=torch.float64)
    g = truth.to(torch.float32).to(torch.float64).expand(200, 4)
    assert not torch.equal(g[0], truth)  # really rounded
    assert pvalue(truth, g) == 1.0


def test_deterministic_estimate_off_by_more_than_rounding_is_flagged():
    truth = torch.tensor([0.123456789, -2.718281828, 1e-3, 0.0], dtype=torch.float64)
    g = (truth * (1 + 1e-4)).expand(200, 4)
    assert pvalue(truth, g) < 1e-15
    exact_zero_off = torch.tensor([0.0, 1e-3], dtype=torch.float64).expand(50, 2)
    assert pvalue(torch.zeros(2, dtype=torch.float64), exact_zero_off) < 1e-15


def test_reference_stderr_widens_the_test():
    rng = np.random.default_rng(0)
    truth = torch.tensor([0.5, -1.0], dtype=torch.float64)
    g = truth + 0.1 + torch.from_numpy(rng.normal(size=(10_000, 2)))
    assert pvalue(truth, g) < 1e-15
    # the same offset is within noise if the reference itself is that uncertain
    assert pvalue(truth, g, truth_stderr=torch.full((2,), 0.1, dtype=torch.float64)) > 1e-3


def test_debiased_squared_bias_by_hand():
    truth, g, _ = sample(n=64, dim=3)
    stderr = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    moments = GradientMoments(truth, 64, truth_stderr=stderr)
    moments.add(g)
    value = as_dict(moments.metrics())["debiased_bias_sq"].value
    x = g.numpy()
    by_hand = (((x.mean(0) - truth.numpy()) ** 2).sum() - (stderr.numpy() ** 2).sum()
               - (x.var(0, ddof=1) / 64).sum())
    assert value == pytest.approx(by_hand, rel=1e-12)
    exact_reference = GradientMoments(truth, 64)
    exact_reference.add(g)
    assert "debiased_bias_sq" not in as_dict(exact_reference.metrics())


def test_debiased_squared_bias_is_unbiased_under_reference_noise():
    # 400 repetitions: estimator bias b = (0.05, -0.05), reference noise sd 0.1 per coordinate;
    # the raw squared bias norm is inflated by about 2 * 0.1^2 = 0.02, the debiased one is not.
    rng = np.random.default_rng(1)
    true_gradient = np.array([1.0, -2.0])
    bias = np.array([0.05, -0.05])
    debiased, raw = [], []
    for _ in range(400):
        reference = torch.from_numpy(true_gradient + rng.normal(scale=0.1, size=2))
        g = torch.from_numpy(true_gradient + bias + rng.normal(size=(100, 2)))
        moments = GradientMoments(reference, 100, truth_stderr=torch.full((2,), 0.1, dtype=torch.float64))
        moments.add(g)
        metrics = as_dict(moments.metrics())
        debiased.append(metrics["debiased_bias_sq"].value)
        raw.append(metrics["bias_norm"].value ** 2)
    target = float((bias ** 2).sum())
    assert scipy.stats.ttest_1samp(debiased, target).pvalue > 1e-3
    assert scipy.stats.ttest_1samp(raw, target).pvalue < 1e-6


# -- exact moments and timing -----------------------------------------------------------------

def test_exact_moments_two_outcomes():
    estimates = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    log_prob = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))
    truth = torch.tensor([2.0, 1.0])
    metrics = as_dict(exact_moments(lambda: [(estimates, log_prob.exp())], truth))
    # mean (2.5, 1.5); variance 0.25 * (1.5^2 + 1.5^2) + 0.75 * (0.5^2 + 0.5^2) = 1.5
    assert metrics["exact_bias_norm"].value == pytest.approx(math.sqrt(0.5), rel=1e-14)
    assert metrics["exact_variance"].value == pytest.approx(1.5, rel=1e-14)
    assert metrics["exact_bias_norm"].stderr is None and metrics["exact_variance"].stderr is None


def test_exact_moments_single_outcome_has_zero_variance():
    metrics = as_dict(exact_moments(lambda: [(torch.tensor([[1.0, 2.0]]), torch.ones(1))], torch.tensor([1.0, 2.0])))
    assert metrics["exact_variance"].value == 0.0 and metrics["exact_bias_norm"].value == 0.0


def test_exact_moments_blocks_and_scopes_match_one_block():
    """Outcomes split over blocks give the one-block answer; scopes partition the variance."""
    generator = torch.Generator().manual_seed(3)
    estimates = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    probability = torch.rand(8, generator=generator, dtype=torch.float64)
    probability /= probability.sum()
    truth = torch.randn(5, generator=generator, dtype=torch.float64)
    scopes = {"all": slice(None), "head": slice(0, 2), "tail": slice(2, None)}
    whole = exact_moments(lambda: [(estimates, probability)], truth, scopes)
    split = exact_moments(lambda: [(estimates[:3], probability[:3]), (estimates[3:], probability[3:])], truth, scopes)
    assert [(m.name, m.scope) for m in whole] == [(m.name, m.scope) for m in split]
    for a, b in zip(whole, split):
        assert a.value == pytest.approx(b.value, rel=1e-12)
    values = {(m.scope, m.name): m.value for m in whole}
    mean = (probability.unsqueeze(1) * estimates).sum(0)
    assert values[("head", "exact_variance")] + values[("tail", "exact_variance")] == pytest.approx(
        values[("all", "exact_variance")], rel=1e-12)
    assert values[("head", "exact_bias_norm")] == pytest.approx(float((mean[:2] - truth[:2]).norm()), rel=1e-12)


def test_exact_moments_rejects_probabilities_not_summing_to_one():
    with pytest.raises(ValueError, match="sum to"):
        exact_moments(lambda: [(torch.zeros(2, 1), torch.tensor([0.5, 0.4]))], torch.zeros(1))


def test_time_metrics_are_median_min_and_max_per_estimate():
    got = {m.name: m for m in time_metrics([0.4, 0.1, 0.3, 0.2, 5.0], 100)}
    assert got["time_per_estimate_s"].value == pytest.approx(0.003)  # one slow call moves the median little
    assert got["time_per_estimate_min_s"].value == pytest.approx(0.001)
    assert got["time_per_estimate_max_s"].value == pytest.approx(0.05)
    assert all(m.stderr is None for m in got.values())
