"""The categorical VAE (problems/vae.py, issue 16): the probe's contract and exact gradient, every
unbiased categorical estimator's mean by replay (discrete) or a z-test (ARSM), K = 2 against the
Bernoulli VAE, the sampled reference, training (ELBO improves, determinism, records), binary-only
estimators skipped, and the checkpoint metrics (bias and cosine against the exact reference).

Statistical tests run at fixed seeds (deterministic); each states its false-alarm rate at a random seed.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import problems
from bench import harness
from bench.enumeration import enumerate_exact
from estimators import ESTIMATORS, build_estimator
from estimators.base import Noise, all_categories, all_configurations
from estimators.registry import RegistryError
from problems.vae import CategoricalLatents, CategoricalVaeProbe, VaeModel, VaeProbe
from test_problems import CategoricalContract, build, pytest_generate_tests  # noqa: F401 (parametrises ``spec``)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def probe(**params) -> CategoricalVaeProbe:
    return problems.build_problem("categorical-vae-probe", params)


class TestCategoricalVaeProbe(CategoricalContract):
    """Units example-major (batch x latents rows of ``logits``); the gradient is w.r.t. them."""

    specs = [("categorical-vae-probe", {}),
             ("categorical-vae-probe", {"latents": 2, "categories": 4, "batch": 3, "pixels": 5, "data_seed": 2}),
             ("categorical-vae-probe", {"architecture": "nonlinear", "hidden": "6-4", "latents": 2, "categories": 3,
                                        "batch": 2})]

    def test_loss_is_the_mean_negative_elbo(self, spec):
        problem = build(spec).to(F64)
        index = torch.randint(0, problem.categories, (4, problem.units), generator=torch.Generator().manual_seed(1))
        h = F.one_hot(index, problem.categories).to(F64)
        model, x, K = problem.model, problem.x, problem.categories
        logits = problem.logits.reshape(problem.batch, problem.latents, K)
        for row, value in zip(h, problem.loss(h)):
            z = row.reshape(problem.batch, problem.latents, K)
            by_hand = 0.0
            for b in range(problem.batch):
                p_x = torch.distributions.Bernoulli(logits=model.decoders[0](z[b].reshape(-1))).log_prob(x[b]).sum()
                q = torch.distributions.OneHotCategorical(logits=logits[b]).log_prob(z[b]).sum()
                prior = -problem.latents * np.log(K)  # uniform over the categories
                by_hand += float(q - p_x - prior)
            assert float(value) == pytest.approx(by_hand / problem.batch, abs=1e-10)


# -- exact gradients at an enumerable size ---------------------------------------------------------------
CATEGORICAL = [name for name in ESTIMATORS.names() if build_estimator(name).variables in ("categorical", "both")]
UNBIASED = [name for name in CATEGORICAL if build_estimator(name).unbiased]
DISCRETE = [name for name in UNBIASED if build_estimator(name).enumerable]
CONTINUOUS = [name for name in UNBIASED if not build_estimator(name).enumerable]
SMALL_K = {"reinforce-loo": {"K": 2}}  # 2 draws per latent: 3^12 outcomes at batch 2
SMALL = {"latents": 3, "categories": 3, "pixels": 6, "batch": 2}


def test_the_unbiased_categorical_estimators_are_covered():
    assert {"exact", "reinforce", "reinforce-ma", "reinforce-optimal", "reinforce-loo", "indecater"} <= set(DISCRETE)
    assert "arsm" in CONTINUOUS


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_unbiased_estimators_match_enumeration_by_replay(name):
    problem = probe(**SMALL)
    reference = problem.reference()
    assert reference.exact
    estimator = build_estimator(name, SMALL_K.get(name, {}))
    exact, note = enumerate_exact(estimator, problem, reference)
    assert exact is not None, note
    torch.testing.assert_close(exact.mean, reference.gradient, rtol=0, atol=1e-12)


# Scipy's one-sample t-test per coordinate, Bonferroni over the 18 coordinates: an unbiased estimator
# fails p > 1e-3 at a random seed with probability at most 0.1%.
@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_unbiased_estimators_pass_z_tests(name):
    problem = probe(**SMALL).to(F64)
    truth = problem.reference().gradient
    estimator = build_estimator(name).to(F64)
    with estimator.drawing_from(Noise(torch.Generator().manual_seed(0))), estimator.frozen():
        grads = problem.sample_gradients(estimator, 6_000).detach().numpy()
    p = min(1.0, problem.dim * float(np.min(scipy.stats.ttest_1samp(grads, truth.numpy(), axis=0).pvalue)))
    assert p > 1e-3, f"Bonferroni p = {p:.2e}"


def test_exact_gradient_is_autograd_of_the_enumerated_elbo_with_its_direct_term():
    # autograd of sum_z q(z) [log q(z) - log p(x, z)] with log q's own dependence on the logits kept
    # equals the contract's (log q fixed at the problem's logits): E_q[d log q] = 0
    problem = probe(**SMALL).to(F64)
    logits = problem.logits.detach().clone().requires_grad_(True)
    h = all_categories(problem.units, problem.categories, F64)
    z = h.unflatten(-2, (problem.batch, problem.latents))
    log_q, negative = problem.model.joint(problem.x, [z], logits.unflatten(0, (problem.batch, problem.latents)))
    expected = (log_q.sum(-1).exp() * negative.mean(-1)).sum()
    (grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(problem.exact_gradient(), grad.reshape(-1), rtol=0, atol=1e-12)
    assert float(grad.abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["straight-through", "reinmax", "gumbel-softmax", "reinforce-loo"])
def test_the_kl_is_differentiated_in_closed_form(name):
    # a decoder that ignores z leaves only the KL to the uniform prior: every estimate is then its
    # exact gradient (no score noise z - p from log q's direct term, no sampled KL), as in ReinMax
    problem = probe(**SMALL).to(F64)
    decoder = problem.model.decoders[0]
    with torch.no_grad():
        decoder.weight.zero_()
    estimator = build_estimator(name).to(F64)
    with estimator.drawing_from(Noise(torch.Generator().manual_seed(0))), estimator.frozen():
        grads = problem.sample_gradients(estimator, 50)
    kl = problem.model.kl(problem.logits.reshape(problem.batch, problem.latents, -1)).mean()
    assert problem.expected_loss() == pytest.approx(float(kl) - float(problem.model.log_likelihood(
        0, problem.x, torch.zeros(problem.latents, problem.categories, dtype=F64)).mean()), abs=1e-10)
    torch.testing.assert_close(grads, problem.reference().gradient.expand(50, -1), rtol=0, atol=1e-12)
    assert float(grads.abs().max()) > 1e-3


def test_reinmax_size_is_exact_and_larger_sizes_are_sampled():
    # ReinMax's analyze_gradient enumerates 4 latents x 8 categories; 8 x 4 = 65,536 is exact too
    assert probe(latents=8, categories=4, batch=1, pixels=4).reference().exact
    assert not probe(latents=7, categories=8, batch=1, pixels=4, reference_samples=64).reference().exact
    with pytest.raises(RegistryError, match="too many to enumerate"):
        probe(latents=7, categories=8, reference_method="exact")


def test_sampled_reference_agrees_with_enumeration():
    # 18 coordinates, Bonferroni over them: a false alarm at a random seed has probability < 0.1%
    exact = probe(**SMALL).reference()
    sampled = probe(**SMALL, reference_method="sampled", reference_samples=64 * 100).reference()
    assert not sampled.exact and sampled.stderr.shape == exact.gradient.shape
    z = ((sampled.gradient - exact.gradient) / sampled.stderr).numpy()
    p = min(1.0, len(z) * float(np.min(2 * scipy.stats.norm.sf(np.abs(z)))))
    assert p > 1e-3, z


def test_latent_draws_follow_the_softmax():
    logits = torch.tensor([[0.3, -1.0, 1.2], [2.0, 0.0, -2.0]], dtype=F64)
    draws = CategoricalLatents.sample(logits.expand(20_000, 2, 3), torch.Generator().manual_seed(0))
    assert set(draws.sum(-1).unique().tolist()) == {1.0}
    counts = draws.sum(0).numpy()
    for row, p in zip(counts, torch.softmax(logits, -1).numpy()):  # chi-square: false alarm 0.1% per row
        assert scipy.stats.chisquare(row, p * row.sum()).pvalue > 1e-3


# -- K = 2 against the Bernoulli VAE -----------------------------------------------------------------------
def test_two_categories_are_the_bernoulli_vae():
    """With K = 2 the linear categorical VAE is a linear Bernoulli VAE: logit a_1 - a_0, decoder weight
    W[:, 1::2] - W[:, 0::2] and bias b + W[:, 0::2].sum(1) (one-hot [1 - z, z] fed to W), prior logits 0
    (uniform). Then every configuration's -ELBO is equal, and the exact gradient is the Bernoulli one in
    the category-1 coordinates and its negative in the category-0 ones (softmax is shift-invariant)."""
    cat = probe(latents=3, categories=2, pixels=6, batch=2, data_seed=1).to(F64)
    model = cat.model
    bern_model = VaeModel("linear", 6, 3, 1, torch.Generator().manual_seed(0), model.pixel_mean).to(F64)
    enc, dec = model.encoders[0], model.decoders[0]
    with torch.no_grad():
        bern_model.encoders[0].weight.copy_(enc.weight[1::2] - enc.weight[0::2])
        bern_model.encoders[0].bias.copy_(enc.bias[1::2] - enc.bias[0::2])
        bern_model.decoders[0].weight.copy_(dec.weight[:, 1::2] - dec.weight[:, 0::2])
        bern_model.decoders[0].bias.copy_(dec.bias + dec.weight[:, 0::2].sum(1))
    bern = VaeProbe.at(bern_model, cat.x, 64, 0).to(F64)
    pairs = cat.logits.reshape(2, 3, 2)  # the probe's logits were computed in float32: take them as they are
    bern.logits1.copy_(pairs[..., 1] - pairs[..., 0])
    bits = all_configurations(bern.units, F64)
    torch.testing.assert_close(cat.loss(F.one_hot(bits.long(), 2).to(F64)), bern.loss(bits), rtol=0, atol=1e-12)
    grad = cat.exact_gradient().reshape(-1, 2)
    torch.testing.assert_close(grad[:, 1], bern.exact_gradient(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad[:, 0], -bern.exact_gradient(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("params, fragment", [
    ({"architecture": "two-layer"}, "architecture must be one of linear, nonlinear"),
    ({"categories": 1}, "categories must be at least 2"),
    ({"hidden": "8-x"}, "hidden must be layer sizes"),
    ({"batch": 0}, "batch must be at least 1"),
])
def test_probe_bad_parameters(params, fragment):
    with pytest.raises(RegistryError, match=fragment):
        probe(**params)


# -- the training problems --------------------------------------------------------------------------------
@pytest.fixture
def digits(monkeypatch):
    """Structured fake images (a 3-factor logistic model of 784 pixels): 400 train, 100 test."""
    from problems import training

    g = torch.Generator().manual_seed(3)
    basis = torch.randn(3, 784, generator=g) * 3

    def split(n):
        return torch.sigmoid(torch.randn(n, 3, generator=g) @ basis), torch.zeros(n, dtype=torch.long)

    data = {"train": split(400), "valid": split(100), "test": split(100)}
    monkeypatch.setattr(training, "load_splits", lambda dataset: data)
    return data


TINY = {"latents": 3, "categories": 3, "hidden": "16-8", "batch": 20, "steps": 40, "log_every": 20, "eval_every": 40,
        "test_samples": 4, "probe_batch": 2, "probe_samples": 20, "probe_reference_samples": 64}


def vae(**params):
    return problems.build_problem("categorical-vae", {**TINY, **params})


def records(problem, estimator="reinforce-loo", seed=0):
    est = build_estimator(*([estimator] if isinstance(estimator, str) else estimator))
    with est.drawing_from(Noise(torch.Generator().manual_seed(seed))):
        return list(problem.fit(est, seed))


def test_registered_with_the_bernoulli_vae_parameters():
    names = set(problems.PROBLEMS.names())
    assert {"categorical-vae", "fashion-mnist-categorical-vae", "categorical-vae-probe"} <= names
    built = problems.build_problem("categorical-vae", {})
    params = problems.PROBLEMS.resolved_params(built)
    bernoulli = set(problems.PROBLEMS.resolved_params(problems.build_problem("bernoulli-vae", {})))
    assert set(params) == (bernoulli - {"prior_lr"}) | {"categories", "optimizer"}  # the prior is fixed
    assert (params["latents"], params["categories"], params["architecture"], params["hidden"]) == (30, 10, "nonlinear",
                                                                                                 "512-256")
    assert (params["batch"], params["lr"], params["protocol"]) == (100, 1e-3, "reinmax")  # ReinMax's settings
    assert built.steps == 96_000 and built.binarisation == "none"  # 160 epochs of 60,000 grey images
    assert built.variables == "categorical" and built.units == 30 and built.categories == 10
    assert problems.build_problem("fashion-mnist-categorical-vae", {}).dataset == "fashion-mnist"


def test_model_shapes_and_fixed_uniform_prior(digits):
    problem = vae(architecture="nonlinear")
    model = problem.build_model(0, problem.data()["train"])
    assert [m.out_features for m in model.encoders[0] if isinstance(m, torch.nn.Linear)] == [16, 8, 9]
    assert [m.out_features for m in model.decoders[0] if isinstance(m, torch.nn.Linear)] == [8, 16, 784]
    assert any(isinstance(m, torch.nn.ReLU) for m in model.encoders[0])
    assert "prior_logits" not in dict(model.named_parameters())
    assert torch.equal(model.prior_logits, torch.zeros(3, 3))
    assert model.encode(0, torch.zeros(5, 784)).shape == (5, 3, 3)
    assert len(problem.optimisers(model)) == 1


def test_short_training_improves_the_elbo_and_records_everything(digits):
    items = records(vae(steps=200, lr=3e-3, log_every=50, eval_every=100), ("reinforce-loo", {"K": 2}))
    recs = [r for r in items if isinstance(r, problems.Record)]
    curve = [r.value for r in recs if r.name == "train_elbo"]
    test = [r.value for r in recs if r.name == "test_elbo"]
    assert len(curve) == 4 and curve[-1] > curve[0] + 5, curve
    assert len(test) == 3 and test[-1] > test[0] + 5, test
    steps = {name: [r.step for r in recs if r.name == name and r.scope == "all"]
             for name in ("train_elbo", "loss_evals_total", "trajectory_variance", "seconds_per_step", "wall_time_s",
                          "train_set_elbo", "test_elbo", "test_bound")}
    assert all(steps[name] == [50, 100, 150, 200] for name in list(steps)[:5])
    assert all(steps[name] == [0, 100, 200] for name in list(steps)[5:])
    assert [r.value for r in recs if r.name == "loss_evals_total"] == [50 * 2, 100 * 2, 150 * 2, 200 * 2]
    bounds = {r.step: r.value for r in recs if r.name == "test_bound"}
    elbos = {r.step: r.value for r in recs if r.name == "test_elbo"}
    assert all(bounds[s] > elbos[s] for s in bounds)  # the 4-sample bound is tighter
    checkpoints = [c for c in items if isinstance(c, problems.Checkpoint)]
    assert [c.step for c in checkpoints] == [0, 100, 200]
    assert all(isinstance(c.problem, CategoricalVaeProbe) for c in checkpoints)
    assert checkpoints[-1].problem.dim == 2 * 3 * 3 and checkpoints[-1].problem.reference().exact


def test_training_is_deterministic_for_a_seed(digits):
    def numbers(seed):
        return [(r.name, r.scope, r.step, r.value, r.stderr) for r in records(vae(), "gumbel-softmax", seed)
                if isinstance(r, problems.Record) and r.name not in ("seconds_per_step", "wall_time_s")]

    first = numbers(0)
    assert first == numbers(0)
    assert first != numbers(1)


def test_relaxed_estimator_reports_a_true_elbo(digits):
    # gumbel-softmax evaluates the loss at relaxed z, so the training ELBO comes from a separate
    # one-hot draw; at lr -> 0 it matches REINFORCE's (whose surrogate is the -ELBO of its draw)
    def elbo(estimator):
        return [r.value for r in records(vae(lr=1e-12, steps=20, eval_every=20), estimator)
                if isinstance(r, problems.Record) and r.name == "train_elbo"][0]

    assert elbo("gumbel-softmax") == pytest.approx(elbo("reinforce"), abs=3.0)


def test_binary_only_estimator_is_skipped_with_the_reason():
    config = harness.make_config("disarm", {}, "categorical-vae", TINY, seed=0, samples=0)
    result = harness.run(config)
    assert result.status == "skipped"
    assert "serves binary units only" in result.error and "categorical units" in result.error


def test_checkpoints_store_bias_and_cosine_against_the_exact_reference(digits):
    config = harness.make_config("straight-through", {}, "categorical-vae",
                                 {**TINY, "steps": 20, "eval_every": 20, "basket": "reinforce+disarm"},
                                 seed=1, samples=0)
    result = harness.run(config)
    assert result.status == "finished", result.error
    assert "reference: exact" in result.notes["checkpoints"]
    assert "disarm: skipped" in result.notes["basket"]
    at = {(m.name, m.scope, m.step): m.value for m in result.metrics}
    for step in (0, 20):
        assert {("bias_norm", "all", step), ("cosine", "all", step), ("variance", "all", step),
                ("cosine", "basket:reinforce", step)} <= set(at)
        assert -1 <= at[("cosine", "all", step)] <= 1 and at[("bias_norm", "all", step)] > 0
    assert ("train_elbo", "all", 20) in at


def test_bad_training_parameters():
    with pytest.raises(RegistryError, match="architecture must be one of linear, nonlinear"):
        vae(architecture="two-layer")
    with pytest.raises(RegistryError, match="binarisation must be one of"):
        vae(binarisation="fixed")
    with pytest.raises(RegistryError, match="lr must be a finite number > 0"):
        vae(lr=0)
