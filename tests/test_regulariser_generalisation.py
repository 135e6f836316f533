"""Generalisation in the regulariser study: the best-validation epoch (early stopping as a reported
quantity), the test error there, and the verdict on 'generalises better', on hand-made curves."""
from __future__ import annotations

import pytest
from scipy import stats

from experiments import mlp_regulariser as regulariser
from analysis.frames import load_results
from experiments.mlp_regulariser import CLAIM, CONTROL, best_validation
from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.store import Store

PROBLEM = "toy-mlp"
SHIFTS = (-0.25, 0.0, 0.25)
# Per estimator: validation and test error (%) at epochs 1..5 before the seed's shift. The control's
# validation minimum is at epoch 2 (tied again at 4: the first counts), the claim's at epoch 4.
VALID = {CONTROL: (3.0, 2.0, 2.5, 2.0, 2.25), CLAIM: (4.0, 3.0, 2.0, 1.5, 1.75)}
TEST = {CONTROL: (3.5, 2.5, 2.75, 2.25, 2.5), CLAIM: (4.5, 3.5, 2.5, 1.25, 2.0)}


def _save(store: Store, estimator: str, seed: int, valid, test) -> None:
    metrics = [Metric("train_error", 1.0, epoch=e) for e in range(1, len(valid) + 1)]
    metrics += [Metric("valid_error", v, epoch=e) for e, v in enumerate(valid, start=1)]
    metrics += [Metric("test_error", t, epoch=e) for e, t in enumerate(test, start=1)]
    config = RunConfig(estimator, {}, PROBLEM, {}, seed, 0)
    store.save(RunResult(config, "finished", metrics, {"kind": "training"}, "2024-01-01T00:00:00.000+00:00",
                         "2024-01-01T00:00:02.000+00:00", 2.0), {"torch": "test"}, "abc", "cpu (test)")


def _store(path, test_shift: dict[str, tuple[float, ...]] | None = None):
    with Store(path) as store:
        for name in (CONTROL, CLAIM):
            for seed, shift in enumerate(SHIFTS):
                extra = (test_shift or {}).get(name, (0.0,) * len(SHIFTS))[seed]
                _save(store, name, seed, [v + shift for v in VALID[name]],
                      [t + shift + extra for t in TEST[name]])
    return load_results(path)


def test_best_validation_epoch_and_test_error_there(tmp_path):
    best = best_validation(_store(tmp_path / "r.db").training).set_index(["estimator", "run_id"]).sort_index()
    control, claim = best.loc[CONTROL], best.loc[CLAIM]
    assert list(control["best_epoch"]) == [2, 2, 2]  # the first of the tied minima
    assert list(claim["best_epoch"]) == [4, 4, 4]
    assert list(control["test_at_best"]) == [2.25, 2.5, 2.75]
    assert list(claim["test_at_best"]) == [1.0, 1.25, 1.5]
    assert list(claim["final_test"]) == [1.75, 2.0, 2.25]
    assert list(control["best_valid"]) == [1.75, 2.0, 2.25]
    assert set(best["last_epoch"]) == {5}


def test_generalisation_table_cells(tmp_path):
    results = regulariser.mlp_results(_store(tmp_path / "r.db"))
    (table,) = regulariser.generalisation_tables(results)
    frame = table.frame.set_index("estimator")
    assert frame.at[CLAIM, "test at best valid (%)"] == "1.25 ± 0.25"
    assert frame.at[CONTROL, "test at best valid (%)"] == "2.5 ± 0.25"
    assert frame.at[CLAIM, "at epoch"] == "4"
    assert frame.at[CONTROL, "test, final epoch (%)"] == "2.5 ± 0.25"
    assert frame.at[CLAIM, "seeds"] == "3"


def test_verdict_holds_when_the_test_error_at_best_validation_is_significantly_lower(tmp_path):
    results = regulariser.mlp_results(_store(tmp_path / "r.db"))
    sentences = regulariser.conclusions(results)
    (verdict,) = [s for s in sentences if "verdict" in s]
    expected = stats.ttest_ind([1.0, 1.25, 1.5], [2.25, 2.5, 2.75], equal_var=False).pvalue
    assert f"p = {expected:.3g}" in verdict
    assert "The claim holds on this setup" in verdict
    # The final-epoch difference (-0.5 points, sd 0.25 each) is reported but not significant.
    final = stats.ttest_ind([1.75, 2.0, 2.25], [2.25, 2.5, 2.75], equal_var=False).pvalue
    assert f"at the final epoch: {CLAIM} − {CONTROL} = -0.5 points (p = {final:.3g}), not shown" in verdict


def test_verdict_not_established_without_a_significant_difference(tmp_path):
    # Spread the claim's test errors so that the difference is within the noise.
    noisy = {CLAIM: (-1.5, 1.0, 1.75)}
    results = regulariser.mlp_results(_store(tmp_path / "r.db", noisy))
    (verdict,) = [s for s in regulariser.conclusions(results) if "verdict" in s]
    assert "is not established on this setup" in verdict
    assert "not shown" in verdict


def test_verdict_contradicted_when_the_claim_is_significantly_worse(tmp_path):
    worse = {CLAIM: (3.0, 3.0, 3.0)}
    results = regulariser.mlp_results(_store(tmp_path / "r.db", worse))
    (verdict,) = [s for s in regulariser.conclusions(results) if "verdict" in s]
    assert "does not hold on this setup" in verdict


@pytest.mark.parametrize("missing", [CONTROL, CLAIM])
def test_missing_validation_curves_are_said(tmp_path, missing):
    with Store(tmp_path / "r.db") as store:
        for name in (CONTROL, CLAIM):
            if name != missing:
                _save(store, name, 0, VALID[name], TEST[name])
            else:
                config = RunConfig(name, {}, PROBLEM, {}, 0, 0)
                store.save(RunResult(config, "finished", [Metric("train_error", 1.0, epoch=1)], {"kind": "training"},
                                     "2024-01-01T00:00:00.000+00:00", "2024-01-01T00:00:02.000+00:00", 2.0),
                           {"torch": "test"}, "abc", "cpu (test)")
    sentences = regulariser.conclusions(regulariser.mlp_results(load_results(tmp_path / "r.db")))
    assert any("best-validation epoch: not assessed" in s and missing in s for s in sentences)


def test_record_regenerated_from_a_store(tmp_path):
    """``report --record`` writes the four files from a small store: the CSVs hold exactly the
    stored runs and values, the README the command, machine, versions and wall time."""
    import pandas as pd

    from benchcli.cli import main

    db = tmp_path / "r.db"
    _store(db)
    record = tmp_path / "record"
    assert main(["report", "--db", str(db), "--record", str(record)]) == 0
    assert sorted(p.name for p in record.iterdir()) == ["README.md", "metrics.csv", "runs.csv", "summary.md"]
    runs = pd.read_csv(record / "runs.csv")
    assert len(runs) == 6 and set(runs["estimator"]) == {CONTROL, CLAIM} and set(runs["seed"]) == {0, 1, 2}
    metrics = pd.read_csv(record / "metrics.csv")
    assert len(metrics) == 6 * 15  # 5 epochs x (train, valid, test)
    stored = metrics[(metrics["metric"] == "test_error") & (metrics["epoch"] == 4)].set_index("run_id")["value"]
    claim_ids = runs[runs["estimator"] == CLAIM].sort_values("seed")["run_id"]
    assert list(stored[claim_ids]) == [1.0, 1.25, 1.5]
    readme = (record / "README.md").read_text()
    assert f"python -m bench run --estimators {CLAIM},{CONTROL} --problems {PROBLEM} --seeds 0,1,2" in readme \
        or f"python -m bench run --estimators {CONTROL},{CLAIM} --problems {PROBLEM} --seeds 0,1,2" in readme
    assert f"python -m bench report --db {db.name} --record {record.name}" in readme
    assert str(tmp_path) not in "".join(p.read_text() for p in record.iterdir())  # no absolute paths
    assert "cpu (test)" in readme and "| torch |" in readme
    assert "sum of the runs' wall times 12 s (per run 2 s to 2 s)" in readme  # 6 runs x 2 s
    summary = (record / "summary.md").read_text()
    assert "verdict on 'binary stochastic units generalise better'" in summary
    assert "Generalisation at the final and at the best-validation epoch" in summary


def test_record_splits_training_time_into_steps_and_evaluation():
    import pandas as pd

    from analysis.record import time_split

    metrics = pd.DataFrame({"metric": ["epoch_time_s", "eval_time_s"] * 2 + ["epoch_time_s"],
                            "epoch": [1, 1, 2, 2, None], "value": [20.0, 1.0, 18.0, 1.0, 99.0]})
    assert time_split(metrics) == ("- training steps 38 s, evaluation 2 s (5.0 % of the two; per-epoch values "
                                   "in `metrics.csv`);")
    assert time_split(metrics[metrics["metric"] == "epoch_time_s"]) is None


def test_report_without_out_or_record_is_a_user_error(tmp_path, capsys):
    from benchcli.cli import main

    db = tmp_path / "r.db"
    _store(db)
    assert main(["report", "--db", str(db)]) == 2
    assert "give --out DIR" in capsys.readouterr().err


def test_record_command_runs_each_estimator_at_its_own_seeds():
    """Seeds added for some estimators only (the Bernoulli seeds study's 3 and 4): the record's command
    gave every estimator the union of the seeds, so running it would compute runs that were never made."""
    import pandas as pd

    from analysis.record import run_command

    runs = pd.DataFrame({"problem_label": ["p(a=1)"] * 7, "samples": [0] * 7,
                         "estimator_label": ["arm"] * 2 + ["disarm"] * 4 + ["relax"],
                         "seed": [0, 1, 0, 1, 2, 3, 0]})
    assert run_command(runs) == [
        'python -m bench run --estimators arm --problems "p(a=1)" --seeds 0,1',
        'python -m bench run --estimators disarm --problems "p(a=1)" --seeds 0,1,2,3',
        'python -m bench run --estimators relax --problems "p(a=1)" --seeds 0']


@pytest.mark.parametrize("word", ["plain", "mnist-mlp(checkpoints='0-30-200',epochs=200)", 'say "$HOME"', "a b"])
def test_record_commands_are_shell_words(word):
    """A quoted word comes back whole from a POSIX shell's splitting."""
    import shlex

    from analysis.record import shell_word

    assert shlex.split(shell_word(word)) == [word]
    if "'" in word and '"' not in word:
        assert shell_word(word) == f'"{word}"'
