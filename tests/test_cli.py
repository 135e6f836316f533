"""The command line, end to end: ``python -m bench list | run | export`` in subprocesses.

Each subprocess costs seconds (torch imports), so one module-scoped fixture runs a command sequence
once and several tests read its record. The many bad-input cases call ``benchcli.cli.main`` in this
process, with stderr captured at the file-descriptor level; two of them also go through a real
``python -m bench`` subprocess, and BENCH_TESTS_SUBPROCESS=1 sends every one through a subprocess.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import sqlite3
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import run_cli

PLUGIN_DIST = "stochgrad-bench-example-plugin"
METRIC_NAMES = {"bias_norm", "relative_bias", "bias_z_max", "unbiased_pvalue", "variance", "mse", "snr",
                "cosine", "sign_agreement", "loss_evals", "time_per_estimate_s", "peak_memory_bytes",
                "sparsity", "exact_bias_norm", "exact_variance", "exact_cosine", "time_per_estimate_min_s", "time_per_estimate_max_s",
                "exact_check_pvalue", "unmeasurable_coordinates"}
EXPORT_COLUMNS = ["run_id", "estimator", "problem", "seed", "samples", "metric", "value", "stderr"]
TIMING_METRICS = {"time_per_estimate_s", "time_per_estimate_min_s", "time_per_estimate_max_s", "peak_memory_bytes"}
# bernoulli-target(d=3, t=0.45, logit=0): dE[L]/dphi_i = (1 - 2t) / 4 in every coordinate.
TARGET_D3_GRADIENT_NORM = (1 - 2 * 0.45) / 4 * math.sqrt(3)


def plugin_installed() -> bool:
    try:
        importlib.metadata.distribution(PLUGIN_DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_plugin = pytest.mark.skipif(
    not plugin_installed(), reason=f"{PLUGIN_DIST} is not installed (pip install ./tests/plugin_package)")

FILE_PLUGIN = '''
"""A plugin loaded from a file with --plugin: REINFORCE scaled by a constant."""
import torch

from estimators import register_estimator
from estimators.base import Estimator, attach_gradient


@register_estimator("file-scaled-reinforce")
class FileScaledReinforce(Estimator):
    """scale * (h - sigm(a)) L: unbiased only when scale is 1."""

    needs_loss_backprop = False

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, logits, loss_fn):
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        return attach_gradient(loss, logits, self.scale * (h - probs) * loss.detach().unsqueeze(-1))
'''
BROKEN_PLUGIN = 'raise RuntimeError("this plugin explodes on import")\n'


def write_plugins(directory: Path) -> tuple[Path, Path]:
    good, broken = directory / "good_plugin.py", directory / "broken_plugin.py"
    good.write_text(textwrap.dedent(FILE_PLUGIN))
    broken.write_text(BROKEN_PLUGIN)
    return good, broken


def query(db: Path, sql: str) -> pd.DataFrame:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return pd.read_sql_query(sql, con)


def read_runs(db: Path) -> pd.DataFrame:
    return query(db, "SELECT * FROM runs ORDER BY run_id")


def read_metrics(db: Path) -> pd.DataFrame:
    return query(db, "SELECT m.*, r.estimator, r.estimator_params, r.problem, r.seed "
                                 "FROM metrics m JOIN runs r USING (run_id) ORDER BY run_id, metric")


def metric_table(db: Path) -> dict[str, dict[str, float]]:
    """estimator spec (name + params JSON) -> metric -> value, for one-seed sweeps."""
    table: dict[str, dict[str, float]] = {}
    for row in read_metrics(db).itertuples():
        table.setdefault(f"{row.estimator}{row.estimator_params}", {})[row.metric] = row.value
    return table


def assert_succeeded(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# -- list --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("list")
    good, broken = write_plugins(cwd)
    plugins = ("--plugin", good, "--plugin", broken)
    text = run_cli("list", *plugins, cwd=cwd)
    as_json = run_cli("list", "--json", *plugins, cwd=cwd)
    for result in (text, as_json):
        assert result.returncode == 0, result.stderr
    data = json.loads(as_json.stdout)
    items = {(item["kind"], item["name"]): item for item in data["items"]}
    assert len(items) == len(data["items"]), "a name is listed twice"
    return SimpleNamespace(text=text, json=as_json, data=data, items=items, good=good, broken=broken)


def test_list_json_describes_every_builtin(listing):
    for item in listing.data["items"]:
        assert {"name", "kind", "source", "description", "parameters"} <= set(item)
        assert item["kind"] in ("estimator", "problem")
        assert item["description"].strip(), item
        assert item["source"].strip(), item
    names = {name for kind, name in listing.items if kind == "estimator"}
    assert {"reinforce", "reinforce-ma", "reinforce-optimal", "reinforce-loo", "straight-through", "exact"} <= names
    assert {"bernoulli-target", "bernoulli-quadratic", "bernoulli-blackbox"} <= {
        name for kind, name in listing.items if kind == "problem"}

    optimal = listing.items["estimator", "reinforce-optimal"]
    assert optimal["source"] == "built-in"
    assert optimal["parameters"] == {"decay": 0.9}
    assert optimal["domains"] == {"decay": "in [0, 1)"}
    assert optimal["traits"] == {"family": "score function", "unbiased": True, "loss_evals": 1, "needs_loss_backprop": False,
                                 "binary_forward": True, "randomness": "bernoulli", "stateful": True,
                                 "has_parameters": False, "activation": "sigmoid", "variables": "both"}
    assert listing.items["estimator", "noisy-rectifier"]["traits"]["activation"] == "rectifier"
    straight = listing.items["estimator", "straight-through"]
    assert straight["traits"]["unbiased"] is False and straight["traits"]["needs_loss_backprop"] is True
    target = listing.items["problem", "bernoulli-target"]
    assert target["parameters"] == {"d": 4, "t": 0.45, "logit": 0.0, "spread": 0.0}
    assert "traits" not in target


def text_entries(text: str) -> dict[str, str]:
    """Entry name -> its block of lines in the text listing (an entry line starts with two spaces)."""
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if re.match(r"^  \S", line):
            name = line.split()[0]
            entries[name] = line
        elif name and line.startswith("  "):
            entries[name] += "\n" + line
        else:
            name = None
    return entries


def test_list_text_shows_the_same_entries(listing):
    text = listing.text.stdout
    assert "ESTIMATORS" in text and "PROBLEMS" in text
    entries = text_entries(text.split("BROKEN PLUGINS")[0])
    assert set(entries) == {name for _, name in listing.items}
    optimal = entries["reinforce-optimal"]
    assert "unbiased=True" in optimal and "stateful=True" in optimal and "randomness=bernoulli" in optimal
    assert "parameters: decay=0.9" in optimal and "source: built-in" in optimal
    assert "domains: decay in [0, 1)" in optimal and "family=score function" in optimal
    assert "unbiased=False" in entries["straight-through"]
    assert "parameters: d=4, t=0.45, logit=0.0" in entries["bernoulli-target"]


def test_list_reports_file_plugin_and_broken_plugin(listing):
    item = listing.items["estimator", "file-scaled-reinforce"]
    assert "good_plugin.py" in item["source"]
    assert item["parameters"] == {"scale": 1.0}
    assert item["description"] == "scale * (h - sigm(a)) L: unbiased only when scale is 1."

    broken = listing.data["broken_plugins"]
    assert len(broken) == 1, broken
    assert "broken_plugin.py" in broken[0]["source"]
    assert "this plugin explodes on import" in broken[0]["error"]
    text = listing.text.stdout
    assert "BROKEN PLUGINS" in text
    section = " ".join(text[text.index("BROKEN PLUGINS"):].split())  # lines wrapped to the width
    assert "broken_plugin.py" in section and "this plugin explodes on import" in section
    assert "file-scaled-reinforce" not in section
    for result in (listing.text, listing.json):  # the broken plugin is also named on stderr
        assert "broken_plugin.py" in result.stderr and "Traceback" not in result.stderr


@requires_plugin
def test_list_reports_entry_point_plugin(listing):
    estimator = listing.items["estimator", "reinforce-constant"]
    assert estimator["source"].startswith("entry point reinforce-constant")
    assert "example_bench_plugin" in estimator["source"] and PLUGIN_DIST in estimator["source"]
    assert estimator["parameters"] == {"baseline": 0.5}
    assert estimator["traits"]["unbiased"] is True and estimator["traits"]["needs_loss_backprop"] is False
    assert "constant baseline" in estimator["description"]
    problem = listing.items["problem", "bernoulli-linear"]
    assert problem["source"].startswith("entry point bernoulli-linear")
    assert problem["parameters"] == {"d": 3, "data_seed": 0}
    assert "entry point reinforce-constant" in listing.text.stdout
    assert not listing.data["broken_plugins"] or all(
        PLUGIN_DIST not in b["source"] for b in listing.data["broken_plugins"])


PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin_package"


def test_plugin_package_joins_through_entry_points_only():
    """The example plugin declares both entry points, does not pull torch, and, when installed,
    is the current source (a stale install would test old code)."""
    import tomllib

    project = tomllib.loads((PLUGIN_SOURCE / "pyproject.toml").read_text())["project"]
    assert project["name"] == PLUGIN_DIST
    assert project["entry-points"] == {
        "bench.estimators": {"reinforce-constant": "example_bench_plugin.estimators:ReinforceConstant"},
        "bench.problems": {"bernoulli-linear": "example_bench_plugin.problems:BernoulliLinear"}}
    assert not any(dep.lower().startswith("torch") for dep in project.get("dependencies", []))
    sources = sorted((PLUGIN_SOURCE / "src" / "example_bench_plugin").glob("*.py"))
    assert sources and not any(word in path.read_text() for path in sources
                               for word in ("register_estimator", "register_problem", ".register("))
    if not plugin_installed():
        pytest.skip(f"{PLUGIN_DIST} is not installed (pip install ./tests/plugin_package)")
    dist = importlib.metadata.distribution(PLUGIN_DIST)
    installed = {(ep.group, ep.name, ep.value) for ep in dist.entry_points}
    assert installed == {(group, name, value) for group, eps in project["entry-points"].items()
                         for name, value in eps.items()}
    for path in sources:
        copy = Path(dist.locate_file(f"example_bench_plugin/{path.name}"))
        assert copy.read_bytes() == path.read_bytes(), (
            f"the installed {copy} differs from {path}: pip install ./tests/plugin_package again")


# -- run, resume, --force, export --------------------------------------------------------------------
SWEEP = ("run", "--estimators", "reinforce,straight-through", "--problems", "bernoulli-target(d=3)",
         "--samples", "2000", "--seeds", "0,1")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    db = cwd / "results.db"
    record = SimpleNamespace(cwd=cwd, db=db)
    record.first = run_cli(*SWEEP, "--db", db, cwd=cwd)
    record.runs_first, record.metrics_first = read_runs(db), read_metrics(db)
    record.again = run_cli(*SWEEP, "--db", db, cwd=cwd)
    record.runs_again, record.metrics_again = read_runs(db), read_metrics(db)
    record.forced = run_cli(*SWEEP, "--db", db, "--force", "--quiet", cwd=cwd)
    record.runs_forced, record.metrics_forced = read_runs(db), read_metrics(db)
    record.csv = run_cli("export", "--db", db, "--format", "csv", "--out", cwd / "out.csv", cwd=cwd)
    record.parquet = run_cli("export", "--db", db, "--format", "parquet", "--out", cwd / "out.parquet", cwd=cwd)
    return record


def test_run_prints_summary_and_stores_runs(sweep):
    assert_succeeded(sweep.first)
    lines = sweep.first.stdout.splitlines()
    # Per problem a block of unbiased estimators ranked by MSE at an equal budget of loss
    # evaluations, then one of biased ones ranked at a stated budget; seeds aggregated.
    assert lines[0].startswith("bernoulli-target(d=3): unbiased, ranked by MSE×evals")
    header = lines[1].split()
    assert header[:3] == ["#", "estimator", "seed"[:4] + "s"] and "p(unbiased)" in header and "bias_norm" not in header
    assert lines[2].split()[1:3] == ["reinforce", "2"] and lines[3] == ""
    assert lines[4].startswith("bernoulli-target(d=3): biased and deterministic, ranked by MSE@100")
    assert lines[6].split()[1:3] == ["straight-through", "2"]
    assert str(sweep.db) in sweep.first.stdout

    runs = sweep.runs_first
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    assert sorted(zip(runs["estimator"], runs["seed"])) == [("reinforce", 0), ("reinforce", 1),
                                                           ("straight-through", 0), ("straight-through", 1)]
    assert set(runs["samples"]) == {2000} and set(runs["problem"]) == {"bernoulli-target"}
    assert {json.loads(p)["d"] for p in runs["problem_params"]} == {3}
    assert runs["config_key"].is_unique
    metrics = sweep.metrics_first
    for run_id, group in metrics.groupby("run_id"):
        assert set(group["metric"]) == METRIC_NAMES, run_id
    exact_bias = metrics[metrics["metric"] == "exact_bias_norm"].groupby("estimator")["value"].max()
    assert exact_bias["reinforce"] < 1e-12
    assert exact_bias["straight-through"] > 0.05


def test_rerun_does_not_recompute(sweep):
    assert_succeeded(sweep.again)
    assert "4 of 4 runs already in" in sweep.again.stderr
    assert "reinforce" in sweep.again.stdout  # the summary is still printed
    pd.testing.assert_frame_equal(sweep.runs_again, sweep.runs_first)
    pd.testing.assert_frame_equal(sweep.metrics_again, sweep.metrics_first)


def test_force_recomputes_with_the_same_numbers(sweep):
    assert_succeeded(sweep.forced)
    assert sweep.forced.stdout == ""  # --quiet
    first, forced = sweep.runs_first, sweep.runs_forced
    assert len(forced) == 4 and forced["config_key"].is_unique
    assert set(forced["config_key"]) == set(first["config_key"])
    assert set(forced["run_id"]).isdisjoint(first["run_id"])
    merged = first.merge(forced, on="config_key", suffixes=("_first", "_forced"))
    assert (merged["finished_at_forced"] > merged["finished_at_first"]).all()
    assert set(forced["status"]) == {"finished"}
    # Seeded: every statistic but the timings comes out the same; no metric row is left behind.
    key = ["estimator", "seed", "metric"]
    a = sweep.metrics_first.set_index(key).sort_index()
    b = sweep.metrics_forced.set_index(key).sort_index()
    assert list(a.index) == list(b.index)
    stable = ~a.index.get_level_values("metric").isin(TIMING_METRICS)
    pd.testing.assert_series_equal(a["value"][stable], b["value"][stable], rtol=1e-9)
    orphans = query(sweep.db, "SELECT count(*) AS n FROM metrics WHERE run_id NOT IN (SELECT run_id FROM runs)")
    assert orphans["n"].tolist() == [0]


def expected_export(db: Path) -> pd.DataFrame:
    return query(db, "SELECT r.run_id, r.estimator, r.problem, r.seed, r.samples, m.metric, m.value, m.stderr "
                     "FROM metrics m JOIN runs r USING (run_id) ORDER BY r.run_id, m.metric")


def test_export_csv(sweep):
    assert_succeeded(sweep.csv)
    frame = pd.read_csv(sweep.cwd / "out.csv")
    assert set(EXPORT_COLUMNS) <= set(frame.columns)
    assert set(frame["metric"]) == METRIC_NAMES
    assert len(frame) == 4 * len(METRIC_NAMES)
    assert f"wrote {len(frame)} rows" in sweep.csv.stdout
    ordered = frame[EXPORT_COLUMNS].sort_values(["run_id", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ordered, expected_export(sweep.db), check_dtype=False, rtol=1e-12)


def test_export_parquet_round_trips(sweep):
    pytest.importorskip("pyarrow")
    assert_succeeded(sweep.parquet)
    frame = pd.read_parquet(sweep.cwd / "out.parquet")
    csv = pd.read_csv(sweep.cwd / "out.csv")
    assert list(frame.columns) == list(csv.columns)
    ordered = frame[EXPORT_COLUMNS].sort_values(["run_id", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ordered, expected_export(sweep.db), check_dtype=False)
    assert frame["value"].dtype.kind == "f" and frame["seed"].dtype.kind == "i"


# -- plugins in a run --------------------------------------------------------------------------------
def test_run_with_file_plugin_and_a_broken_one(cli, tmp_path, db_path):
    good, broken = write_plugins(tmp_path)
    result = cli("run", "--plugin", good, "--plugin", broken, "--estimators",
                 "file-scaled-reinforce,file-scaled-reinforce(scale=2.0)", "--problems", "bernoulli-target(d=3)",
                 "--samples", "2000", "--seeds", "0", "--db", db_path, "--quiet")
    assert_succeeded(result)
    assert "broken_plugin.py" in result.stderr and "this plugin explodes on import" in result.stderr
    runs = read_runs(db_path)
    assert list(runs["status"]) == ["finished", "finished"]
    table = metric_table(db_path)
    assert table['file-scaled-reinforce{"scale": 1.0}']["exact_bias_norm"] < 1e-12
    # scale 2 doubles the mean: its bias is the gradient itself.
    assert table['file-scaled-reinforce{"scale": 2.0}']["exact_bias_norm"] == pytest.approx(
        TARGET_D3_GRADIENT_NORM, rel=1e-9)


@requires_plugin
def test_entry_point_plugin_estimator_is_unbiased(cli, db_path):
    result = cli("run", "--estimators",
                 "reinforce,reinforce-constant,reinforce-constant(baseline=0),reinforce-constant(baseline=3)",
                 "--problems", "bernoulli-linear", "--samples", "20000", "--seeds", "0", "--db", db_path)
    assert_succeeded(result)
    assert "reinforce-constant" in result.stdout and "bernoulli-linear" in result.stdout
    runs = read_runs(db_path)
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    assert {json.loads(p)["d"] for p in runs["problem_params"]} == {3}
    table = metric_table(db_path)
    default, zero, three = (table[f'reinforce-constant{{"baseline": {b}}}'] for b in ("0.5", "0.0", "3.0"))
    for metrics in (default, zero, three, table["reinforce{}"]):
        assert metrics["exact_bias_norm"] < 1e-12
        assert metrics["unbiased_pvalue"] > 1e-3
        assert set(metrics) == METRIC_NAMES
    # The baseline is used: 0 is plain REINFORCE, 3 (far from the loss values) costs variance.
    assert zero["exact_variance"] == pytest.approx(table["reinforce{}"]["exact_variance"], rel=1e-12)
    assert three["exact_variance"] > 2 * default["exact_variance"]


# -- bad inputs: one line on stderr, exit 2, nothing written -----------------------------------------
def _other_app_db(path: Path, wal: bool = False) -> None:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('someone else''s data')")
    con.commit()
    con.close()


def _setup_other(tmp: Path) -> Path:
    _other_app_db(tmp / "other.db")
    return tmp / "other.db"


def _setup_other_wal(tmp: Path) -> Path:
    _other_app_db(tmp / "other.db", wal=True)
    return tmp / "other.db"


def _setup_other_odd_dir(tmp: Path) -> Path:
    (tmp / "a #b?c%d").mkdir()
    _other_app_db(tmp / "a #b?c%d" / "x #1.db")
    return tmp / "a #b?c%d" / "x #1.db"


def _setup_text(tmp: Path) -> Path:
    (tmp / "notes.db").write_text("not a database\n")
    return tmp / "notes.db"


def _setup_empty_file(tmp: Path) -> Path:
    (tmp / "empty.db").touch()
    return tmp / "empty.db"


def _setup_empty_sqlite(tmp: Path) -> Path:
    con = sqlite3.connect(tmp / "empty-sqlite.db")
    con.execute("PRAGMA user_version = 7")  # a valid SQLite file with no tables
    con.commit()
    con.close()
    return tmp / "empty-sqlite.db"


def _setup_results_db(tmp: Path) -> Path:
    _results_db(tmp / "r.db")
    return tmp / "r.db"


def _setup_results_db_and_out_dir(tmp: Path) -> Path:
    (tmp / "outdir").mkdir()
    return _setup_results_db(tmp)


def _setup_directory(tmp: Path) -> Path:
    (tmp / "adir").mkdir()
    return tmp / "adir"


def _results_db(path: Path) -> None:
    """A small valid results database, written in-process (no subprocess needed)."""
    from bench.harness import RunConfig, RunResult
    from bench.metrics import Metric
    from bench.store import Store

    with Store(path) as store:
        for seed in (0, 1):
            config = RunConfig("reinforce", {}, "bernoulli-target", {"d": 3, "t": 0.45, "logit": 0.0}, seed, 100)
            store.save(RunResult(config, "finished", [Metric("variance", 0.4, 0.01)], {}, "t0", "t1", 0.1),
                       {}, None, "cpu")


RUN = ("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=3)", "--samples", "100", "--quiet")
# (id, argv with {db} for the results database, fragments the message must contain)
RUN_ERRORS = [
    ("unknown-estimator", ["run", "--estimators", "reinforse", "--problems", "bernoulli-target", "--db", "{db}"],
     ["unknown estimator 'reinforse'", "did you mean reinforce"]),
    ("unknown-problem", ["run", "--estimators", "reinforce", "--problems", "bernouli-target(d=3)", "--db", "{db}"],
     ["unknown problem 'bernouli-target'", "did you mean bernoulli-target"]),
    ("unknown-in-all-list", ["run", "--estimators", "all", "--problems", "bernoulli-target,nope", "--db", "{db}"],
     ["unknown problem 'nope'"]),
    ("unclosed-paren", ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=4", "--db", "{db}"],
     ["bernoulli-target(d=4"]),
    ("missing-value", ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d)", "--db", "{db}"],
     ["'d'", "key=value"]),
    ("stray-close-paren", ["run", "--estimators", "reinforce)", "--problems", "bernoulli-target", "--db", "{db}"],
     ["reinforce)"]),
    ("empty-item", ["run", "--estimators", "reinforce,", "--problems", "bernoulli-target", "--db", "{db}"],
     ["empty"]),
    ("t-out-of-range", ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(t=1.5)", "--db", "{db}"],
     ["t must be in [0, 1]", "1.5"]),
    ("d-zero", ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=0)", "--db", "{db}"],
     ["d must be at least 1"]),
    ("d-not-integer", ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2.5)", "--db", "{db}"],
     ["integer", "2.5"]),
    ("estimator-param-type", ["run", "--estimators", "reinforce-ma(decay=fast)", "--problems", "bernoulli-target",
                              "--db", "{db}"], ["decay", "'fast'"]),
    ("estimator-param-range", ["run", "--estimators", "reinforce-ma(decay=1.5)", "--problems", "bernoulli-target",
                               "--db", "{db}"], ["decay must be in [0, 1)"]),
    ("unknown-parameter", ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(q=1)", "--db", "{db}"],
     ["no parameter 'q'", "valid: d, t, logit"]),
    ("parameter-twice", ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=3,d=4)",
                         "--db", "{db}"], ["'d' given twice"]),
    ("samples-zero", [*RUN, "--samples", "0", "--db", "{db}"], ["--samples", "'0'"]),
    ("samples-negative", [*RUN, "--samples", "-5", "--db", "{db}"], ["--samples", "'-5'"]),
    ("samples-text", [*RUN, "--samples", "abc", "--db", "{db}"], ["--samples", "'abc'"]),
    ("seeds-text", [*RUN, "--seeds", "a,b", "--db", "{db}"], ["--seeds", "'a,b'"]),
    ("seeds-repeated", [*RUN, "--seeds", "1,1", "--db", "{db}"], ["--seeds", "'1,1'"]),
    ("warmup-negative", [*RUN, "--warmup", "-1", "--db", "{db}"], ["--warmup"]),
    ("device-unknown", [*RUN, "--device", "tpu", "--db", "{db}"], ["--device 'tpu'"]),
    ("device-cuda", [*RUN, "--device", "cuda", "--db", "{db}"], ["CUDA is not available"]),
    ("unknown-option", [*RUN, "--colour", "red", "--db", "{db}"], ["--colour"]),
]
# (id, setup(tmp) -> path given as --db, argv, fragments); the path's file must stay as it was.
DB_ERRORS = [
    ("missing-directory", lambda tmp: tmp / "nowhere" / "r.db", [*RUN, "--db", "{db}"], ["nowhere", "does not exist"]),
    ("directory", _setup_directory, [*RUN, "--db", "{db}"], ["is a directory"]),
    ("text-file", _setup_text, [*RUN, "--db", "{db}"], ["not an SQLite file"]),
    ("other-sqlite", _setup_other, [*RUN, "--db", "{db}"], ["not a stochgrad-bench results database"]),
    ("other-sqlite-wal", _setup_other_wal, [*RUN, "--db", "{db}"], ["not a stochgrad-bench results database"]),
    ("other-sqlite-odd-path", _setup_other_odd_dir, [*RUN, "--db", "{db}"],
     ["not a stochgrad-bench results database"]),
    ("export-missing-db", lambda tmp: tmp / "absent.db", ["export", "--db", "{db}", "--format", "csv", "--out",
                                                           "{tmp}/out.csv"], ["absent.db", "does not exist"]),
    ("export-text-file", _setup_text, ["export", "--db", "{db}", "--format", "csv", "--out", "{tmp}/out.csv"],
     ["not an SQLite file"]),
    ("export-empty-file", _setup_empty_file, ["export", "--db", "{db}", "--format", "csv", "--out",
                                              "{tmp}/out.csv"], ["empty.db"]),
    ("export-empty-sqlite", _setup_empty_sqlite, ["export", "--db", "{db}", "--format", "csv", "--out",
                                                  "{tmp}/out.csv"], ["not a stochgrad-bench results database"]),
    ("export-other-sqlite", _setup_other, ["export", "--db", "{db}", "--format", "csv", "--out", "{tmp}/out.csv"],
     ["not a stochgrad-bench results database"]),
    ("export-format-xml", _setup_results_db,
     ["export", "--db", "{db}", "--format", "xml", "--out", "{tmp}/out.xml"], ["--format", "'xml'"]),
    ("export-out-missing-directory", _setup_results_db,
     ["export", "--db", "{db}", "--format", "csv", "--out", "{tmp}/nowhere/out.csv"], ["nowhere", "does not exist"]),
    ("export-out-is-directory", _setup_results_db_and_out_dir,
     ["export", "--db", "{db}", "--format", "csv", "--out", "{tmp}/outdir"], ["is a directory"]),
]
BARE_ERRORS = [("no-command", [], ["command"]), ("unknown-command", ["launch"], ["'launch'"])]


@pytest.fixture(scope="module")
def results_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "results.db"
    _results_db(path)
    return path


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``directory`` with its bytes, to prove nothing was written."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture
def invoke(monkeypatch, capfd):
    """Run the CLI on argv; returns (exit code, stdout, stderr). In-process unless BENCH_TESTS_SUBPROCESS=1."""
    def call(argv: list[str], cwd: Path) -> tuple[int, str, str]:
        if os.environ.get("BENCH_TESTS_SUBPROCESS") == "1":
            result = run_cli(*argv, cwd=cwd)
            return result.returncode, result.stdout, result.stderr
        from benchcli.cli import main

        monkeypatch.chdir(cwd)
        capfd.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse exits only on --help; anything else is a bug
            code = exc.code
        out, err = capfd.readouterr()
        return code, out, err

    return call


def check_user_error(code: int, out: str, err: str, fragments: list[str]) -> None:
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert "Traceback" not in err and out == ""
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("db_state", ["absent", "existing"])
@pytest.mark.parametrize("argv, fragments", [pytest.param(a, f, id=i) for i, a, f in RUN_ERRORS])
def test_run_user_error_writes_nothing(invoke, tmp_path, results_template, argv, fragments, db_state):
    if "cuda" in argv and _cuda_available():
        pytest.skip("CUDA is available here, so --device cuda is not an error")
    db = tmp_path / "results.db"
    if db_state == "existing":
        shutil.copy(results_template, db)
    before = snapshot(tmp_path)
    code, out, err = invoke([a.replace("{db}", str(db)) for a in argv], tmp_path)
    check_user_error(code, out, err, fragments)
    assert snapshot(tmp_path) == before  # no database, no -wal/-shm, no bench-results/


@pytest.mark.parametrize("setup, argv, fragments", [pytest.param(s, a, f, id=i) for i, s, a, f in DB_ERRORS])
def test_unusable_database_or_output_writes_nothing(invoke, tmp_path, setup, argv, fragments):
    db = setup(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = invoke([a.replace("{db}", str(db)).replace("{tmp}", str(tmp_path)) for a in argv], tmp_path)
    check_user_error(code, out, err, fragments)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, fragments", [pytest.param(a, f, id=i) for i, a, f in BARE_ERRORS])
def test_bad_command_line(invoke, tmp_path, argv, fragments):
    code, out, err = invoke(argv, tmp_path)
    check_user_error(code, out, err, fragments)
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("argv, fragments", [
    pytest.param(RUN_ERRORS[0][1], RUN_ERRORS[0][2], id="unknown-estimator"),
    pytest.param([*RUN, "--samples", "abc", "--db", "{db}"], ["--samples"], id="samples-text"),
])
def test_user_error_in_a_real_process(tmp_path, results_template, argv, fragments):
    """The same contract through ``python -m bench``: exit status 2, one line, nothing else."""
    db = tmp_path / "results.db"
    shutil.copy(results_template, db)
    before = snapshot(tmp_path)
    result = run_cli(*[a.replace("{db}", str(db)) for a in argv], cwd=tmp_path)
    check_user_error(result.returncode, result.stdout, result.stderr, fragments)
    assert snapshot(tmp_path) == before


# -- the summary table after run ---------------------------------------------------------------------
TARGET3 = {"d": 3, "t": 0.45, "logit": 0.0}
LONG_PROBLEM = {"d": 6, "data_seed": 12345}


def _summary_store(db: Path) -> list:
    """Hand-chosen numbers: at an equal budget of loss evaluations reinforce-loo(K=8) (MSE 0.004 x 8)
    beats reinforce (0.05 x 1), which beats the zero-variance but biased rectifier (0.09 x 1), though
    ranking by variance x cost would put the rectifier first. Two seeds each; one run failed, one
    has no exact moments."""
    from bench.harness import RunConfig, RunResult
    from bench.metrics import Metric
    from bench.store import Store

    def metrics(mse, variance, bias, evals, p, se=0.001):
        return [Metric("mse", mse, se), Metric("variance", variance, se), Metric("bias_norm", bias, 1e-4),
                Metric("loss_evals", evals), Metric("unbiased_pvalue", p), Metric("time_per_estimate_s", 1e-5, 1e-7)]

    table = [("rectifier", {}, 0.09, 0.0, 0.3, 1.0, 0.0), ("reinforce", {}, 0.05, 0.05, 0.007, 1.0, 0.4),
             ("reinforce-loo", {"K": 8}, 0.004, 0.004, 0.002, 8.0, 0.6)]
    configs = []
    with Store(db) as store:
        for problem, params in (("bernoulli-target", TARGET3), ("bernoulli-quadratic", LONG_PROBLEM)):
            for name, est_params, mse, variance, bias, evals, p in table:
                for seed in (0, 1):
                    config = RunConfig(name, est_params, problem, params, seed, 1000)
                    notes = {"exact_moments": "not computed: 2^40 outcomes"} if name == "reinforce-loo" else {}
                    shift = 0.001 * seed  # seeds differ: the table shows their mean
                    store.save(RunResult(config, "finished", metrics(mse + shift, variance + shift, bias, evals, p),
                                         notes, "t0", "t1", 0.1), {}, None, "cpu")
                    configs.append(config)
        failed = RunConfig("reinforce", {}, "bernoulli-target", TARGET3, 2, 1000)
        store.save(RunResult(failed, "failed", [], {}, "t0", "t1", 0.1, "RuntimeError: boom"), {}, None, "cpu")
        configs.append(failed)
    return configs


def _blocks(text: str) -> dict[str, list[list[str]]]:
    """Problem title (with ' [biased]' for the block of biased estimators) -> table rows split into
    cells (the header row first)."""
    blocks = {}
    for block in text.split("\n\n"):
        lines = block.splitlines()
        header = next((i for i, line in enumerate(lines) if line.startswith("#")), None)
        if header:  # a title (wrapped over one or more lines) above the header
            problem, kind = lines[0].split(": ", 1)
            key = problem + (" [biased]" if kind.startswith("biased") else "")
            blocks[key] = [line.split() for line in lines[header:] if not line.startswith("  ")]
    return blocks


def test_summary_ranks_by_mse_at_equal_budget_and_aggregates_seeds(tmp_path):
    from benchcli.cli import summary_table
    from bench.store import Store

    configs = _summary_store(tmp_path / "r.db")
    with Store(tmp_path / "r.db", create=False) as store:
        text = summary_table(store, configs, width=100)
    assert max(map(len, text.splitlines())) <= 100, text
    blocks = _blocks(text)
    # Short labels: only the parameters that differ from the registered defaults; the unbiased
    # estimators apart from the biased rectifier.
    assert set(blocks) == {"bernoulli-target(d=3)", "bernoulli-quadratic(data_seed=12345)",
                           "bernoulli-target(d=3) [biased]", "bernoulli-quadratic(data_seed=12345) [biased]"}, text
    header, *rows = blocks["bernoulli-target(d=3)"]
    assert header[:3] == ["#", "estimator", "seeds"] and "MSE×evals" in header and "p(unbiased)" in header
    assert "bias_norm" not in text and "‖bias‖" not in text  # the raw norm includes the noise floor
    assert [row[1] for row in rows] == ["reinforce-loo(K=8)", "reinforce"]  # one row per estimator
    assert [row[0] for row in rows] == ["1", "2"]
    assert [row[2] for row in rows] == ["2", "2/3"]  # seeds; one reinforce run failed
    column = header.index("MSE×evals")
    assert rows[0][column] == "0.036±0.006"  # mean over seeds 0.0045 x 8; se sqrt(2 x 0.001²) / 2 x 8
    header, *rows = blocks["bernoulli-target(d=3) [biased]"]
    assert header[:4] == ["#", "estimator", "seeds", "MSE@100"] and "MSE×evals" not in header
    # zero variance: MSE@100 is its bias², 0.3² - 0 / 1000, ± 2 x 0.3 x 1e-4 / sqrt(2) (two seeds)
    assert [row[:4] for row in rows] == [["1", "rectifier", "2", "0.09±4e-05"]]
    assert "reinforce seed 2 failed: RuntimeError: boom" in text
    # Exact-moment notes name the estimator and the problem.
    assert "reinforce-loo(K=8) on bernoulli-target(d=3): 2^40 outcomes" in text
    assert "reinforce-loo(K=8) on bernoulli-quadratic(data_seed=12345): 2^40 outcomes" in text


def test_summary_fits_the_terminal_and_columns_are_chosen(tmp_path, monkeypatch):
    from benchcli.cli import summary_table
    from bench.store import Store

    configs = _summary_store(tmp_path / "r.db")
    with Store(tmp_path / "r.db", create=False) as store:
        monkeypatch.setenv("COLUMNS", "60")
        narrow = summary_table(store, configs)
        chosen = summary_table(store, configs, columns=["variance", "bias_sq"], width=100)
    assert max(map(len, narrow.splitlines())) <= 60, narrow
    assert "not shown, to fit 60 columns" in narrow
    header = _blocks(chosen)["bernoulli-target(d=3)"][0]
    assert header == ["#", "estimator", "seeds", "variance", "bias²"]
    rows = _blocks(chosen)["bernoulli-target(d=3)"][1:]
    assert [row[1] for row in rows] == ["reinforce-loo(K=8)", "reinforce"]  # still ranked by MSE×evals
    header, *rows = _blocks(chosen)["bernoulli-target(d=3) [biased]"]
    assert header == ["#", "estimator", "seeds", "variance", "bias²"] and rows[0][1] == "rectifier"
    # Debiased bias²: ‖mean − g‖² − variance / n, 0.3² − 0.0005 / 1000 for the rectifier.
    assert rows[0][4].startswith("0.09")


def test_run_rejects_unknown_summary_columns(invoke, tmp_path):
    code, out, err = invoke([*RUN, "--columns", "mse_evals,variace", "--db", str(tmp_path / "r.db")], tmp_path)
    check_user_error(code, out, err, ["--columns", "'variace'", "did you mean variance"])
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("command, fragments", [
    (["run", "--help"], ["(default: 100000)", "(default: 10000)", "(default: cpu)", "(default: all)"]),
    (["paper", "--help"], ["(default: 1)", "(default: mnist)"]),
    (["report", "--help"], ["(default: bench-results/results.db)"]),
])
def test_help_shows_defaults(command, fragments, capsys):
    from benchcli.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in fragments:
        assert fragment in text, (fragment, text)


# -- export: full specs, and the README's pandas example -----------------------------------------------
def test_readme_pandas_example_gives_the_final_values(tmp_path, monkeypatch, one_thread):
    """nvil stores its variance twice (step=0 before adaptation, then final); reinforce-loo runs at
    two K. The README's example must give the final value of each setting, not a mix."""
    from bench import harness
    from benchcli.cli import main
    from bench.store import Store

    db = tmp_path / "r.db"
    specs = [("nvil", {}), ("reinforce-loo", {"K": 2}), ("reinforce-loo", {"K": 4})]
    with Store(db) as store:
        for name, params in specs:
            result = harness.run(harness.make_config(name, params, "bernoulli-target", {"d": 3}, 0, 500, warmup=256))
            assert result.status == "finished", result.error
            store.save(result, {}, None, "cpu")
        stored = store.metrics()
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--db", str(db), "--format", "csv", "--out", "results.csv"]) == 0
    block = re.search(r"### `export`.*?```python\n(.*?)```", (Path(__file__).parent.parent / "README.md").read_text(),
                      flags=re.S)
    assert block, "no pandas example in the README's export section"
    namespace: dict = {}
    exec(block.group(1), namespace)
    table = namespace["table"]
    variance = stored[(stored["metric"] == "variance") & (stored["scope"] == "all")]
    nvil = variance[variance["estimator"] == "nvil"]
    final, before = nvil.loc[nvil["step"].isna(), "value"].item(), nvil.loc[nvil["step"] == 0, "value"].item()
    assert final != pytest.approx(before, rel=1e-3)  # else the test could not tell them apart
    problem = "bernoulli-target(d=3,logit=0.0,spread=0.0,t=0.45)"
    nvil_spec = next(s for s in table.index.get_level_values("estimator_spec") if s.startswith("nvil"))
    assert table.at[(nvil_spec, problem), "variance"] == pytest.approx(final, rel=1e-12)
    for k in (2, 4):
        loo = variance[(variance["estimator"] == "reinforce-loo") & variance["estimator_params"].str.contains(f'"K": {k}')]
        assert table.at[(f"reinforce-loo(K={k})", problem), "variance"] == pytest.approx(loo["value"].item(), rel=1e-12)
