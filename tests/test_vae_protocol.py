"""The VAE protocols (problems/vae.py): each deviation of 'disarm' from 'suite' against DisARM's
definition on a small case (signal-only encoder gradient, the variance metric, the decoder's 2z - 1),
the fresh decoder draw, ReinMax's data and settings for the categorical VAE, DisARM's RELAX control
variate, ReinMax's tempered straight-through, and the seeds studies' significance table on a
hand-made store. Every comparison is exact (float64) or at float32 rounding: no statistics.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import problems
from analysis.frames import load_results
from bench.metrics import Metric
from bench.runconfig import RunResult
from bench.store import Store
from estimators import build_estimator
from estimators.base import Noise, ReplayNoise
from estimators.registry import RegistryError
from experiments import ranking, vae_seeds
from experiments.base import planned_results
from problems.vae import EMA_DECAY, GradientMoments, VaeModel

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def model(protocol: str, architecture: str = "linear", pixels: int = 7, latents: int = 3) -> VaeModel:
    generator = torch.Generator().manual_seed(5)
    built = VaeModel(architecture, pixels, latents, 4, generator, torch.rand(pixels, generator=generator) * 0.8 + 0.1,
                     protocol).to(F64)
    with torch.no_grad():
        for p in built.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=F64) * 0.5)
    return built


def binary_batch(pixels: int = 7, batch: int = 4) -> torch.Tensor:
    return torch.bernoulli(torch.full((batch, pixels), 0.5, dtype=F64), generator=torch.Generator().manual_seed(2))


# -- signal-only encoder gradient ------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["disarm", "suite"])
def test_encoder_gradient_is_the_learning_signal_times_dlogits(protocol):
    """REINFORCE at a replayed z: 'disarm' gives d/dphi = f(z) (z - sigm(a)) back through the encoder
    (f = log q(z|x) - log p(x, z), the learning signal), exactly DisARM's ``estimate_gradients``
    (``tape.gradient(infnet_logits, encoder_vars, output_gradients=-layer_grad)``); 'suite' adds log
    q's direct term z - sigm(a)."""
    vae, x = model(protocol), binary_batch()
    z = torch.bernoulli(torch.full((4, 3), 0.5, dtype=F64), generator=torch.Generator().manual_seed(9))
    estimator = build_estimator("reinforce")
    logits = vae.encode(0, x)
    with estimator.drawing_from(ReplayNoise(z.reshape(1, -1))):  # one replayed sample per example
        surrogate = vae.surrogate(x.unsqueeze(1), logits.unsqueeze(1), estimator)
    grads = list(torch.autograd.grad(surrogate.sum(), [logits, *vae.encoder_parameters()]))
    with torch.no_grad():
        signal = vae.joint(x, [z], logits)[1]  # log q - log p(x, z) per example
        score = z - torch.sigmoid(logits)
        expected = signal.unsqueeze(-1) * score + (score if protocol == "suite" else 0)
    assert torch.equal(grads[0], expected) or torch.allclose(grads[0], expected, rtol=1e-12, atol=1e-12)
    weight, bias = grads[1:]
    assert torch.allclose(weight, expected.T @ (x - vae.pixel_mean), rtol=1e-12, atol=1e-12)
    assert torch.allclose(bias, expected.sum(0), rtol=1e-12, atol=1e-12)


def test_signal_only_keeps_the_pathwise_derivative_through_the_upper_encoder():
    """Two layers under 'disarm': log q(z2 | z1) is held at the encoder's parameters but stays a
    function of z1 (encode_held), so a pathwise estimator still sees d log q / d z1."""
    vae = model("disarm", "two-layer")
    z1 = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64, requires_grad=True)
    held = vae.encode_held(1, z1)
    assert torch.equal(held, vae.encode(1, z1))
    assert not held.grad_fn is None and vae.encoders[1].weight.grad is None
    (g,) = torch.autograd.grad(held.sum(), z1)
    assert torch.allclose(g, 2 * vae.encoders[1].weight.sum(0, keepdim=True))  # d(2 z1 - 1)/d z1 = 2


# -- the decoder reads 2z - 1 --------------------------------------------------------------------------
@pytest.mark.parametrize("protocol, read", [("disarm", lambda z: 2 * z - 1), ("suite", lambda z: z)])
def test_networks_reading_a_latent_read_2z_minus_1_under_disarm(protocol, read):
    """DisARM's ``BinaryNetwork(demean_input=True)`` without ``mean_xs`` maps its input to 2z - 1:
    the decoder and (two layers) the upper encoder; the first encoder still reads x minus the means."""
    vae, x = model(protocol, "two-layer"), binary_batch()
    z = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)
    decoder = vae.decoders[0]
    logits = read(z) @ decoder.weight.T + decoder.bias
    expected = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)
    assert torch.allclose(vae.log_likelihood(0, x, z), expected, rtol=1e-12)
    upper = vae.encoders[1]
    assert torch.allclose(vae.encode(1, z), read(z) @ upper.weight.T + upper.bias, rtol=1e-12)
    first = vae.encoders[0]
    assert torch.allclose(vae.encode(0, x), (x - vae.pixel_mean) @ first.weight.T + first.bias, rtol=1e-12)


# -- the variance metric -------------------------------------------------------------------------------
def test_disarm_variance_is_their_formula_on_a_hand_made_gradient_sequence():
    """DisARM: shadow <- 0.999 shadow + 0.001 value from 0 (tf.train.ExponentialMovingAverage with
    no num_updates) for the batch-sum gradient G and G^2; var = mean over all components of
    (shadow(G^2) - shadow(G)^2) / batch^2. Ours is fed the batch mean G / batch."""
    rng = np.random.default_rng(0)
    batch, steps = 50, 7
    shapes = [(2, 3), (4,)]
    sums = [[rng.normal(size=shape) * (1 + t) for shape in shapes] for t in range(steps)]
    moments = GradientMoments([torch.zeros(shape) for shape in shapes], {"all": [0, 1], "layer": [1]})
    m1 = [np.zeros(shape) for shape in shapes]
    m2 = [np.zeros(shape) for shape in shapes]
    for t, grads in enumerate(sums, 1):
        moments.update([torch.tensor(g / batch) for g in grads])
        for i, g in enumerate(grads):
            m1[i] = EMA_DECAY * m1[i] + (1 - EMA_DECAY) * g
            m2[i] = EMA_DECAY * m2[i] + (1 - EMA_DECAY) * g**2
    records = {(r.name, r.scope): r.value for r in moments.records(steps)}
    theirs = np.concatenate([(s - f**2).ravel() for f, s in zip(m1, m2)]).mean() / batch**2
    assert records[("disarm_variance", "all")] == pytest.approx(theirs, rel=1e-12)
    # ours: the bias-corrected variance of the batch mean, summed over coordinates (per scope)
    c = 1 - EMA_DECAY**steps
    ours = [np.clip(s / c / batch**2 - (f / c / batch) ** 2, 0, None).sum() for f, s in zip(m1, m2)]
    assert records[("trajectory_variance", "all")] == pytest.approx(sum(ours), rel=1e-10)
    assert records[("trajectory_variance", "layer")] == pytest.approx(ours[1], rel=1e-10)
    assert ("disarm_variance", "layer") not in records


# -- the training step ---------------------------------------------------------------------------------
@pytest.fixture
def digits(monkeypatch):
    """Structured fake images: 400 train, 100 valid, 100 test (see tests/test_vae.py)."""
    from problems import training

    g = torch.Generator().manual_seed(3)
    basis = torch.randn(3, 784, generator=g) * 3

    def split(n):
        return torch.sigmoid(torch.randn(n, 3, generator=g) @ basis), torch.zeros(n, dtype=torch.long)

    data = {"train": split(400), "valid": split(100), "test": split(100)}
    monkeypatch.setattr(training, "load_splits", lambda dataset: data)
    return data


SMALL = {"latents": 6, "hidden": 8, "batch": 20, "steps": 6, "log_every": 3, "eval_every": 6, "test_samples": 2,
         "probe_batch": 2, "probe_samples": 4, "probe_reference_samples": 64}


def run(problem, estimator, seed=0):
    est = build_estimator(estimator)
    with est.drawing_from(Noise(torch.Generator().manual_seed(seed))):
        return [r for r in problem.fit(est, seed) if isinstance(r, problems.Record)]


def test_disarm_protocol_is_the_default_and_records_both_variances(digits):
    problem = problems.build_problem("bernoulli-vae", SMALL)
    assert problem.protocol == "disarm"
    records = run(problem, "disarm")
    names = {(r.name, r.scope) for r in records if r.step == 6}
    assert {("disarm_variance", "all"), ("trajectory_variance", "all"), ("train_elbo", "all")} <= names
    value = {r.name: r.value for r in records if r.step == 6 and r.scope == "all"}
    assert 0 < value["disarm_variance"] < value["trajectory_variance"]
    with pytest.raises(RegistryError, match="protocol must be one of disarm, suite, got 'tf'"):
        problems.build_problem("bernoulli-vae", {"protocol": "tf"})


def test_decoder_learns_from_a_fresh_draw_not_from_the_estimators_evaluations(digits):
    """Under 'disarm' the decoder's step does not depend on the estimator: two estimators with
    different evaluations, at an encoder learning rate of 0 (so the posterior is the same), give the
    same decoder; under 'suite' they do not."""
    def decoder_after(protocol, estimator):
        problem = problems.build_problem("bernoulli-vae", {**SMALL, "protocol": protocol})
        problem.optimisers = lambda m: [torch.optim.Adam(m.encoder_parameters(), lr=0.0),
                                        torch.optim.Adam(m.decoder_parameters(), lr=1e-3),
                                        torch.optim.SGD([m.prior_logits], lr=1e-2)]
        run(problem, estimator)
        return torch.cat([p.detach().reshape(-1) for p in problem.trained_model.decoder_parameters()])

    assert torch.equal(decoder_after("disarm", "disarm"), decoder_after("disarm", "reinforce-loo"))
    assert not torch.equal(decoder_after("suite", "disarm"), decoder_after("suite", "reinforce-loo"))


def test_disarm_optimisers_use_keras_epsilon_and_the_control_variate_adam(digits):
    problem = problems.build_problem("bernoulli-vae", SMALL)
    vae = problem.build_model(0, problem.data()["train"])
    encoder, decoder, prior = problem.optimisers(vae)
    assert encoder.param_groups[0]["eps"] == pytest.approx(1e-7 / 20) and decoder.param_groups[0]["eps"] == 1e-7
    assert isinstance(prior, torch.optim.SGD) and prior.param_groups[0]["lr"] == 1e-2
    own = problem.own_parameter_optimiser(build_estimator("relax"))
    assert (own.lr, own.betas, own.eps) == (1e-4, (0.999, 0.999), 1e-7)
    suite = problems.build_problem("bernoulli-vae", {**SMALL, "protocol": "suite"})
    assert len(suite.optimisers(vae)) == 2 and suite.own_parameter_optimiser(build_estimator("relax")).lr is None


# -- ReinMax's categorical protocol ---------------------------------------------------------------------
TINY = {"latents": 3, "categories": 3, "hidden": "16-8", "batch": 20, "log_every": 5, "eval_every": 10**6,
        "test_samples": 2, "probe_batch": 2, "probe_samples": 4, "probe_reference_samples": 64}


def test_reinmax_protocol_trains_on_all_training_images_as_grey_levels(digits):
    problem = problems.build_problem("categorical-vae", {**TINY, "steps": 5})
    data = problem.data()
    assert data["train"].shape[0] == 500  # the split's train and valid: the whole training file
    assert torch.equal(data["train"], torch.cat([digits["train"][0], digits["valid"][0]]))
    assert torch.equal(problem.binarisers(0)[0](data["train"]), data["train"])  # grey levels, no draws
    assert problems.build_problem("categorical-vae", {**TINY, "train_subset": 100}).steps == 160 * 5
    suite = problems.build_problem("categorical-vae", {**TINY, "protocol": "suite"})
    assert suite.binarisation == "dynamic" and suite.data()["train"].shape[0] == 400
    assert suite.steps == 160 * 50_000 // 20  # 160 epochs of the nominal training set (batch 20 here)
    with pytest.raises(RegistryError, match="train_subset must be in \\[0, 60000\\]"):
        problems.build_problem("categorical-vae", {"train_subset": 60_001})
    with pytest.raises(RegistryError, match="optimizer must be one of adam, radam"):
        problems.build_problem("categorical-vae", {"optimizer": "sgd"})


def test_reinmax_protocol_starts_as_torch_and_reports_the_surrogate_loss(digits):
    problem = problems.build_problem("categorical-vae", {**TINY, "steps": 5, "optimizer": "radam", "lr": 5e-4})
    vae = problem.build_model(0, problem.data()["train"])
    assert torch.equal(vae.pixel_mean, torch.zeros(784))  # the encoder reads x itself
    last = vae.decoders[0][-1]
    assert last.bias.abs().max() <= 1 / math.sqrt(16) and last.bias.std() > 0  # U(+-1/sqrt(fan_in)), not logit(mean)
    (optimiser,) = problem.optimisers(vae)
    assert isinstance(optimiser, torch.optim.RAdam) and optimiser.param_groups[0]["lr"] == 5e-4
    # straight-through is biased but samples one-hot: its training loss is its own surrogate's (theirs)
    assert problem.elbo_from_surrogate(build_estimator("straight-through"))
    assert not problems.build_problem("categorical-vae", {**TINY, "protocol": "suite"}).elbo_from_surrogate(
        build_estimator("straight-through"))
    assert not problem.elbo_from_surrogate(build_estimator("gumbel-softmax"))  # relaxed forward: an extra draw


# -- the estimators' protocol parameters -----------------------------------------------------------------
def test_relax_disarm_form_scales_its_keras_network_by_eta():
    relax = build_estimator("relax", {"form": "disarm", "hidden": 5, "eta": 2.0})
    z = torch.randn(2, 4, dtype=torch.float32)
    losses = torch.randn(2, 2)
    logits = torch.randn(2, 2)
    c_z, c_tilde = relax.control(losses, z[:, :2], z[:, 2:], logits)
    network = relax.network
    assert network.form == "keras" and network.weight1.shape == (5, 4)
    assert torch.equal(network.bias1, torch.zeros(5)) and network.weight2.abs().max() > 0  # Glorot, not zero
    assert network.weight1.abs().max() <= math.sqrt(6 / 9)
    inputs = torch.cat([logits.expand(2, 2, 2), torch.stack([z[:, :2], z[:, 2:]])], -1)
    r = F.linear(F.leaky_relu(F.linear(inputs, network.weight1, network.bias1), 0.3), network.weight2,
                 network.bias2).squeeze(-1)
    assert torch.allclose(torch.stack([c_z, c_tilde]), 2.0 * (losses + r), atol=1e-6)
    with pytest.raises(RegistryError, match="form must be one of grathwohl, disarm"):
        build_estimator("relax", {"form": "tf"})


def test_straight_through_temperature_is_reinmax_st():
    """ReinMax's ``st``: D - sg(softmax(a / tau)) + softmax(a / tau), so dL/da = J(softmax(a / tau)) dL/dD / tau."""
    st = build_estimator("straight-through", {"tau": 1.4})
    logits = torch.tensor([[0.3, -1.0, 2.0]], dtype=F64, requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    with st.drawing_from(Noise(torch.Generator().manual_seed(0))):
        value = st(logits, lambda h: (h * weights).sum(-1), categorical=True)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    p = torch.softmax(logits.detach() / 1.4, -1)[0]
    expected = (torch.diag(p) - torch.outer(p, p)) @ weights / 1.4
    assert torch.allclose(grad[0], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="applies to categorical units only"):
        st(torch.zeros(1, 2), lambda h: h.sum(-1))


# -- the seeds studies ---------------------------------------------------------------------------------
def test_categorical_study_plans_table8_settings():
    planned = vae_seeds.CategoricalVaeSeeds().runs(quick=False, seeds=[0, 1, 2], device="cpu")
    assert len(planned) == 2 * 6 * 3
    by_label = {p.label: p.config for p in planned if p.config.seed == 0}
    st = by_label["10x30 ST"]
    assert (st.estimator, st.estimator_params["tau"]) == ("straight-through", 1.4)
    assert (st.problem_params["lr"], st.problem_params["optimizer"]) == (7e-3, "radam")
    rao = by_label["8x4 Gumbel-Rao"]
    assert (rao.estimator_params["K"], rao.estimator_params["tau"], rao.problem_params["lr"]) == (100, 0.5, 5e-4)
    reinmax = by_label["8x4 ReinMax"].problem_params
    assert (reinmax["categories"], reinmax["latents"], reinmax["optimizer"], reinmax["protocol"]) == (8, 4, "adam",
                                                                                                      "reinmax")
    assert reinmax["steps"] == vae_seeds.CATEGORICAL_STEPS and reinmax["log_every"] == 600


def test_welch_ranking_of_a_hand_made_sample():
    values = {"a": [-100.0, -101.0, -100.5], "b": [-103.0, -103.5, -102.0], "c": [-103.2, -102.9, -103.6],
              "d": [float("nan")]}
    result = ranking.rank(values, higher_is_better=True)
    assert result.order == ["a", "b", "c"]  # d has no finite value
    first, second = result.steps
    assert first.pvalue == pytest.approx(scipy.stats.ttest_ind(values["a"], values["b"], equal_var=False).pvalue)
    assert first.established == (first.pvalue < 0.05 / 2) and not second.established
    assert "Established orderings (better > worse): a > b." in result.summary()
    assert "Not established: b vs c (p = " in result.summary()
    low = ranking.rank({"x": [1.0, 1.1], "y": [5.0]}, higher_is_better=False)
    assert low.order == ["x", "y"] and low.steps[0].pvalue is None and "untestable" in low.summary()


def test_bernoulli_study_says_which_seeds_a_label_did_not_run(tmp_path):
    """Seeds added for some labels only (3, 4 for the close calls): the others' seeds column reads 3/5,
    and the notes say those seeds were not run rather than leave a reader to guess they failed."""
    planned = vae_seeds.BernoulliVaeSeeds().runs(quick=True, seeds=[0, 1, 2, 3, 4], device="cpu")
    seeds = {"DisARM": (0, 1, 2, 3, 4), "ARM": (0, 1, 2)}
    with Store(tmp_path / "s.db") as store:
        for p in planned:
            if p.config.seed not in seeds.get(p.label, ()):
                continue
            value = -120.0 - p.config.seed / 10 - (5 if p.label == "ARM" else 0)
            store.save(RunResult(p.config, "finished", [Metric("train_set_elbo", value, 0.1, step=20)], {},
                                 "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:01+00:00", 1.0),
                       {"torch": "test"}, "abc", "cpu (test)")
        (table,) = vae_seeds.BernoulliVaeSeeds().tables(planned_results(store, planned), planned)
    rows = table.frame.set_index("estimator")
    assert rows.loc["DisARM", "seeds"] == "5/5" and rows.loc["ARM", "seeds"] == "3/5"
    assert "ARM: seeds 3, 4 not run." in table.caption and "DisARM: seed" not in table.caption
    assert "REBAR: no finished run." in table.caption and "REBAR: seeds" not in table.caption


def test_bernoulli_study_table_on_a_hand_made_store(tmp_path):
    """Three seeds of three estimators (one label never ran): the table ranks by the final
    train_set_elbo, gives mean ± sd and each adjacent Welch p-value, and says which orderings hold."""
    planned = vae_seeds.BernoulliVaeSeeds().runs(quick=True, seeds=[0, 1, 2], device="cpu")
    train = {"DisARM": (-120.0, -120.5, -119.5), "RLOO (K=2)": (-125.0, -124.0, -126.0),
             "ARM": (-125.2, -125.6, -124.9)}
    with Store(tmp_path / "s.db") as store:
        for p in planned:
            if p.label not in train:
                continue
            value = train[p.label][p.config.seed]
            metrics = [Metric("train_set_elbo", value, 0.1, step=20), Metric("test_bound", value + 10, 0.1, step=20),
                       Metric("disarm_variance", 1e-3, step=20), Metric("seconds_per_step", 0.01, step=20)]
            store.save(RunResult(p.config, "finished", metrics, {}, "2024-01-01T00:00:00+00:00",
                                 "2024-01-01T00:00:01+00:00", 1.0), {"torch": "test"}, "abc", "cpu (test)")
        text = vae_seeds.BernoulliVaeSeeds().table(store, planned, True, 120)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120
    header = next(i for i, line in enumerate(lines) if line.startswith("estimator"))
    cells = [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[header:header + 8]]
    assert cells[0] == ["estimator", "seeds", "train ELBO", "test bound", "s / step", "p to next", "holds",
                        "published"]
    assert [row[0] for row in cells[1:]] == ["DisARM", "RLOO (K=2)", "ARM", "REBAR", "RELAX", "ReinMax", "ST"]
    p_first = scipy.stats.ttest_ind(train["DisARM"], train["RLOO (K=2)"], equal_var=False).pvalue
    p_second = scipy.stats.ttest_ind(train["RLOO (K=2)"], train["ARM"], equal_var=False).pvalue
    assert cells[1] == ["DisARM", "3/3", "-120.00 ± 0.50", "-110.00 ± 0.50", "0.01", f"{p_first:.2g}",
                        "yes" if p_first < 0.05 / 2 else "no", "not found"]
    assert cells[2][5:7] == [f"{p_second:.2g}", "no"] and cells[3][5:7] == ["–", "–"]
    assert cells[4] == ["REBAR", "0/3", "–", "–", "–", "–", "–", "-111.6 (other)"]
    flat = " ".join(text.split())
    assert "DisARM > RLOO (K=2)" in flat and "Not established: RLOO (K=2) vs ARM" in flat
    assert "REBAR: no finished run" in flat and "not found" in flat and "other protocol" in flat
    # the report section finds the same study from the store alone: the same table (tables(), equal content)
    sections = vae_seeds.BernoulliVaeSeeds().sections(load_results(tmp_path / "s.db"))
    (table,) = sections[0].tables
    assert list(table.frame["estimator"]) == ["DisARM", "RLOO (K=2)", "ARM", "REBAR", "RELAX", "ReinMax", "ST"]
    with Store(tmp_path / "s.db") as store:
        (terminal,) = vae_seeds.BernoulliVaeSeeds().tables(planned_results(store, planned), planned)
    assert terminal.frame.equals(table.frame) and terminal.caption == table.caption and terminal.title == table.title
    assert table.to_text(120) in text


def test_bernoulli_study_states_the_checkpoint_unbiasedness_of_unbiased_estimators_only(tmp_path):
    """The notes give, per unbiased estimator, the smallest p(unbiased) over every checkpoint of its
    seeds and the range of coordinates left out as unmeasurable; a biased estimator's tests are not
    listed (a small p is its expected verdict, not a fault)."""
    planned = vae_seeds.BernoulliVaeSeeds().runs(quick=True, seeds=[0, 1], device="cpu")
    checkpoints = {("DisARM", 0): ((0.31, 0), (0.0042, 7)), ("DisARM", 1): ((0.9, 2), (0.05, 12)),
                   ("RLOO (K=2)", 0): ((0.5, 0), (0.6, 0)), ("ST", 0): ((1e-30, 0), (1e-40, 3))}
    with Store(tmp_path / "s.db") as store:
        for p in planned:
            if (p.label, p.config.seed) not in checkpoints:
                continue
            metrics = [Metric("train_set_elbo", -120.0 - p.config.seed, step=20)]
            for step, (pvalue, left_out) in zip((10, 20), checkpoints[p.label, p.config.seed]):
                metrics += [Metric("unbiased_pvalue", pvalue, step=step),
                            Metric("unmeasurable_coordinates", float(left_out), step=step)]
            store.save(RunResult(p.config, "finished", metrics, {}, "2024-01-01T00:00:00+00:00",
                                 "2024-01-01T00:00:01+00:00", 1.0), {"torch": "test"}, "abc", "cpu (test)")
    (table,) = vae_seeds.BernoulliVaeSeeds().sections(load_results(tmp_path / "s.db"))[0].tables
    flat = " ".join(table.caption.split())
    probe = planned[0].config.problem_params
    assert "DisARM 0.0042 over 4 tests, 0–12 of " + f"{probe['probe_batch'] * probe['latents']:,} left out" in flat
    assert "RLOO (K=2) 0.5 over 2 tests, none left out" in flat
    assert "ST 1e-40" not in flat and "ST " not in flat.split("Unbiasedness at the checkpoints")[1]


def test_categorical_study_terminal_and_report_tables_are_equal(tmp_path):
    """Three estimators of the 8x4 size ran (each with its own Table 8 learning rate): the report,
    from the store alone, gives the terminal's table, labels without runs included."""
    experiment = vae_seeds.CategoricalVaeSeeds()
    planned = experiment.runs(quick=True, seeds=[0, 1], device="cpu")
    with Store(tmp_path / "s.db") as store:
        for i, p in enumerate(planned[:6]):
            metrics = [Metric("train_elbo", -100.0 - i - p.config.seed, 0.1, step=20),
                       Metric("test_elbo", -101.0 - i, 0.1, step=20), Metric("seconds_per_step", 0.01, step=20)]
            store.save(RunResult(p.config, "finished", metrics, {}, "2024-01-01T00:00:00+00:00",
                                 "2024-01-01T00:00:01+00:00", 1.0), {"torch": "test"}, "abc", "cpu (test)")
        text = experiment.table(store, planned, True, 100)
        terminal = experiment.tables(planned_results(store, planned), planned)
    (section,) = experiment.sections(load_results(tmp_path / "s.db"))
    (report,) = section.tables  # the 10x30 size has no stored run: the report cannot know of it
    assert terminal[0].title == report.title == "Categorical VAE seeds study: 8x4, protocol reinmax, 20 steps"
    assert terminal[0].frame.equals(report.frame) and terminal[0].caption == report.caption
    assert list(report.frame["seeds"]) == ["2/2", "2/2", "2/2", "0/2", "0/2", "0/2"]
    assert report.to_text(100) in text
