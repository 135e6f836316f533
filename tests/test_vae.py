"""The Bernoulli VAE (problems/vae.py): the probe's contract and exact gradient, every unbiased
estimator's mean by replay (discrete) or z-tests (continuous) for one and two stochastic layers,
binarisation, training (ELBO improves, determinism, records), and the checkpoint basket.

Statistical tests run at fixed seeds (deterministic); each states its false-alarm rate at a random seed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import problems
from bench import harness
from bench.enumeration import enumerate_exact
from bench.metrics import Metric
from estimators import build_estimator, unit_estimator_names
from estimators.base import Noise
from estimators.registry import RegistryError
from problems.training import Binariser
from problems.vae import VaeProbe
from test_problems import ProblemContract, build, pytest_generate_tests  # noqa: F401 (parametrises ``spec``)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def probe(**params) -> VaeProbe:
    return problems.build_problem("bernoulli-vae-probe", params)


class TestVaeProbe(ProblemContract):
    """Units example-major, each example's layers side by side; the gradient is w.r.t. layer 1's
    logits (and layer 2's encoder weight and bias)."""

    specs = [("bernoulli-vae-probe", {}),
             ("bernoulli-vae-probe", {"architecture": "two-layer", "latents": 2, "batch": 2, "pixels": 5}),
             ("bernoulli-vae-probe", {"architecture": "nonlinear", "latents": 3, "batch": 2, "hidden": 4,
                                      "data_seed": 3})]

    def gradient_tensors(self, problem):
        return [problem.logits1] + ([problem.weight2, problem.bias2] if problem.depth > 1 else [])

    def log_prob(self, problem, tensors, h):
        per_example = h.unflatten(-1, (problem.batch, problem.example_units)).split(problem.latents, dim=-1)
        total = (per_example[0] * F.logsigmoid(tensors[0]) + (1 - per_example[0]) * F.logsigmoid(-tensors[0]))
        total = total.sum((-1, -2))
        if problem.depth > 1:
            logits = per_example[0] @ tensors[1].T + tensors[2]
            z = per_example[1]
            total = total + (z * F.logsigmoid(logits) + (1 - z) * F.logsigmoid(-logits)).sum((-1, -2))
        return total

    def test_loss_is_the_mean_negative_elbo(self, spec):
        problem = build(spec).to(F64)
        h = torch.bernoulli(torch.full((4, problem.units), 0.5, dtype=F64), generator=torch.Generator().manual_seed(1))
        model, x = problem.model, problem.x
        for row, value in zip(h, problem.loss(h)):
            per = row.reshape(problem.batch, problem.depth, problem.latents)
            by_hand = 0.0
            for b in range(problem.batch):
                z1 = per[b, 0]
                p_x = torch.distributions.Bernoulli(logits=model.decoders[0](z1)).log_prob(x[b]).sum()
                q = torch.distributions.Bernoulli(logits=problem.logits1[b]).log_prob(z1).sum()
                top = z1
                if problem.depth > 1:
                    z2 = per[b, 1]
                    q = q + torch.distributions.Bernoulli(logits=problem.weight2 @ z1 + problem.bias2).log_prob(z2).sum()
                    p_x = p_x + torch.distributions.Bernoulli(logits=model.decoders[1](z2)).log_prob(z1).sum()
                    top = z2
                prior = torch.distributions.Bernoulli(logits=model.prior_logits).log_prob(top).sum()
                by_hand += float(q - p_x - prior)
            assert float(value) == pytest.approx(by_hand / problem.batch, abs=1e-10)


# -- exact gradients at an enumerable size ---------------------------------------------------------------
UNBIASED = [name for name in unit_estimator_names() if build_estimator(name).unbiased]
DISCRETE = [name for name in UNBIASED if build_estimator(name).enumerable]
CONTINUOUS = [name for name in UNBIASED if not build_estimator(name).enumerable]
SMALL_K = {"reinforce-loo": {"K": 2}}  # K = 4 nested over two layers draws too many bits to enumerate
ONE_LAYER = {"architecture": "linear", "latents": 4, "pixels": 6, "batch": 1}
TWO_LAYER = {"architecture": "two-layer", "latents": 2, "pixels": 6, "batch": 2}
TWO_LAYER_REPLAY = {**TWO_LAYER, "batch": 1}  # DisARM's nested pairs: 2^24 outcomes at batch 2


@pytest.mark.parametrize("params", [ONE_LAYER, TWO_LAYER_REPLAY], ids=["one-layer", "two-layer"])
@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_unbiased_estimators_match_enumeration_by_replay(name, params):
    problem = probe(**params)
    reference = problem.reference()
    assert reference.exact
    estimator = build_estimator(name, SMALL_K.get(name, {}))
    exact, note = enumerate_exact(estimator, problem, reference)
    assert exact is not None, note
    torch.testing.assert_close(exact.mean, reference.gradient, rtol=0, atol=1e-12)


def test_exact_gradient_is_autograd_of_the_enumerated_elbo_with_its_direct_term():
    # the probe's enumeration differentiates sum_z q(z) [log q(z) - log p(x, z)] including log q's own
    # dependence on the logits; dropping it must not change the gradient (E_q[d log q] = 0)
    problem = probe(**TWO_LAYER).to(F64)
    tensors = [t.detach().clone().requires_grad_(True) for t in TestVaeProbe().gradient_tensors(problem)]
    from estimators.base import all_configurations
    h = all_configurations(problem.units, F64)
    log_q = TestVaeProbe().log_prob(problem, tensors, h)
    fixed_direct = (log_q.exp() * problem.loss(h)).sum()  # loss at the problem's logits: no direct term
    flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(fixed_direct, tensors)])
    torch.testing.assert_close(problem.exact_gradient(), flat, rtol=0, atol=1e-12)
    assert float(problem.exact_gradient().abs().max()) > 1e-3


# Scipy's one-sample t-test per coordinate, Bonferroni over the coordinates: an unbiased estimator
# fails p > 1e-3 at a random seed with probability at most 0.1% per case.
@pytest.mark.parametrize("params", [ONE_LAYER, TWO_LAYER], ids=["one-layer", "two-layer"])
@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_unbiased_estimators_pass_z_tests(name, params):
    problem = probe(**params).to(F64)
    truth = problem.reference().gradient
    estimator = build_estimator(name).to(F64)
    with estimator.drawing_from(Noise(torch.Generator().manual_seed(0))), estimator.frozen():
        grads = problem.sample_gradients(estimator, 6_000).detach().numpy()
    p = min(1.0, problem.dim * float(np.min(scipy.stats.ttest_1samp(grads, truth.numpy(), axis=0).pvalue)))
    assert p > 1e-3, f"Bonferroni p = {p:.2e}"


def test_sampled_reference_agrees_with_enumeration():
    # 19 coordinates, Bonferroni over them: a false alarm at a random seed has probability < 0.1%
    exact = probe(**TWO_LAYER, reference_method="auto").reference()
    sampled = probe(**TWO_LAYER, reference_method="sampled", reference_samples=64 * 100).reference()
    assert not sampled.exact and sampled.stderr.shape == exact.gradient.shape
    z = ((sampled.gradient - exact.gradient) / sampled.stderr).numpy()
    p = min(1.0, len(z) * float(np.min(2 * scipy.stats.norm.sf(np.abs(z)))))
    assert p > 1e-3, z


def test_probe_scopes_and_loss_evaluations():
    problem = probe(**TWO_LAYER)
    assert problem.scopes() == {"layer1": slice(0, 4), "layer2": slice(4, 10)} and problem.dim == 10
    config = harness.make_config("reinforce-loo", {"K": 3}, "bernoulli-vae-probe", TWO_LAYER, seed=0, samples=40)
    result = harness.run(config)
    assert result.status == "finished", result.error
    values = {(m.name, m.scope): m.value for m in result.metrics}
    assert values[("loss_evals", "all")] == 9  # nested: 3 evaluations of layer 1, each with 3 of layer 2
    assert {"all", "layer1", "layer2"} <= {scope for name, scope in values if name == "variance"}


@pytest.mark.parametrize("params, fragment", [
    ({"architecture": "deep"}, "architecture must be one of"),
    ({"pixels": 785}, r"pixels must be at least 1 and at most 784 \(an integer\)"),
    ({"latents": 0}, "latents must be at least 1"),
    ({"reference_method": "exact", "latents": 21}, "too many to enumerate"),
])
def test_probe_bad_parameters(params, fragment):
    with pytest.raises(RegistryError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
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


SMALL = {"latents": 6, "hidden": 8, "batch": 20, "steps": 40, "log_every": 20, "eval_every": 40, "test_samples": 4,
         "probe_batch": 2, "probe_samples": 20, "probe_reference_samples": 64}


def vae(**params):
    return problems.build_problem("bernoulli-vae", {**SMALL, **params})


def records(problem, estimator="disarm", seed=0):
    est = build_estimator(*([estimator] if isinstance(estimator, str) else estimator))
    with est.drawing_from(Noise(torch.Generator().manual_seed(seed))):
        return [item for item in problem.fit(est, seed)]


def test_registered_with_the_contract_parameters():
    names = problems.PROBLEMS.names()
    assert {"bernoulli-vae", "fashion-mnist-bernoulli-vae", "bernoulli-vae-probe"} <= set(names)
    params = set(problems.PROBLEMS.resolved_params(problems.build_problem("bernoulli-vae", {})))
    assert {"architecture", "latents", "hidden", "pixels", "binarisation", "steps", "batch", "lr", "prior_lr",
            "log_every", "eval_every", "test_samples", "train_subset", "eval_subset", "probe_batch",
            "probe_samples", "basket"} <= params
    assert problems.build_problem("fashion-mnist-bernoulli-vae", {}).dataset == "fashion-mnist"


def test_dynamic_binarisation_is_fresh_per_use_and_seeded(digits):
    problem = vae()
    x = problem.data()["train"][:50]
    assert not set(torch.unique(x).tolist()) <= {0.0, 1.0}  # intensities, binarised as used
    train_a, eval_a = problem.binarisers(0)
    train_b, _ = problem.binarisers(0)
    first, second = train_a(x), train_a(x)
    assert set(torch.unique(first).tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)                     # a fresh draw at every use
    assert torch.equal(first, train_b(x))                     # the same seed, the same draws
    assert not torch.equal(first, eval_a(x))                  # evaluation has its own stream
    assert not torch.equal(first, problem.binarisers(1)[0](x))


def test_static_binarisation_is_one_fixed_draw(digits):
    a, b = vae(binarisation="static").data(), vae(binarisation="static", train_subset=100).data()
    assert set(torch.unique(a["train"]).tolist()) == {0.0, 1.0}
    assert torch.equal(a["train"][:100], b["train"])          # fixed per example, whatever the subset
    binarise, _ = vae(binarisation="static").binarisers(5)
    assert torch.equal(binarise(a["train"]), a["train"])
    assert not torch.equal(a["train"][:100], a["test"][:100])


def test_short_training_improves_the_elbo_and_records_everything(digits):
    items = records(vae(steps=200, lr=3e-3, log_every=50, eval_every=100), "reinforce-loo")
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
    evals = [r.value for r in recs if r.name == "loss_evals_total"]
    assert evals == [50 * 4, 100 * 4, 150 * 4, 200 * 4]  # reinforce-loo's default K = 4
    bounds = {r.step: (r.value, r.stderr) for r in recs if r.name == "test_bound"}
    elbos = {r.step: r.value for r in recs if r.name == "test_elbo"}
    assert all(bounds[s][0] > elbos[s] and bounds[s][1] > 0 for s in bounds)  # the 4-sample bound is tighter
    checkpoints = [c for c in items if isinstance(c, problems.Checkpoint)]
    assert [c.step for c in checkpoints] == [0, 100, 200] and all(c.samples == 20 for c in checkpoints)
    assert checkpoints[-1].problem.dim == 2 * 6


def test_two_layer_training_records_layer_scopes(digits):
    recs = [r for r in records(vae(architecture="two-layer", steps=20, eval_every=20), ("reinforce-loo", {"K": 2}))
            if isinstance(r, problems.Record)]
    scopes = {r.scope for r in recs if r.name == "trajectory_variance"}
    assert scopes == {"all", "layer1", "layer2"}
    by_scope = {r.scope: r.value for r in recs if r.name == "trajectory_variance"}
    assert by_scope["all"] == pytest.approx(by_scope["layer1"] + by_scope["layer2"])
    assert [r.value for r in recs if r.name == "loss_evals_total"] == [20 * 4]  # 2 x 2 nested


def test_training_is_deterministic_for_a_seed(digits):
    def numbers(seed):
        return [(r.name, r.scope, r.step, r.value, r.stderr) for r in records(vae(), "gumbel-softmax", seed)
                if isinstance(r, problems.Record) and r.name not in ("seconds_per_step", "wall_time_s")]

    first = numbers(0)
    assert first == numbers(0)
    assert first != numbers(1)


def test_relaxed_estimator_reports_a_true_elbo(digits):
    # gumbel-softmax evaluates the loss at relaxed z: its surrogate is not an ELBO, so the training
    # ELBO comes from a separate binary draw; at lr -> 0 it matches DisARM's (binary) one closely
    def elbo(estimator):
        return [r.value for r in records(vae(lr=1e-12, prior_lr=1e-12, steps=20, eval_every=20), estimator)
                if isinstance(r, problems.Record) and r.name == "train_elbo"][0]

    assert elbo("gumbel-softmax") == pytest.approx(elbo("disarm"), abs=3.0)


def test_bad_training_parameters():
    with pytest.raises(RegistryError, match="binarisation must be one of"):
        vae(binarisation="fixed")
    with pytest.raises(RegistryError, match="batch"):
        vae(train_subset=10, batch=20)


# -- the checkpoint basket --------------------------------------------------------------------------------
def test_basket_numbers_equal_a_separate_harness_measurement(digits):
    basket = "reinforce-loo(K=2)+nvil+reinforce-ma"
    config = harness.make_config("disarm", {}, "bernoulli-vae",
                                 {**SMALL, "steps": 20, "eval_every": 20, "basket": basket},
                                 seed=4, samples=0)
    result = harness.run(config)
    assert result.status == "finished", result.error
    last = [m for m in result.metrics if m.step == 20]

    # the same probe, rebuilt from a model trained the same way, measured on its own
    problem = problems.build_problem("bernoulli-vae", config.problem_params)
    estimator = build_estimator("disarm")
    with estimator.drawing_from(harness.seeded_noise(4, 0, torch.device("cpu"))):
        checkpoint = [c for c in problem.fit(estimator, 4) if isinstance(c, problems.Checkpoint)][-1]
    probe_problem, stream = checkpoint.problem, harness.CHECKPOINT_STREAM + 1
    reference = probe_problem.reference()
    scopes = {"all": slice(None), **probe_problem.scopes()}
    settings = dataclasses.replace(config, samples=checkpoint.samples, warmup=harness.DEFAULT_WARMUP)
    for spec, name, params in (("reinforce-loo(K=2)", "reinforce-loo", {"K": 2}), ("nvil", "nvil", {}),
                               ("reinforce-ma", "reinforce-ma", {})):
        separate = build_estimator(name, params)
        noise = harness.basket_noise(4, stream, torch.device("cpu"))
        if separate.has_parameters:
            harness.adapt(probe_problem, separate, settings, noise)
        else:
            harness.warm_up(probe_problem, separate, settings, noise)
        measured, _ = harness.sample_metrics(probe_problem, separate, settings, reference, scopes, None,
                                             stream=stream, timed=False)
        # every gradient number (peak_memory_bytes measures the process's allocator, not the estimator)
        expected = {(m.name, m.scope): m.value for m in measured if m.name != "peak_memory_bytes"}
        stored = {(m.name, m.scope.removeprefix(f"basket:{spec}").lstrip("/") or "all"): m.value for m in last
                  if (m.scope == f"basket:{spec}" or m.scope.startswith(f"basket:{spec}/"))
                  and m.name != "peak_memory_bytes"}
        assert stored and stored == expected, spec  # equal, not close
    training = {m.name for m in last if m.scope == "all"}
    assert {"variance", "bias_norm", "train_elbo"} <= training


def test_checkpoint_without_basket_is_unchanged():
    assert problems.Checkpoint(probe(), 10).basket == ()
    assert isinstance(Metric("variance", 1.0), Metric)


@pytest.mark.parametrize("name", ["rectifier", "noisy-rectifier"])
def test_unbounded_estimators_are_skipped_with_the_reason(name):
    """A rectifier's units are not Bernoulli latent values: the run is stored as skipped, saying why."""
    config = harness.make_config(name, {}, "bernoulli-vae-probe", {}, 0, 16)
    result = harness.run(config)
    assert result.status == "skipped"
    assert result.error == (f"{name} gives unbounded (rectifier) units; bernoulli-vae-probe's Bernoulli latents "
                            "need values in [0, 1] for log q(z|x) and log p(z)")
    training = harness.run(harness.make_config(name, {}, "bernoulli-vae", {"steps": 1}, 0, 16))
    assert training.status == "skipped" and "unbounded (rectifier) units" in training.error
