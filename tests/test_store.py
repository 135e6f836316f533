"""The results store: round trips, atomic saves, replacement, WAL recovery, and resume after kill -9."""
from __future__ import annotations

import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.store import APPLICATION_ID, Store, StoreError
from conftest import cli_command, cli_env

VERSIONS = {"torch": "test"}


def make_result(seed: int = 0, metrics: list[Metric] | None = None, status: str = "finished",
                estimator: str = "reinforce", error: str | None = None) -> RunResult:
    config = RunConfig(estimator, {}, "bernoulli-target", {"d": 3, "t": 0.45, "logit": 0.0}, seed, 1000)
    if metrics is None:
        metrics = [Metric("variance", 0.5 + seed, 0.01), Metric("bias_norm", 0.1, 0.02)]
    return RunResult(config, status, metrics, {"reference": "exact"}, "2024-01-01T00:00:00.000+00:00",
                     "2024-01-01T00:00:01.000+00:00", 1.0, error)


def test_the_store_needs_the_run_configuration_not_the_harness():
    # the store sits below the harness: it imports a run's configuration and result (bench.runconfig),
    # never the measurement code; checked in a fresh interpreter, as this one has imported everything
    code = "import sys, bench.store; print(sorted(m for m in sys.modules if m.startswith('bench.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120,
                            check=True).stdout
    assert "'bench.runconfig'" in loaded
    assert "'bench.harness'" not in loaded and "'bench.enumeration'" not in loaded


def raw(db: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def test_save_and_read_back(db_path):
    metrics = [Metric("nan_value", math.nan, math.inf), Metric("pos_inf", math.inf, math.nan),
               Metric("neg_inf", -math.inf, None), Metric("plain", 1.5, 0.25),
               Metric("plain", 7.0, None, scope="unit0")]
    with Store(db_path) as store:
        run_id = store.save(make_result(metrics=metrics), VERSIONS, "abc123", "cpu (test)")
    assert raw(db_path, "PRAGMA application_id") == [(APPLICATION_ID,)]
    # NaN is stored as NULL; infinities are kept.
    stored = {(scope, metric): (value, stderr) for scope, metric, value, stderr in
              raw(db_path, "SELECT scope, metric, value, stderr FROM metrics")}
    assert stored == {("all", "nan_value"): (None, math.inf), ("all", "pos_inf"): (math.inf, None),
                      ("all", "neg_inf"): (-math.inf, None), ("all", "plain"): (1.5, 0.25),
                      ("unit0", "plain"): (7.0, None)}

    with Store(db_path, create=False) as store:  # reopened without creating, as export does
        runs = store.runs()
        frame = store.metrics()
        assert store.finished_keys([make_result().config.key, "no-such-key"]) == {make_result().config.key}
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["run_id"] == run_id and run["status"] == "finished" and run["seed"] == 0
    assert run["git_revision"] == "abc123" and run["device_description"] == "cpu (test)"
    assert run["estimator_params"] == "{}" and run["problem_params"] == '{"d": 3, "logit": 0.0, "t": 0.45}'
    values = frame.set_index(["scope", "metric"])
    assert math.isnan(values.at[("all", "nan_value"), "value"])
    assert values.at[("all", "nan_value"), "stderr"] == math.inf
    assert values.at[("all", "pos_inf"), "value"] == math.inf
    assert values.at[("all", "neg_inf"), "value"] == -math.inf
    assert values.at[("unit0", "plain"), "value"] == 7.0
    assert set(frame["estimator"]) == {"reinforce"} and set(frame["run_id"]) == {run_id}


class FailingExecutemany:
    """A connection whose executemany fails after the run row was inserted (mid-save)."""

    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection

    def executemany(self, *args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    def __getattr__(self, name):
        return getattr(self._connection, name)


def test_failed_save_leaves_no_partial_run(db_path):
    with Store(db_path) as store:
        store.save(make_result(seed=0), VERSIONS, None, "cpu")
        real = store.connection
        store.connection = FailingExecutemany(real)
        with pytest.raises(sqlite3.OperationalError, match="simulated"):
            store.save(make_result(seed=1), VERSIONS, None, "cpu")
        store.connection = real
        assert not real.in_transaction
        assert store.runs()["seed"].tolist() == [0]
        assert store.finished_keys([make_result(seed=1).config.key]) == set()
        # The store is still usable and the next save of that run goes through.
        store.save(make_result(seed=1), VERSIONS, None, "cpu")
    assert raw(db_path, "SELECT seed FROM runs ORDER BY seed") == [(0,), (1,)]
    assert raw(db_path, "SELECT count(*) FROM metrics") == [(4,)]


def test_failed_replacement_keeps_the_old_run(db_path):
    with Store(db_path) as store:
        old_id = store.save(make_result(), VERSIONS, None, "cpu")
        # Two rows for one (scope, metric): the second insert violates the primary key mid-way,
        # after the old run was deleted and the new run row inserted.
        duplicate = [Metric("variance", 1.0), Metric("variance", 2.0)]
        with pytest.raises(sqlite3.IntegrityError):
            store.save(make_result(metrics=duplicate), VERSIONS, None, "cpu")
    assert raw(db_path, "SELECT run_id FROM runs") == [(old_id,)]
    assert sorted(raw(db_path, "SELECT metric, value FROM metrics")) == [("bias_norm", 0.1), ("variance", 0.5)]


def test_replacing_a_run_keeps_one_row(db_path):
    with Store(db_path) as store:
        first = store.save(make_result(), VERSIONS, None, "cpu")
        store.save(make_result(seed=1), VERSIONS, None, "cpu")
        replaced = store.save(make_result(metrics=[Metric("variance", 9.0)], status="failed", error="boom"),
                              VERSIONS, None, "cpu")
        assert replaced != first
        assert store.finished_keys([make_result().config.key]) == set()  # failed runs are redone
    rows = raw(db_path, "SELECT run_id, seed, status, error FROM runs ORDER BY seed")
    assert [r[1:] for r in rows] == [(0, "failed", "boom"), (1, "finished", None)]
    assert rows[0][0] == replaced
    assert raw(db_path, f"SELECT metric, value FROM metrics WHERE run_id = {replaced}") == [("variance", 9.0)]
    assert raw(db_path, f"SELECT count(*) FROM metrics WHERE run_id = {first}") == [(0,)]
    assert raw(db_path, "SELECT count(*) FROM metrics WHERE run_id NOT IN (SELECT run_id FROM runs)") == [(0,)]


@pytest.mark.parametrize("with_shm", [False, True], ids=["wal-only", "wal-and-shm"])
def test_uncheckpointed_wal_is_accepted(tmp_path, with_shm):
    """A writer killed before any checkpoint leaves the schema and the application id in the -wal
    file only; the store must still recognise the database and see every committed run."""
    live = tmp_path / "live" / "results.db"
    live.parent.mkdir()
    copy = tmp_path / "killed" / "results.db"
    copy.parent.mkdir()
    with Store(live) as store:
        store.connection.execute("PRAGMA wal_autocheckpoint = 0")
        for seed in (0, 1, 2):
            store.save(make_result(seed=seed), VERSIONS, None, "cpu")
        # Copy while the writer is open: what a kill -9 at this moment would leave on disk.
        suffixes = ("", "-wal", "-shm") if with_shm else ("", "-wal")
        for suffix in suffixes:
            shutil.copy(f"{live}{suffix}", f"{copy}{suffix}")
    header = copy.read_bytes()[:100]
    assert int.from_bytes(header[68:72], "big") == 0, "the application id should still be in the WAL only"
    assert Path(f"{copy}-wal").stat().st_size > 0

    with Store(copy, create=False) as store:  # as export opens it
        assert store.runs()["seed"].tolist() == [0, 1, 2]
        assert len(store.metrics()) == 6
    with Store(copy, create=True) as store:  # as run opens it to resume
        assert store.finished_keys(make_result(seed=s).config.key for s in (0, 1, 2, 3)) == {
            make_result(seed=s).config.key for s in (0, 1, 2)}
        store.save(make_result(seed=3), VERSIONS, None, "cpu")
    assert raw(copy, "SELECT count(*) FROM runs") == [(4,)]


def test_store_refuses_unusable_paths(tmp_path):
    (tmp_path / "text.db").write_text("hello\n")
    (tmp_path / "empty.db").touch()
    for path, create, message in [
        (tmp_path / "missing" / "r.db", True, "does not exist"),
        (tmp_path / "absent.db", False, "does not exist"),
        (tmp_path, True, "is a directory"),
        (tmp_path / "text.db", True, "not an SQLite file"),
        (tmp_path / "empty.db", False, "empty"),
    ]:
        with pytest.raises(StoreError, match=message):
            Store(path, create=create)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "text.db"]
    # An empty file is fine to start a new database in.
    with Store(tmp_path / "empty.db") as store:
        assert store.runs().empty


# -- kill -9 and resume ------------------------------------------------------------------------------
SWEEP = ("run", "--estimators", "reinforce,reinforce-ma,straight-through", "--problems",
         "bernoulli-target(d=3),bernoulli-quadratic(d=4)", "--samples", "100000", "--seeds", "0,1", "--quiet")
SWEEP_RUNS = 12
# (finished runs to wait for, or None for "kill during start-up"; extra seconds before the kill)
KILL_POINTS = [(None, 0.5), (2, 0.0), (6, 0.07)]


def read_only(db: Path) -> sqlite3.Connection:
    """A read-only connection: it can neither checkpoint nor remove what the killed writer left."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def stored_runs(db: Path) -> dict[str, tuple]:
    """config_key -> (run_id, finished_at, status, estimator, problem, seed, {metric: (value, stderr)})."""
    if not db.exists():
        return {}
    con = read_only(db)
    try:
        runs = con.execute("SELECT config_key, run_id, finished_at, status, estimator, problem, seed FROM runs")
        out = {key: (*rest, {}) for key, *rest in runs.fetchall()}
        by_id = {row[0]: row for row in out.values()}
        for run_id, metric, value, stderr in con.execute("SELECT run_id, metric, value, stderr FROM metrics"):
            assert run_id in by_id, f"metric row {metric} of run {run_id} has no run"
            by_id[run_id][-1][metric] = (value, stderr)
        return out
    except sqlite3.OperationalError as exc:  # created, schema not yet committed
        if "no such table" in str(exc):
            return {}
        raise
    finally:
        con.close()


def count_runs(db: Path) -> int:
    if not db.exists():
        return 0
    con = read_only(db)
    try:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # created, schema not yet committed
        return 0
    finally:
        con.close()


def check_consistent(runs: dict[str, tuple]) -> None:
    """Every stored run is finished and complete: the same metric set for every run."""
    metric_sets = {frozenset(row[-1]) for row in runs.values()}
    assert len(metric_sets) <= 1, f"runs with different metric sets: {metric_sets}"
    for key, (run_id, _, status, *_rest, metrics) in runs.items():
        assert status == "finished", (run_id, status)
        assert {"bias_norm", "variance", "unbiased_pvalue", "exact_variance", "time_per_estimate_s"} <= set(metrics)


def kill_sweep(db: Path, cwd: Path, after_runs: int | None, delay: float) -> None:
    process = subprocess.Popen(cli_command(*SWEEP, "--db", db), cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # the run command starts a worker process (two torch imports)
        if after_runs is not None:
            while count_runs(db) < after_runs:
                assert process.poll() is None, f"the sweep ended before it was killed: {process.stderr.read()}"
                assert time.monotonic() < deadline, "the sweep made no progress"
                time.sleep(0.02)
        time.sleep(delay)
        assert process.poll() is None, "the sweep finished before the kill; make it longer"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def test_kill_9_then_resume(tmp_path):
    db = tmp_path / "results.db"
    kept: dict[str, tuple] = {}
    for after_runs, delay in KILL_POINTS:
        kill_sweep(db, tmp_path, after_runs, delay)
        runs = stored_runs(db)
        check_consistent(runs)
        assert len(runs) >= (after_runs or 0)
        for key, row in kept.items():  # runs finished before an earlier kill are untouched
            assert runs[key] == row
        kept = runs
    assert 6 <= len(kept) < SWEEP_RUNS

    # The same command without --quiet, so it says what it skipped.
    result = subprocess.run(cli_command(*SWEEP[:-1], "--db", db), cwd=tmp_path, env=cli_env(), capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert f"{len(kept)} of {SWEEP_RUNS} runs already in" in result.stderr
    runs = stored_runs(db)
    check_consistent(runs)
    assert len(runs) == SWEEP_RUNS
    combos = [(estimator, problem, seed) for _, _, _, estimator, problem, seed, _ in runs.values()]
    assert sorted(combos) == sorted((e, p, s) for e in ("reinforce", "reinforce-ma", "straight-through")
                                    for p in ("bernoulli-target", "bernoulli-quadratic") for s in (0, 1))
    for key, row in kept.items():
        assert runs[key] == row, "a run finished before the kill was recomputed or changed"
    # Straight from SQL as well: one row per config key, no metric without its run, no short run.
    con = read_only(db)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT config_key) FROM runs").fetchone() == (12, 12)
        assert con.execute("SELECT count(*) FROM metrics WHERE run_id NOT IN (SELECT run_id FROM runs)"
                           ).fetchone() == (0,)
        counts = pd.read_sql_query("SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id", con)
    finally:
        con.close()
    assert len(counts) == SWEEP_RUNS and counts["n"].nunique() == 1


# -- schema versions ---------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, config_key TEXT NOT NULL UNIQUE,
    estimator TEXT NOT NULL, estimator_params TEXT NOT NULL, problem TEXT NOT NULL,
    problem_params TEXT NOT NULL, seed INTEGER NOT NULL, samples INTEGER NOT NULL, device TEXT NOT NULL,
    device_description TEXT, config TEXT NOT NULL, versions TEXT NOT NULL, git_revision TEXT,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL, wall_time_s REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('finished', 'failed', 'skipped')), error TEXT, notes TEXT NOT NULL);
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    scope TEXT NOT NULL DEFAULT 'all', metric TEXT NOT NULL, value REAL, stderr REAL,
    PRIMARY KEY (run_id, scope, metric));
INSERT INTO runs VALUES (7, 'key7', 'reinforce', '{}', 'bernoulli-target', '{}', 0, 1000, 'cpu', 'cpu',
    '{}', '{}', NULL, 't0', 't1', 1.0, 'finished', NULL, '{}');
INSERT INTO metrics VALUES (7, 'all', 'variance', 0.5, 0.01), (7, 'unit0', 'variance', 0.25, NULL);
PRAGMA application_id = 1397178929;
PRAGMA user_version = 1;
"""


def make_v1_store(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.close()


@pytest.mark.parametrize("create", [True, False], ids=["opened-for-writing", "opened-for-reading"])
def test_version_1_store_is_upgraded_with_every_number_kept(db_path, create):
    make_v1_store(db_path)
    with Store(db_path, create=create) as store:
        frame = store.metrics()
    assert raw(db_path, "PRAGMA user_version") == [(2,)]
    assert sorted(zip(frame["scope"], frame["metric"], frame["value"])) == [("all", "variance", 0.5),
                                                                             ("unit0", "variance", 0.25)]
    assert frame["epoch"].isna().all() and frame["step"].isna().all()
    with Store(db_path) as store:  # and it takes per-epoch rows afterwards
        store.save(make_result(metrics=[Metric("valid_error", 2.0, epoch=0), Metric("valid_error", 1.5, epoch=1)]),
                   VERSIONS, None, "cpu")
        assert len(store.metrics()) == 4


def test_store_from_a_newer_version_is_refused_untouched(db_path):
    make_v1_store(db_path)
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    before = db_path.read_bytes()
    for create in (True, False):
        with pytest.raises(StoreError, match="newer stochgrad-bench"):
            Store(db_path, create=create)
    assert db_path.read_bytes() == before


def test_epoch_and_step_rows_are_distinct_but_duplicates_roll_back(db_path):
    metrics = [Metric("train_loss", 1.0, step=10), Metric("train_loss", 0.5, step=20),
               Metric("train_loss", 0.4), Metric("test_error", 2.0, epoch=0)]
    with Store(db_path) as store:
        store.save(make_result(seed=0, metrics=metrics), VERSIONS, None, "cpu")
        with pytest.raises(sqlite3.IntegrityError):
            store.save(make_result(seed=1, metrics=[Metric("x", 1.0, epoch=3), Metric("x", 2.0, epoch=3)]),
                       VERSIONS, None, "cpu")
        frame = store.metrics()
    assert sorted(frame["seed"].unique()) == [0]  # the failed save left nothing behind
    losses = frame[frame["metric"] == "train_loss"].sort_values("value")
    steps = losses["step"].tolist()
    assert steps[1:] == [20, 10] and pd.isna(steps[0])
