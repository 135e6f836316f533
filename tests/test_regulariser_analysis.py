"""experiments.mlp_regulariser (formerly analysis.regulariser): binary stochastic units as a regulariser (problems named *-mlp), on stores
written through Store.save with hand-made learning curves and checkpoint metrics."""
from __future__ import annotations

import math

import pytest
from scipy import stats

import experiments
from analysis import figures, report
from analysis.frames import load_results
from experiments import mlp_regulariser as regulariser
from experiments.mlp_regulariser import CLAIM, CONTROL, NOISE_CONTROL, epochs_to_reach, quantisation
from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.store import Store

PROBLEM = "toy-mlp"   # not registered: its label is its name
EPOCHS = 4
OFFSETS = {3: (-0.25, 0.0, 0.25), 2: (-0.25, 0.25), 1: (0.0,)}  # per-seed shift of every error, by seed count
# Mean over seeds of the training error (mean-field net) at epochs 1..4; dyadic, so the means are exact.
TRAIN = {CONTROL: (6.0, 3.0, 1.5, 1.0), CLAIM: (8.0, 5.0, 3.0, 2.0), NOISE_CONTROL: (7.0, 4.0, 2.0, 1.5)}
TEST_FINAL = {CONTROL: 2.0, CLAIM: 1.5, NOISE_CONTROL: 1.75}
TRAIN_GAP = {CONTROL: 0.0, CLAIM: 3.0, NOISE_CONTROL: 1.0}   # sampled − mean-field, plus the seed's shift x 1
TEST_GAP = {CONTROL: 0.0, CLAIM: 0.5, NOISE_CONTROL: 0.25}
SECONDS = {CONTROL: 10.0, CLAIM: 20.0, NOISE_CONTROL: 15.0}  # per epoch, plus the seed
# Checkpoint metrics at epochs 0 and 4 (scopes all, layer1, layer2): variance and the mini-batch
# variance it is a quarter of (the control: 0 of 1), relative bias, cosine.
VARIANCE = {CONTROL: (0.0, 0.0), CLAIM: (1e-2, 4e-3), NOISE_CONTROL: (1e-5, 2e-5)}
RELATIVE_BIAS = {CONTROL: (0.25, 0.375), CLAIM: (0.5, 0.75), NOISE_CONTROL: (0.125, 0.125)}
COSINE = {CONTROL: (0.75, 0.5), CLAIM: (0.625, 0.25), NOISE_CONTROL: (0.875, 0.875)}
# The reference's noise floor relative to ‖g‖ (reference_stderr_norm / ‖g‖), mean over seeds; per seed
# it is shifted by shift / 8 and ‖g‖ = 2 ** (seed + 1), so a ratio of means would differ from it.
FLOOR = {CONTROL: (0.0625, 0.0625), CLAIM: (0.125, 0.5), NOISE_CONTROL: (0.25, 0.25)}
FLOOR_HEADING = "reference noise floor (relative)"
SE = 0.01


def mlp_metrics(name: str, shift: float, seed: int, train: tuple[float, ...] | None = None,
                reference: bool = True) -> list[Metric]:
    """``reference=False``: no reference_stderr_norm (as with an exact reference)."""
    train = TRAIN[name] if train is None else train
    norm = 2.0 ** (seed + 1)  # ‖g‖
    out = [Metric("lr", 0.1), Metric("momentum", 0.9)]
    for epoch, error in enumerate(train, start=1):
        test = TEST_FINAL[name] + 0.5 * (len(train) - epoch) + shift
        out += [Metric("train_error", error + shift, epoch=epoch),
                Metric("train_error_sampled", error + TRAIN_GAP[name] + 2 * shift, epoch=epoch),
                Metric("test_error", test, epoch=epoch),
                Metric("test_error_sampled", test + TEST_GAP[name], epoch=epoch),
                Metric("train_criterion", error / 10, epoch=epoch),
                Metric("epoch_time_s", SECONDS[name] + seed, epoch=epoch)]
    for index, epoch in enumerate((0, len(train))):
        for scope in ("all", "layer1", "layer2"):
            variance = VARIANCE[name][index]
            out += [Metric("variance", variance, 0.0 if variance == 0 else variance / 10, scope=scope, epoch=epoch),
                    Metric("minibatch_variance", 1.0 if variance == 0 else 4 * variance, scope=scope, epoch=epoch),
                    Metric("relative_bias", RELATIVE_BIAS[name][index], SE, scope=scope, epoch=epoch),
                    Metric("cosine", COSINE[name][index], SE, scope=scope, epoch=epoch),
                    Metric("bias_norm", RELATIVE_BIAS[name][index] * norm, SE, scope=scope, epoch=epoch)]
            if reference:
                floor = FLOOR[name][index] + shift / 8
                out.append(Metric("reference_stderr_norm", floor * norm, scope=scope, epoch=epoch))
    return out


def save(store: Store, estimator: str, metrics: list[Metric], seed: int = 0, problem: str = PROBLEM,
         problem_params: dict | None = None, samples: int = 0, params: dict | None = None) -> int:
    config = RunConfig(estimator, params or {}, problem, problem_params or {}, seed, samples)
    result = RunResult(config, "finished", metrics, {"reference": "estimated"}, "2024-01-01T00:00:00.000+00:00",
                       "2024-01-01T00:00:02.000+00:00", 2.0, None)
    return store.save(result, {"torch": "test"}, "abc123", "cpu (test)")


def write_store(path, seeds: dict[str, int] | None = None, train: dict[str, tuple] | None = None,
                no_reference: tuple[str, ...] = ()) -> None:
    """Runs of the three estimators (by default 3, 3 and 2 seeds) with the curves above; those in
    ``no_reference`` without reference_stderr_norm."""
    seeds = {CONTROL: 3, CLAIM: 3, NOISE_CONTROL: 2} if seeds is None else seeds
    with Store(path) as store:
        for name, count in seeds.items():
            for seed, shift in enumerate(OFFSETS[count]):
                save(store, name, mlp_metrics(name, shift, seed, (train or {}).get(name), name not in no_reference),
                     seed=seed)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "r.db"
    write_store(path)
    return path


def finals(name: str, base: float) -> list[float]:
    return [base + shift for shift in OFFSETS[3 if name != NOISE_CONTROL else 2]]


def estimator_lines(ax) -> list[tuple[float, ...]]:
    """y of each estimator's line (error-bar caps are not lines with circle markers)."""
    return [tuple(float(y) for y in line.get_ydata()) for line in ax.lines if line.get_marker() == "o"]


def sentence(sentences: list[str], start: str) -> str:
    (found,) = [s for s in sentences if s.startswith(f"{PROBLEM}: {start}")]
    return found


def test_epochs_to_reach_hand_made_curves(db):
    metrics = load_results(db).metrics
    reach = epochs_to_reach(metrics, 2.0).set_index("estimator")
    assert reach.at[CONTROL, "epoch"] == 3 and reach.at[CONTROL, "seconds"] == 3 * 11.0  # seeds 0-2: 10, 11, 12 s
    assert reach.at[CLAIM, "epoch"] == 4 and reach.at[CLAIM, "seconds"] == 4 * 21.0
    assert reach.at[NOISE_CONTROL, "epoch"] == 3 and reach.at[NOISE_CONTROL, "value"] == 2.0  # <= is inclusive
    assert reach.at[NOISE_CONTROL, "seconds"] == 3 * 15.5 and reach.at[NOISE_CONTROL, "seeds"] == 2
    assert reach["reached"].all()

    never = epochs_to_reach(metrics, 0.5).set_index("estimator")
    assert not never["reached"].any() and never["epoch"].isna().all() and never["seconds"].isna().all()
    assert never.at[CLAIM, "best"] == 2.0 and never.at[CLAIM, "best_epoch"] == 4 and never.at[CLAIM, "last_epoch"] == 4

    # A threshold equal to a mean up to float rounding counts as reached; a truly smaller one does not.
    assert epochs_to_reach(metrics, 2.0 * (1 - 1e-14)).set_index("estimator").at[CLAIM, "epoch"] == 4
    assert not epochs_to_reach(metrics, 2.0 * (1 - 1e-9)).set_index("estimator").at[CLAIM, "reached"]

    first = epochs_to_reach(metrics, 100.0).set_index("estimator")
    assert first.at[CONTROL, "epoch"] == 1 and first.at[CONTROL, "seconds"] == 11.0
    # Another metric, the same rule: the test error (final means 2, 1.5, 1.75) reaches 1.75 at epoch 4 or never.
    test = epochs_to_reach(metrics, 1.75, metric="test_error").set_index("estimator")
    assert test["reached"].to_dict() == {CONTROL: False, CLAIM: True, NOISE_CONTROL: True}


def test_epochs_to_reach_uses_epochs_every_seed_reached(tmp_path):
    path = tmp_path / "r.db"
    with Store(path) as store:
        save(store, CONTROL, [Metric("train_error", v, epoch=e) for e, v in ((1, 4.0), (2, 1.0), (3, 0.5))])
        save(store, CONTROL, [Metric("train_error", v, epoch=e) for e, v in ((1, 2.0), (2, 1.0))], seed=1)
        save(store, CLAIM, [Metric("train_error", 1.0, epoch=1)])  # no epoch_time_s stored
    reach = epochs_to_reach(load_results(path).metrics, 1.0).set_index("estimator")
    # Epoch 3 is seed 0's alone: the mean curve stops at epoch 2 (mean 1.0).
    assert reach.at[CONTROL, "epoch"] == 2 and reach.at[CONTROL, "last_epoch"] == 2 and reach.at[CONTROL, "seeds"] == 2
    assert reach.at[CLAIM, "epoch"] == 1 and math.isnan(reach.at[CLAIM, "seconds"])
    assert epochs_to_reach(load_results(path).metrics, 0.5)["reached"].sum() == 0
    assert list(epochs_to_reach(load_results(path).metrics, 1.0, metric="absent").columns) == regulariser.REACH_COLUMNS


def test_speed_table_cells(db):
    mlp = regulariser.mlp_results(load_results(db))
    (table,) = regulariser.speed_tables(mlp, thresholds=(2.0, 0.5))
    frame = table.frame.set_index("estimator")
    assert list(frame.columns) == ["seeds", "≤ 2 %", "≤ 0.5 %", f"≤ {CONTROL}'s final 1 %"]
    assert frame.loc[CONTROL].tolist() == ["3", "epoch 3 (33 s)", "not reached", "epoch 4 (44 s)"]
    assert frame.loc[CLAIM].tolist() == ["3", "epoch 4 (84 s)", "not reached", "not reached"]
    assert frame.loc[NOISE_CONTROL].tolist() == ["2", "epoch 3 (46.5 s)", "not reached", "not reached"]
    assert f"mean over 3 seeds of {CONTROL}'s final training error" in table.caption


def test_quantisation_gaps(db):
    table = quantisation(load_results(db).metrics).set_index(["estimator", "quantity"])
    # Per seed the sampled training error is the mean-field one + gap + the seed's shift (-0.25, 0, 0.25).
    assert table.loc[(CLAIM, "train_gap"), "mean"] == 3.0
    assert table.loc[(CLAIM, "train_gap"), "sd"] == pytest.approx(0.25, rel=1e-12)
    assert table.loc[(CLAIM, "train_error_sampled"), "mean"] == 5.0 and table.loc[(CLAIM, "train_error"), "mean"] == 2.0
    assert table.loc[(CLAIM, "test_gap"), "mean"] == 0.5 and table.loc[(CLAIM, "test_gap"), "sd"] == 0.0
    assert table.loc[(CONTROL, "train_gap"), "mean"] == 0.0 and table.loc[(NOISE_CONTROL, "train_gap"), "n"] == 2
    assert table.loc[(NOISE_CONTROL, "train_gap"), "mean"] == 1.0
    assert table.loc[(NOISE_CONTROL, "test_error_sampled"), "mean"] == 2.0
    (shown,) = regulariser.quantisation_tables(regulariser.mlp_results(load_results(db)))
    row = shown.frame.set_index("estimator").loc[CLAIM]
    assert row["train: sampled − mean-field (points)"] == "3 ± 0.25" and row["seeds"] == "3"
    assert row["test error, sampled (%)"] == "2 ± 0.25" and row["test: sampled − mean-field (points)"] == "0.5 ± 0"


def test_conclusion_when_the_claim_holds(db):
    sentences = regulariser.conclusions(regulariser.mlp_results(load_results(db)))
    speed = sentence(sentences, "training speed")
    assert f"the control's final training error is 1 % (mean-field net, mean of 3 seeds of {CONTROL})" in speed
    assert (f"{CLAIM} does not reach it within 4 epochs (3 seeds; its lowest mean is 2 % at epoch 4), while "
            f"{CONTROL} reaches it at epoch 4 after 44 s of training: {CLAIM} trains slower.") in speed

    train = sentence(sentences, f"at the final epoch {CLAIM} ends with a higher training error")
    pvalue = stats.ttest_ind(finals(CLAIM, 2.0), finals(CONTROL, 1.0), equal_var=False).pvalue
    assert (f"than {CONTROL}, as the claim says: 2 ± 0.25 % (3 seeds) against 1 ± 0.25 % (3 seeds), mean ± sd "
            f"over seeds; Welch's t-test p = {report.fmt(pvalue, 3)}.") in train
    test = sentence(sentences, f"at the final epoch {CLAIM} ends with a lower test error")
    assert "as the claim says: 1.5 ± 0.25 % (3 seeds) against 2 ± 0.25 % (3 seeds)" in test

    noise = sentence(sentences, "reason 1 (gradient noise)")
    variance = [report.fmt_pm(v, math.sqrt(3 * (v / 10) ** 2) / 3, 3) for v in VARIANCE[CLAIM]]
    assert f"add a variance of {variance[0]} at epoch 0 and {variance[1]} at epoch 4" in noise
    assert ("as a share of the variance of its one-draw gradient across random training mini-batches (variance / "
            "minibatch_variance) that is 0.25 at epoch 0 and 0.25 at epoch 4.") in noise
    control = sentence(sentences, f"the noise control {NOISE_CONTROL}")
    assert (f"{NOISE_CONTROL} 1.5 ± 0.35 % / 1.75 ± 0.35 % (2 seeds); {CLAIM} 2 ± 0.25 % / 1.5 ± 0.25 % "
            "(3 seeds)") in control
    assert (f"lies 50 % of the way from {CONTROL}'s to {CLAIM}'s, so unit noise of the binary units' size, without "
            f"quantisation, accounts for most of it; it does not reach {CONTROL}'s final training error "
            "(1 %) within 4 epochs") in control

    quantised = sentence(sentences, "reason 2 (quantisation)")
    assert ("takes its training error from 2 % (mean-field) to 5 % (sampled), a gap of 3 ± 0.25 points "
            "(3 seeds)") in quantised
    assert f"for {NOISE_CONTROL} the training error goes from 1.5 % (mean-field) to 2.5 % (sampled)" in quantised

    bias = sentence(sentences, "reason 3 (biased backward pass)")
    se = math.sqrt(3 * SE**2) / 3
    # 0.5 > 2 x 0.125: resolved; 0.75 <= 2 x 0.5: not.
    assert (f"has relative bias {report.fmt_pm(0.5, se, 3)} at epoch 0 and {report.fmt_pm(0.75, se, 3)} at epoch 4 "
            "(at epoch 0 above 2× the reference's noise floor of 0.125; at epoch 4 within 2× the reference's noise "
            f"floor of 0.5, so not resolved) and mean cosine {report.fmt_pm(0.625, se, 3)} at epoch 0 and "
            f"{report.fmt_pm(0.25, se, 3)} at epoch 4 "
            "(scope all, mean ± s.e. of 3 seeds") in bias
    assert f"{CONTROL}: relative_bias {report.fmt_pm(0.375, se, 3)} at epoch 4" in bias
    assert not any("missing" in s or "not assessed" in s for s in sentences)


def test_conclusion_when_the_claim_fails(tmp_path):
    path = tmp_path / "r.db"
    write_store(path, train={CLAIM: TRAIN[CONTROL], CONTROL: TRAIN[CLAIM]})  # the curves swapped
    sentences = regulariser.conclusions(regulariser.mlp_results(load_results(path)))
    speed = sentence(sentences, "training speed")
    # The control's final 2 %: the claim's curve gets there at epoch 3 (3 x 21 s), the control's at 4 (4 x 11 s).
    assert (f"{CLAIM} reaches it at epoch 3 after 63 s of training (mean of 3 seeds), {CONTROL} at epoch 4 after "
            f"44 s of training: {CLAIM} trains faster in epochs and slower in seconds.") in speed
    train = sentence(sentences, f"at the final epoch {CLAIM} ends with a lower training error")
    assert (f"than {CONTROL}, where the claim says higher: 1 ± 0.25 % (3 seeds) against 2 ± 0.25 % (3 seeds)"
            in train)
    control = sentence(sentences, f"the noise control {NOISE_CONTROL}")
    assert f"lies 50 % of the way from {CONTROL}'s to {CLAIM}'s" in control  # (1.5 − 2) / (1 − 2)
    assert f"it reaches {CONTROL}'s final training error (2 %) at epoch 3" in control


@pytest.mark.parametrize("final, words", [
    (0.5, "lies -50 % of the way from sigmoid's to straight-through-sigmoid's, so unit noise of the binary units' "
          "size, without quantisation, accounts for none of it; it reaches sigmoid's final training error (1 %) at "
          "epoch 4"),
    (1.25, "lies 25 % of the way from sigmoid's to straight-through-sigmoid's, so unit noise of the binary units' "
           "size, without quantisation, accounts for less than half of it;"),
    (2.5, "lies 150 % of the way from sigmoid's to straight-through-sigmoid's, so unit noise of the binary units' "
          "size, without quantisation, accounts for all of it or more;")], ids=["below-control", "nearer-control",
                                                                              "beyond-claim"])
def test_noise_control_is_placed_between_control_and_claim(tmp_path, final, words):
    path = tmp_path / "r.db"
    write_store(path, train={NOISE_CONTROL: (7.0, 4.0, 2.0, final)})
    sentences = regulariser.conclusions(regulariser.mlp_results(load_results(path)))
    assert words in sentence(sentences, f"the noise control {NOISE_CONTROL}")


def test_runs_are_matched_by_name_and_other_parameters_are_said(tmp_path):
    path = tmp_path / "r.db"
    with Store(path) as store:
        for name in (CONTROL, CLAIM):
            for seed, shift in enumerate(OFFSETS[3]):
                save(store, name, mlp_metrics(name, shift, seed), seed=seed, params={"x": 1} if name == CLAIM else None)
        save(store, CLAIM, mlp_metrics(CLAIM, 5.0, 0, (9.0, 9.0, 9.0, 9.0)), params={"x": 2})  # one run: left out
    results = load_results(path)
    assert set(results.runs["estimator_label"]) == {CONTROL, f"{CLAIM}(x=1)", f"{CLAIM}(x=2)"}
    sentences = regulariser.conclusions(regulariser.mlp_results(results))
    assert sentences[0] == (f"{PROBLEM}: {CLAIM} has runs with different parameters; the sentences below use "
                            f"{CLAIM}(x=1) (3 seeds), the label with the most runs, and leave out {CLAIM}(x=2).")
    train = sentence(sentences, f"at the final epoch {CLAIM} ends with a higher training error")
    assert "2 ± 0.25 % (3 seeds) against 1 ± 0.25 % (3 seeds)" in train


def test_missing_estimators_and_small_samples_are_said(tmp_path):
    path = tmp_path / "r.db"
    write_store(path, seeds={CLAIM: 1})
    sentences = regulariser.conclusions(regulariser.mlp_results(load_results(path)))
    assert sentence(sentences, "training speed") == (
        f"{PROBLEM}: training speed of {CLAIM} against {CONTROL}: not assessed, {CONTROL} runs are missing.")
    assert sentence(sentences, "final training error") == (
        f"{PROBLEM}: final training error (mean-field net) of {CLAIM} against {CONTROL}: not assessed, "
        f"{CONTROL} runs are missing.")
    assert sentence(sentences, f"the noise control {NOISE_CONTROL}").endswith(
        f"not assessed, {NOISE_CONTROL} and {CONTROL} runs are missing.")
    quantised = sentence(sentences, "reason 2")
    assert f"the same for {NOISE_CONTROL} is missing; the same for {CONTROL} is missing." in quantised
    assert "(1 seed)" in quantised
    assert f"{NOISE_CONTROL}: missing; {CONTROL}: missing." in sentence(sentences, "reason 3")

    path = tmp_path / "small.db"
    write_store(path, seeds={CLAIM: 1, CONTROL: 3})
    sentences = regulariser.conclusions(regulariser.mlp_results(load_results(path)))
    train = sentence(sentences, f"at the final epoch {CLAIM} ends with a higher training error")
    assert train.endswith("n is too small for Welch's t-test (2 or more seeds each needed, 1 and 3 here).")
    assert "2 % (1 seed) against 1 ± 0.25 % (3 seeds)" in train

    path = tmp_path / "no-claim.db"
    with Store(path) as store:
        save(store, CONTROL, [Metric("train_error", 1.0, epoch=1), Metric("test_error", 2.0, epoch=1)])
    sentences = regulariser.conclusions(regulariser.mlp_results(load_results(path)))
    assert sentence(sentences, "reason 1 (gradient noise)").endswith(f"not assessed, {CLAIM} runs are missing.")
    assert sentence(sentences, "reason 2") == (
        f"{PROBLEM}: reason 2 (quantisation): not assessed, {CLAIM} runs are missing.")
    assert sentence(sentences, "reason 3") == (
        f"{PROBLEM}: reason 3 (biased backward pass): not assessed, {CLAIM} runs are missing.")
    assert regulariser.gradient_tables(regulariser.mlp_results(load_results(path))) == []
    assert isinstance(regulariser.gradient_figure(regulariser.mlp_results(load_results(path))), figures.Missing)


def test_gradient_figure_and_table(db):
    mlp = regulariser.mlp_results(load_results(db))
    figure = regulariser.gradient_figure(mlp)
    assert isinstance(figure, figures.Figure)
    axes = figure.figure.axes
    assert len(axes) == 2 * 4  # layer1, layer2 x variance, relative bias, cosine, noise share
    assert [ax.get_title() for ax in axes[::4]] == [f"{PROBLEM}, layer1", f"{PROBLEM}, layer2"]
    variance, bias, cosine, share = axes[:4]
    # The variance spans 1e-5 .. 1e-2: log; the control's zeros sit at a quarter of the smallest value.
    assert variance.get_yscale() == "log" and variance.get_ylabel().endswith("(log)")
    assert sorted(estimator_lines(variance)) == sorted([(1e-5 / 4, 1e-5 / 4), (1e-2, 4e-3), (1e-5, 2e-5)])
    assert bias.get_yscale() == "linear" and cosine.get_yscale() == "linear"
    assert sorted(estimator_lines(share)) == sorted([(0.0, 0.0), (0.25, 0.25), (0.25, 0.25)])
    assert variance.get_xlabel() == "checkpoint epoch"
    legend = [t.get_text() for legend in figure.figure.legends for t in legend.get_texts()]
    assert CLAIM in legend and any("drawn at the floor" in t for t in legend)
    assert figure.caption.endswith("2–3 seeds per estimator and problem.")

    (table,) = regulariser.gradient_tables(mlp)
    frame = table.frame.set_index(["estimator", "scope", "epoch"])
    assert [k[0] for k in frame.index[::4]] == [NOISE_CONTROL, CONTROL, CLAIM]  # natural order of labels
    assert [k for k in frame.index if k[0] == CLAIM] == [(CLAIM, "layer1", "0"), (CLAIM, "layer1", "4"),
                                                         (CLAIM, "layer2", "0"), (CLAIM, "layer2", "4")]
    row = frame.loc[(CLAIM, "layer2", "4")]
    assert row["variance / mini-batch variance"] == "0.25"
    assert row["mean cosine to g"] == report.fmt_pm(0.25, math.sqrt(3 * SE**2) / 3)
    assert frame.loc[(CONTROL, "layer1", "0"), "unit-noise variance (gradient units²)"] == "0 ± 0"
    # The floor: mean over seeds of reference_stderr_norm / (bias_norm / relative_bias), no standard error.
    assert list(frame.columns)[-1] == FLOOR_HEADING and "reference_stderr_norm / ‖g‖" in table.caption
    assert {key: frame.loc[key, FLOOR_HEADING] for key in frame.index if key[1] == "layer1"} == {
        (NOISE_CONTROL, "layer1", "0"): "0.25", (NOISE_CONTROL, "layer1", "4"): "0.25",
        (CONTROL, "layer1", "0"): "0.0625", (CONTROL, "layer1", "4"): "0.0625",
        (CLAIM, "layer1", "0"): "0.125", (CLAIM, "layer1", "4"): "0.5"}
    assert frame.loc[(CLAIM, "layer2", "4"), FLOOR_HEADING] == "0.5"
    # In the figure: one dashed line per estimator in the relative-bias panel, said in legend and caption.
    dashed = [tuple(float(y) for y in line.get_ydata()) for line in bias.lines if line.get_linestyle() == "--"]
    assert sorted(dashed) == sorted(FLOOR.values())
    assert not any(line.get_linestyle() == "--" for ax in (variance, cosine, share) for line in ax.lines)
    assert "reference noise floor (relative)" in legend and "Dashed lines in the relative-bias panels" in figure.caption


def test_reference_floor_absent_is_not_said(tmp_path):
    path = tmp_path / "r.db"
    write_store(path, no_reference=(CLAIM, CONTROL))
    mlp = regulariser.mlp_results(load_results(path))
    bias = sentence(regulariser.conclusions(mlp), "reason 3 (biased backward pass)")
    assert "noise floor" not in bias and f"{report.fmt_pm(0.75, math.sqrt(3 * SE**2) / 3, 3)} at epoch 4 and " in bias
    (table,) = regulariser.gradient_tables(mlp)
    floors = table.frame.set_index(["estimator", "scope", "epoch"])[FLOOR_HEADING]
    assert floors[(CLAIM, "layer1", "4")] == "–" and floors[(CONTROL, "layer2", "0")] == "–"
    assert floors[(NOISE_CONTROL, "layer1", "4")] == "0.25"

    path = tmp_path / "exact.db"
    write_store(path, no_reference=(CLAIM, CONTROL, NOISE_CONTROL))
    mlp = regulariser.mlp_results(load_results(path))
    (table,) = regulariser.gradient_tables(mlp)
    assert FLOOR_HEADING not in table.frame.columns and "reference_stderr_norm" not in table.caption
    figure = regulariser.gradient_figure(mlp)
    assert not any(line.get_linestyle() == "--" for ax in figure.figure.axes for line in ax.lines)
    assert "Dashed" not in figure.caption


def test_learning_curves_reuse_the_training_figure(db):
    figure = regulariser.learning_curves(regulariser.mlp_results(load_results(db)))
    train, test, criterion = figure.figure.axes[:3]
    assert " ".join(train.get_ylabel().split()) == "training error, mean-field net (%)"  # wrapped to its panel
    assert criterion.get_xlabel() == "training epoch"
    means = [tuple(line.get_ydata()) for line in train.lines if len(line.get_xdata()) == EPOCHS]
    assert all(tuple(TRAIN[name]) in means for name in TRAIN)  # the mean over seeds at each epoch
    assert "± 1 standard deviation between seeds" in figure.caption


def test_report_has_the_section_only_with_mlp_runs(db, tmp_path):
    results = load_results(db)
    page, summary, sections = report.write_report(results, tmp_path / "out",
                                                 experiment_sections=experiments.report_sections(results))
    keys = [s.key for s in sections]
    assert keys[keys.index("training") + 1] == "regulariser"
    section = sections[keys.index("regulariser")]
    assert section.title == "Binary stochastic units as a regulariser"
    assert [f.key for f in section.figures] == ["regulariser-curves", "regulariser-gradient"]
    html, markdown = page.read_text(), summary.read_text()
    assert "<section id='regulariser'>" in html
    for figure in section.figures:
        assert f"<figure id='fig-{figure.key}'><img" in html and f"*Figure in index.html: {figure.title}.*" in markdown
    conclusions = regulariser.conclusions(regulariser.mlp_results(results))
    assert len(section.text) == len(conclusions) + 1 and all(s + "\n" in markdown for s in conclusions)
    assert f"### Epochs and seconds to reach a training error: {PROBLEM}" in markdown

    other = tmp_path / "gradient.db"
    with Store(other) as store:
        save(store, "reinforce", [Metric("variance", 1.0, 0.1)], problem="bernoulli-target",
             problem_params={"d": 3, "t": 0.45, "logit": 0.0}, samples=1000)
        save(store, CLAIM, [Metric("train_error", 1.0, epoch=1)], problem="toy-gater")  # a training run, no MLP
    page, summary, sections = report.write_report(load_results(other), tmp_path / "out2",
                                                 experiment_sections=experiments.report_sections(load_results(other)))
    assert "regulariser" not in [s.key for s in sections]
    assert "regulariser" not in page.read_text() and "as a regulariser" not in summary.read_text()
    assert regulariser.section(load_results(other)) is None


def test_the_terminal_and_the_report_show_the_same_summary_table(tmp_path):
    """reproduce's terminal table and the report section's first table are one tables() object:
    equal content; a failed run is counted and named in both."""
    from experiments.base import Planned, planned_results

    path, params = tmp_path / "r.db", {"hidden": "8-8", "epochs": EPOCHS}
    planned = []
    with Store(path) as store:
        for name, count in {CONTROL: 3, CLAIM: 3, NOISE_CONTROL: 2}.items():
            for seed, shift in enumerate(OFFSETS[count]):
                save(store, name, mlp_metrics(name, shift, seed), seed=seed, problem_params=params)
                planned.append(Planned(name, RunConfig(name, {}, PROBLEM, params, seed, 0)))
        failed = RunConfig(NOISE_CONTROL, {}, PROBLEM, params, 2, 0)
        store.save(RunResult(failed, "failed", [], {}, "2024-01-01T00:00:00.000+00:00",
                             "2024-01-01T00:00:02.000+00:00", 2.0, "diverged"), {"torch": "test"}, "abc123", "cpu")
        planned.append(Planned(NOISE_CONTROL, failed))
        experiment = regulariser.MlpRegulariser()
        text = experiment.table(store, planned, False, 100)
        (terminal,) = experiment.tables(planned_results(store, planned), planned)
    (section,) = experiment.sections(load_results(path))
    report_table = section.tables[0]
    assert terminal.title == report_table.title and terminal.caption == report_table.caption
    assert terminal.frame.equals(report_table.frame)
    assert report_table.to_text(100) in text and max(map(len, text.splitlines())) <= 100
    rows = terminal.frame.set_index("estimator")
    assert list(rows.index) == [CONTROL, CLAIM, NOISE_CONTROL]
    assert list(rows["seeds"]) == ["3/3", "3/3", "2/3"]
    # final train error of the control: 1.0 + (-0.25, 0, 0.25): mean 1, sd 0.25
    assert rows.at[CONTROL, "train %"] == "1 ± 0.25"
    assert f"{NOISE_CONTROL} seed 2 failed: diverged" in terminal.caption
