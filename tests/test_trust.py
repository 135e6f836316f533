"""Flags a reader can believe: rounding floors that follow the arithmetic, events the sampler cannot
resolve left out of the tests, schedule-carrying estimators measured at a stated state, rankings
that keep unbiased and biased estimators apart, and default problems that tell estimators apart."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import estimators
import problems
from bench import harness, metrics
from problems.base import BernoulliProblem
from problems.vae import VaeProbe

pytestmark = pytest.mark.usefixtures("one_thread")

ALPHA = 1e-3  # the level the suite flags at; each statistical assertion below fails a correct run at most this often
EPS32 = float(torch.finfo(torch.float32).eps)


def measured(estimator: str, problem: str, problem_params: dict, samples: int, estimator_params: dict | None = None,
             **options) -> tuple[dict[str, float], dict]:
    result = harness.run(harness.make_config(estimator, estimator_params or {}, problem, problem_params, 0, samples,
                                             **options))
    assert result.status == "finished", result.error
    return {m.name: m.value for m in result.metrics if m.scope == "all" and m.step is None}, result.notes


# -- 1. rounding floors that follow the arithmetic -------------------------------------------------
@pytest.mark.parametrize("estimator", ["indecater", "exact"])
@pytest.mark.parametrize("problem, params", [("bernoulli-target", {"d": 10, "logit": 3.0}),
                                             ("categorical-target", {"units": 8, "K": 2, "logit": 4.0})],
                         ids=["bernoulli-target", "categorical-target"])
def test_loss_differencing_estimators_are_not_flagged_for_their_rounding(estimator, problem, params):
    """The reproduction `bench run --estimators indecater,exact --samples 10000 --problems
    'bernoulli-target(d=10,logit=3.0),categorical-target(units=8,K=2,logit=4.0)'`: both are exactly
    unbiased, yet p(unbiased) was 1.3e-36 (indecater) and 3.6e-155 (exact), and exact moments were
    withheld ("130 s.e."): they round at eps |L| (about 3e-7 here), the floor was 8 eps |g|."""
    got, notes = measured(estimator, problem, params, 10_000)
    assert got["unbiased_pvalue"] >= ALPHA
    assert got["exact_check_pvalue"] >= ALPHA, notes["exact_check"]
    assert "withheld" not in notes["exact_moments"]
    assert got["exact_bias_norm"] < 1e-12 and got["exact_variance"] < 1e-20  # float64 enumeration: exact zeros


def test_indecater_at_default_samples_is_not_flagged():
    """The second reproduction: `indecater` on categorical-target(units=5,K=2,logit=2.0) at the
    default 100,000 samples gave p(unbiased) 7.7e-06."""
    got, _ = measured("indecater", "categorical-target", {"units": 5, "K": 2, "logit": 2.0}, 100_000)
    assert got["unbiased_pvalue"] >= ALPHA


def test_the_loss_floor_is_declared_by_the_estimator_and_stays_narrow():
    # differencing estimators declare it; pathwise ones round relative to their own values
    assert estimators.build_estimator("indecater").loss_rounding == 1.0
    assert estimators.build_estimator("exact").loss_rounding == 1.0
    assert estimators.build_estimator("reinforce-loo").loss_rounding == 1.0
    assert estimators.build_estimator("straight-through").loss_rounding == 0.0
    assert estimators.build_estimator("finite-difference", {"eps": 0.05}).loss_rounding == pytest.approx(10.0)
    # a deterministic estimate within its loss rounding passes; one off by 100 times that is flagged
    truth = torch.tensor([1e-3, -2e-3, 5e-4], dtype=torch.float64)
    loss_scale = 2.5
    for offset, flagged in ((0.5 * EPS32 * loss_scale, False), (100 * 8 * EPS32 * loss_scale, True)):
        moments = metrics.GradientMoments(truth, 1000)
        moments.add((truth + offset).expand(1000, 3).to(torch.float32).to(torch.float64))
        moments.rounding_scale = loss_scale
        pvalue = {m.name: m.value for m in moments.metrics()}["unbiased_pvalue"]
        assert (pvalue < ALPHA) == flagged, (offset, pvalue)


def test_the_run_measures_the_loss_scale_it_rounds_at():
    # bernoulli-target(d=10, t=0.45, logit=3): every h is 0 or 1, (h - t)^2 is 0.3025 or 0.2025,
    # so mean |L| lies between 2.025 and 3.025; the floor scales with it
    problem = problems.build_problem("bernoulli-target", {"d": 10, "logit": 3.0})
    probe = harness.LossProbe(8, torch.device("cpu"))
    estimator = estimators.build_estimator("indecater")
    with estimator.drawing_from(harness.seeded_noise(0, 0, torch.device("cpu"))):
        problem.sample_gradients(estimator, 8, probe)
    mean_abs = float(probe.loss_abs) / probe.loss_values
    assert probe.loss_values == 8 * 20 and 2.025 <= mean_abs <= 3.025


# -- 2. events the sampler cannot resolve ------------------------------------------------------------
@pytest.fixture
def saturated_probe():
    """A Bernoulli VAE probe (4 latents, 3 examples, exact reference) whose encoder has saturated as
    the trained VAE's did: three latents beyond |logit| 16.6 (never drawn in float32) and two at
    logit -9 (p = 1.2e-4, expected 0.12 times in 1,000 estimates)."""

    class SaturatedProbe(VaeProbe):
        def __init__(self, reference_method: str = "auto"):
            super().__init__(reference_method=reference_method, reference_samples=2048)
            with torch.no_grad():
                for (example, latent), logit in {(0, 0): -18.0, (1, 2): -18.0, (2, 1): 18.0,
                                                 (0, 3): -9.0, (2, 3): -9.0}.items():
                    self.logits1[example, latent] = logit

    problems.PROBLEMS.register("saturated-vae-probe", "test-only saturated VAE probe")(SaturatedProbe)
    yield "saturated-vae-probe"
    problems.PROBLEMS._entries.pop("saturated-vae-probe")


@pytest.mark.parametrize("reference", ["auto", "sampled"])
@pytest.mark.parametrize("estimator", ["reinforce-loo", "disarm", "rebar"])
def test_unresolvable_events_are_left_out_and_counted(saturated_probe, estimator, reference):
    """The Bernoulli-VAE record said DisARM and RLOO were biased at p = 0 (z = 2^20) and REBAR at
    p = 1e-44: latents whose event no sample drew. Reproduced here at 1,000 estimates (the probe's),
    those coordinates are left out of the test, counted, and named in the notes."""
    params = {"K": 2} if estimator == "reinforce-loo" else {}
    got, notes = measured(estimator, saturated_probe, {"reference_method": reference}, 1000, params)
    assert got["unbiased_pvalue"] >= ALPHA
    assert got["unmeasurable_coordinates"] == 5
    assert notes["unmeasurable"].startswith("5 of 12 coordinates left out")
    for coordinate in ("0 (p = 1.5e-08)", "3 (p = 0.00012)", "6 (p = 1.5e-08)", "9 (p = 1.5e-08)", "11 (p = 0.00012)"):
        assert coordinate in notes["unmeasurable"]


def test_a_biased_estimator_is_still_flagged_on_the_measurable_coordinates(saturated_probe):
    got, _ = measured("straight-through", saturated_probe, {}, 1000)
    assert got["unbiased_pvalue"] < 1e-12 and got["unmeasurable_coordinates"] == 5


def test_the_resolution_is_the_float_grid_or_the_run_size():
    target = problems.build_problem("bernoulli-target", {"d": 3, "logit": -18.0})
    index, probability, why = harness.unresolved_events(target, estimators.build_estimator("reinforce"), 10**9)
    assert list(index) == [0, 1, 2] and "grid of float32 uniforms" in why
    assert harness.event_resolution(target, 10**9)[0] == 2.0**-24
    # a run of n estimates resolves an event expected at least ln(events / alpha) times
    assert harness.event_resolution(target, 1000, 3)[0] == pytest.approx(math.log(3 / ALPHA) / 1000)
    assert harness.unresolved_events(target, estimators.build_estimator("exact"), 1000) is None  # nothing sampled
    middle = problems.build_problem("bernoulli-target", {"d": 3, "logit": -4.0})  # p = 0.018
    assert len(harness.unresolved_events(middle, estimators.build_estimator("reinforce"), 100)[0]) == 3
    assert len(harness.unresolved_events(middle, estimators.build_estimator("reinforce"), 10_000)[0]) == 0


def test_event_probabilities_are_per_coordinate():
    categorical = problems.build_problem("categorical-target", {"units": 2, "K": 3, "logit": 30.0})
    events = categorical.event_probabilities()
    probs = torch.softmax(categorical.logits.double(), -1).reshape(-1)
    assert events.shape == (6,)
    torch.testing.assert_close(events, torch.minimum(probs, 1 - probs), rtol=1e-6, atol=0)  # 1 - p exact near 1
    assert float(events.min()) > 0
    two_layer = VaeProbe(architecture="two-layer", latents=3, batch=2)
    events = two_layer.event_probabilities()
    assert events.shape == (two_layer.dim,) and bool(events[:6].isfinite().all()) and bool(events[6:].isnan().all())


# -- 3. schedule-carrying estimators measured at a stated state ----------------------------------------
class BernoulliLinearLoss(BernoulliProblem):
    """L(h) = w'h: straight-through through sigm(a) is exact on it (E[dL/dh sigm'(a)] = w sigm'(a))."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.register_buffer("w", torch.tensor([1.0, -2.0, 0.5, 3.0][:d]))
        self.register_buffer("logits", torch.tensor([0.3, -1.0, 1.5, -0.2][:d]))

    def loss(self, h):
        return h @ self.w

    def exact_gradient(self):
        p = torch.sigmoid(self.logits.double())
        return self.w.double() * p * (1 - p)


@pytest.fixture
def linear_loss():
    problems.PROBLEMS.register("test-linear-loss", "test-only linear loss")(BernoulliLinearLoss)
    yield "test-linear-loss"
    problems.PROBLEMS._entries.pop("test-linear-loss")


def test_slope_annealed_st_is_measured_at_its_declared_slope(linear_loss):
    """The 10,000-estimate warm-up annealed the slope from 1.0 to 1.157, so on a linear loss, where
    slope 1 is exact, it was reported biased (p = 0). Warm-up adapts baselines only now."""
    got, notes = measured("slope-annealed-st", linear_loss, {}, 100_000)  # default warm-up: 10,000
    assert got["unbiased_pvalue"] >= ALPHA
    assert got["exact_bias_norm"] < 1e-12
    assert notes["schedule"].startswith("measured at slope 1 (after 0 steps")
    # the state it declares is the state measured: slope 2 is biased on the same loss
    got, notes = measured("slope-annealed-st", linear_loss, {}, 100_000, {"slope": 2.0})
    assert got["unbiased_pvalue"] < 1e-12 and notes["schedule"].startswith("measured at slope 2 ")


def test_summary_footer_states_the_schedule_held_not_a_frozen_baseline(linear_loss):
    """The summary's footer listed slope-annealed-st among the estimators 'measured with the running
    statistics frozen', describing 'the baseline it reached': it has no baseline, and its slope is held
    at 1 (the stored traits carry no ``schedule``, so the footer read the run's notes wrongly)."""
    from bench.summary import stateful_notes
    runs = []
    for name in ("slope-annealed-st", "reinforce-ma"):
        result = harness.run(harness.make_config(name, {}, linear_loss, {}, 0, 1_000, warmup=640))
        assert result.status == "finished", result.error
        runs.append((name, result.notes))
    baseline, schedule = stateful_notes(runs)
    assert baseline.startswith("reinforce-ma: stateful, measured with the running statistics frozen after a warm-up")
    assert "slope-annealed-st" not in baseline
    assert schedule.startswith("slope-annealed-st: a schedule, measured at slope 1 (after 0 steps")
    assert schedule.endswith("the warm-up held the schedule (it adapts baselines only).")


def test_training_still_advances_the_schedule_and_warm_up_holds_it():
    problem = BernoulliLinearLoss()
    estimator = estimators.build_estimator("slope-annealed-st")
    harness.warm_up(problem, estimator, harness.make_config("slope-annealed-st", {}, "bernoulli-target", {}, 0, 64))
    assert estimator.current_slope == 1.0 and estimator.schedule and not estimators.build_estimator("reinmax").schedule
    with estimator.drawing_from(harness.seeded_noise(0, 0, torch.device("cpu"))):
        for _ in range(3):  # three training steps
            problem.sample_gradients(estimator, 8)
    assert estimator.current_slope == pytest.approx(1.003)
    assert estimator.layer(1).schedule_held is False
    with estimator.holding_schedule():
        assert estimator.layer(1).schedule_held is True and not estimator.advances_schedule


# -- 4. rankings that keep unbiased and biased estimators apart -------------------------------------
BLACKBOX_SWEEP = ("exact", "reinforce-loo", "disarm", "reinforce", "sigmoid", "sigmoid-noise", "straight-through",
                  "gumbel-softmax")


@pytest.fixture(scope="module")
def blackbox_store(tmp_path_factory):
    """A sweep on bernoulli-blackbox(d=8), where the old ranking put exact (256 evaluations),
    sigmoid, sigmoid-noise and gumbel-softmax ahead of every unbiased one-evaluation estimator."""
    from bench.store import Store

    db = tmp_path_factory.mktemp("ranking") / "r.db"
    configs = [harness.make_config(name, {}, "bernoulli-blackbox", {"d": 8}, 0, 4000) for name in BLACKBOX_SWEEP]
    torch.set_num_threads(1)
    with Store(db) as store:
        for config in configs:
            result = harness.run(config)
            assert result.status == "finished", result.error
            store.save(result, {}, None, "cpu")
    return db, configs


def _summary_blocks(text: str) -> dict[str, tuple[str, list[list[str]]]]:
    """'unbiased' / 'biased' -> (title, rows split into cells, the header first) of one problem."""
    blocks = {}
    for block in text.split("\n\n"):
        lines = block.splitlines()
        header = next((i for i, line in enumerate(lines) if line.lstrip().startswith("#  estimator")), None)
        if header is not None:
            title = " ".join(lines[:header])
            kind = title.split(": ", 1)[1].split(",")[0]
            blocks[kind] = (title, [line.split() for line in lines[header:] if not line.startswith("  ")])
    return blocks


def test_the_summary_ranks_unbiased_estimators_among_themselves(blackbox_store):
    from benchcli.cli import summary_table
    from bench.store import Store

    db, configs = blackbox_store
    with Store(db, create=False) as store:
        text = summary_table(store, configs, width=100)
        small_budget = summary_table(store, configs, width=100, budget=10)
    blocks = _summary_blocks(text)
    assert set(blocks) == {"unbiased", "biased and deterministic"}, text
    title, (header, *rows) = blocks["unbiased"]
    assert "ranked by MSE×evals (equal loss evaluations)" in title and header[3] == "MSE×evals"
    assert {row[1] for row in rows} == {"exact", "reinforce-loo", "disarm", "reinforce"}
    assert rows[0][:2] == ["1", "exact"] and rows[1][0] == "2"  # the first one-evaluation-class estimator is 2nd here
    title, (header, *rows) = blocks["biased and deterministic"]
    assert "ranked by MSE@100 (bias² counts)" in title and header[3] == "MSE@100" and "MSE×evals" not in header
    assert {row[1] for row in rows} == {"sigmoid", "sigmoid-noise", "straight-through", "gumbel-softmax"}
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]
    # MSE@100 = bias² + variance / 100 for these one-evaluation estimators: ranked by it
    values = [float(row[3].split("±")[0]) for row in rows]
    assert values == sorted(values)
    legend = " ".join(text.split("\n\nMean over seeds", 1)[1].split())
    assert "it ranks the unbiased estimators" in legend
    assert "it ranks the biased estimators and deterministic baselines, whose bias² does not average away" in legend
    assert "MSE@10" in small_budget and "a budget of 10 loss evaluations" in " ".join(small_budget.split())


def test_the_report_ranks_the_two_groups_apart(blackbox_store):
    from analysis import report
    from analysis.frames import load_results

    db, _ = blackbox_store
    results = load_results(db)
    unbiased, biased = report.estimator_summary(results)
    assert unbiased.title.endswith(": unbiased estimators")
    assert set(unbiased.frame["estimator"]) == {"exact", "reinforce-loo", "disarm", "reinforce"}
    assert "ranked by MSE × loss evaluations" in unbiased.caption
    assert set(biased.frame["estimator"]) == {"sigmoid", "sigmoid-noise", "straight-through", "gumbel-softmax"}
    assert "ranked by the MSE at 100 loss evaluations" in biased.caption
    (cost,) = report.cost_adjusted(results)
    groups = cost.frame["unbiased"].tolist()
    assert groups == sorted(groups, key=lambda g: g != "unbiased")  # every unbiased row before every biased one


def test_budget_is_an_option_of_run_and_report(tmp_path, capsys):
    from benchcli.cli import main

    db = tmp_path / "r.db"
    code = main(["run", "--estimators", "reinforce,sigmoid", "--problems", "bernoulli-target(d=2)", "--samples",
                 "500", "--db", str(db), "--budget", "7"])
    out = capsys.readouterr().out
    assert code == 0 and "ranked by MSE@7 (bias² counts)" in out
    code = main(["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--db", str(db),
                 "--budget", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--budget" in err
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "report"), "--budget", "7"]) == 0
    assert "MSE at 7 evals" in (tmp_path / "report" / "summary.md").read_text()


# -- 5. default problems that tell estimators apart ---------------------------------------------------
@pytest.mark.parametrize("pair", [("reinmax", "straight-through-sigmoid"), ("reinforce-optimal", "reinforce-ma")],
                         ids=["reinmax-vs-st-sigmoid", "optimal-vs-moving-average"])
def test_every_default_problem_tells_the_pair_apart(pair):
    """At the old default bernoulli-target(d=4,t=0.45) (logit 0, p = 1/2) each pair coincided to
    the digits shown (exact moments equal to 1e-7). Every default problem now separates them: their
    exact bias or variance differ by more than 1 %."""
    from benchcli.commands.run import DEFAULT_PROBLEMS
    from bench.specs import parse_spec_list

    for name, params in parse_spec_list(DEFAULT_PROBLEMS):
        exact = [measured(estimator, name, params, 20_000)[0] for estimator in pair]
        assert all("exact_variance" in e for e in exact), (name, pair)
        differ = [abs(exact[0][k] - exact[1][k]) > 0.01 * max(exact[0][k], exact[1][k]) + 1e-9  # not two zeros
                  for k in ("exact_bias_norm", "exact_variance")]
        assert any(differ), (name, pair, exact)
