"""What a new user ran into, each fixed and held here: export to standard output without --format,
a listing that fits the terminal and shows every trait, one data layout for --dest and --data-dir,
one default thread count, a mistyped --plugin as a user error, --version, the paper table's warning
beside --quick runs, no verdicts on untrained nets, a missing data set as one line in `run`, and
the stateful estimators' frozen baseline said below the summary."""
from __future__ import annotations

import importlib.metadata
import io
import re

import pandas as pd
import pytest

from analysis.frames import load_results
from analysis.report import build_sections, render_html
from benchcli.cli import build_parser, main
from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.store import Store
from conftest import MNIST_DIR, needs_mnist, one_line_error
from experiments import mlp_regulariser as regulariser
from experiments import paper_fig2
from problems import datasets

TARGET = ("bernoulli-target", {"d": 3, "t": 0.45, "logit": 0.0})


def save(store: Store, estimator: str, problem: str, problem_params: dict, metrics: list[Metric], seed: int = 0,
         samples: int = 1000) -> None:
    config = RunConfig(estimator, {}, problem, problem_params, seed, samples)
    result = RunResult(config, "finished", metrics, {"reference": "exact"}, "2024-01-01T00:00:00.000+00:00",
                       "2024-01-01T00:00:02.000+00:00", 2.0, None)
    store.save(result, {"torch": "test"}, "abc123", "cpu (test)")


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "r.db"
    with Store(path) as store:
        for name, variance in (("reinforce", 2.0), ("straight-through", 0.5)):
            save(store, name, *TARGET, [Metric("variance", variance, 0.1), Metric("loss_evals", 1.0)])
    return path


# -- export -------------------------------------------------------------------------------------------
def test_export_to_standard_output_needs_no_format(invoke, store_path, tmp_path):
    code, out, err = invoke("export", "--db", store_path, "--out", "-")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert sorted(frame["metric"].unique()) == ["loss_evals", "variance"] and len(frame) == 4
    code, _, err = invoke("export", "--db", store_path, "--out", tmp_path / "all.parquet")
    assert code == 0, err
    assert (tmp_path / "all.parquet").read_bytes()[:4] == b"PAR1"  # the suffix chose Parquet
    code, _, err = invoke("export", "--db", store_path, "--out", tmp_path / "all.txt")
    assert code == 0 and (tmp_path / "all.txt").read_text().startswith("run_id,")


# -- list ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("columns", [80, 100])
def test_list_shows_every_trait_within_the_terminal_width(invoke, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = invoke("list")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= columns, max(lines, key=len)
    estimators_part = out.split("PROBLEMS")[0]
    assert estimators_part.count("variables=") == estimators_part.count("unbiased=") > 20
    assert "variables=both" in " ".join(out.split())


# -- data layout --------------------------------------------------------------------------------------
@needs_mnist
def test_fetch_dest_and_data_dir_name_one_layout(invoke, tmp_path, monkeypatch):
    """What `data fetch --dest DIR` writes is what `--data-dir DIR` and $STOCHGRAD_BENCH_DATA=DIR read."""
    root = tmp_path / "data"
    code, out, err = invoke("data", "fetch", "mnist", "--quiet", "--mirror", MNIST_DIR, "--dest", root)
    assert code == 0, err
    assert out.strip() == str(root / "mnist")
    code, out, err = invoke("data", "path", "mnist", "--data-dir", root)
    assert (code, out.strip()) == (0, str(root / "mnist")), err
    monkeypatch.setenv(datasets.ENV_VAR, str(root))
    assert datasets.locate("mnist") == root / "mnist"


# -- threads ------------------------------------------------------------------------------------------
def test_every_command_that_runs_defaults_to_one_thread_per_process():
    parser = build_parser()
    for argv in (["run"], ["vae"], ["paper"], ["reproduce", "paper-fig2"], ["run", "--jobs", "2"],
                 ["vae", "--jobs", "2"]):
        assert parser.parse_args(argv).threads == 1, argv
    helps = {action.help for sub in parser._subparsers._group_actions[0].choices.values()
             for action in sub._actions if "--threads" in action.option_strings}
    assert len(helps) == 1  # one text, one rule


# -- --plugin ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)",
                                      "--samples", "100"], ["list"], ["vae", "--quick"], ["reproduce", "paper-fig2"]])
def test_a_mistyped_plugin_is_one_line_and_exit_2(invoke, tmp_path, command):
    (tmp_path / "my_estimators.py").write_text("")
    db = tmp_path / "r.db"
    extra = ["--db", db] if command[0] != "list" else []
    code, out, err = invoke(*command, *extra, "--plugin", tmp_path / "my_estimator.py")
    one_line_error(code, err, "--plugin", "my_estimator.py: no such file", f"did you mean {tmp_path / 'my_estimators.py'}")
    assert not db.exists()
    code, out, err = invoke(*command, *extra, "--plugin", "no_such_plugin_module")
    one_line_error(code, err, "no module named 'no_such_plugin_module'")


# -- --version ------------------------------------------------------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"stochgrad-bench {importlib.metadata.version('stochgrad-bench')} (code in ")
    assert out.count("\n") == 1 and "torch " in out


# -- the paper table ------------------------------------------------------------------------------------
def _gater_store(path, params: dict) -> None:
    with Store(path) as store:
        for label, spec, row_params in paper_fig2.PAPER_ROWS[:2]:
            save(store, spec, "mnist-gater", {**row_params, **params},
                 [Metric(name, value, epoch=0) for name, value in
                  (("train_criterion", 0.5), ("valid_error", 20.0), ("test_error", 21.0), ("sparsity_test", 0.9))],
                 samples=0)


def test_the_html_paper_table_warns_beside_quick_runs(tmp_path):
    _gater_store(tmp_path / "quick.db", dict(paper_fig2.QUICK))
    tables, notes = paper_fig2.report_tables(load_results(tmp_path / "quick.db"))
    (table,) = tables
    assert notes == ["No comparison with the paper's test errors: not comparable (the --quick smoke test; trained on "
                     "2,000 of the 50,000 training examples; errors on 2,000 of the 10,000 validation and test "
                     "examples; 1 epoch of training)."]
    assert "(not comparable with the paper: the --quick smoke test; trained on 2,000 of the 50,000" in table.title
    assert table.caption.startswith("Not comparable with the paper: the --quick smoke test;")
    page = render_html([paper_fig2.PaperFig2().sections(load_results(tmp_path / "quick.db"))[0]], "t")
    assert "not comparable with the paper: the --quick smoke test" in page
    _gater_store(tmp_path / "full.db", {})
    (table,), notes = paper_fig2.report_tables(load_results(tmp_path / "full.db"))
    assert "comparable" not in table.title + table.caption
    assert notes[0] == "Test error, ours − paper (points): Straight-through +19.61 (beyond ±0.5)."  # a verdict


# -- verdicts ---------------------------------------------------------------------------------------------
def test_no_verdict_on_nets_still_at_high_error(tmp_path):
    """Nets at 88-90 % training error (chance for ten classes) get numbers, never 'slower' or
    'as the claim says'; the rule (TRAINED_ERROR) is said in the section."""
    from test_regulariser_analysis import CLAIM, CONTROL, write_store

    path = tmp_path / "r.db"
    write_store(path, train={CLAIM: (91.0, 90.5, 90.0, 90.0), CONTROL: (90.0, 89.0, 88.5, 88.0)})
    results = load_results(path)
    sentences = regulariser.conclusions(regulariser.mlp_results(results))
    verdicts = [s for s in sentences if s.split(": ", 1)[1].startswith(("training speed", "final "))]
    assert len(verdicts) == 3 and all("no verdict" in s for s in verdicts), verdicts
    text = " ".join(sentences)
    for confident in ("as the claim says", "where the claim says", "trains slower", "trains faster", "holds on"):
        assert confident not in text
    assert f"{CLAIM} ends at 90 % training error" in verdicts[0]
    assert f"below {regulariser.TRAINED_ERROR:g} % training error" in regulariser.section(results).text[0]


# -- missing data in `run` ----------------------------------------------------------------------------------
def test_run_with_a_missing_dataset_is_one_line_and_exit_2(invoke, tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    db = tmp_path / "r.db"
    code, out, err = invoke("run", "--estimators", "straight-through", "--problems", "mnist-gater(epochs=1)",
                            "--db", db)
    one_line_error(code, err, "mnist data not found", "python -m bench data fetch mnist")
    assert not db.exists()


def test_estimators_skipped_alike_share_one_line_and_no_table_rows(invoke, tmp_path):
    """`run --estimators all` on the binary default problems printed a '-' row and a 'skipped' line for
    each of the 18 sequence and router estimators, twice per problem (about 120 of its 320 lines). Those
    skipped for one reason now share a line; a lone skip keeps its own line and row."""
    code, out, err = invoke("run", "--estimators", "reinforce,remax,rloo,reinforce-router", "--problems",
                            "bernoulli-target(d=2)", "--samples", "2000", "--db", tmp_path / "r.db")
    assert code == 0, err
    said = " ".join(out.split())
    assert ("skipped, each serves sequence units only; bernoulli-target has binary units: remax, rloo") in said
    assert "remax seed 0" not in said and "rloo seed 0" not in said
    assert not any(line.split()[1:2] in (["remax"], ["rloo"]) for line in out.splitlines() if line.strip())
    assert "reinforce-router seed 0 skipped: reinforce-router serves router units only" in said
    assert any(line.split()[:2] == ["-", "reinforce-router"] for line in out.splitlines())


# -- stateful estimators --------------------------------------------------------------------------------------
def test_the_summary_and_report_say_a_stateful_estimator_is_measured_frozen(invoke, tmp_path):
    db = tmp_path / "r.db"
    code, out, err = invoke("run", "--estimators", "reinforce-optimal,reinforce", "--problems", "bernoulli-target(d=2)",
                            "--samples", "2000", "--warmup", "640", "--db", db)
    assert code == 0, err
    said = " ".join(out.split())
    assert ("reinforce-optimal: stateful, measured with the running statistics frozen after a warm-up of 640 "
            "estimates in calls of 64") in said
    assert "reinforce, " not in said and "not with an ideal one such as the exact optimal baseline of eq. 10" in said
    summary = build_sections(load_results(db))[0]
    assert any(text.startswith("reinforce-optimal: stateful") for text in summary.text)

