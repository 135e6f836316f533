"""``python -m bench merge``: disjoint, overlapping and conflicting stores, version-1 sources, a
non-store file, one transaction per source, and merging twice."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from benchcli.cli import main
from bench.metrics import Metric
from bench.store import Store
from test_store import VERSIONS, make_result, make_v1_store, raw


def make_store(path: Path, seeds, variance_shift: float = 0.0, time_s: float = 1e-6, status: str = "finished") -> Path:
    with Store(path) as store:
        for seed in seeds:
            metrics = [Metric("variance", 0.5 + seed + variance_shift, 0.01), Metric("bias_norm", 0.1, 0.02),
                       Metric("valid_error", 3.0 - seed, epoch=1), Metric("time_per_estimate_s", time_s, 1e-8)]
            store.save(make_result(seed, metrics if status == "finished" else [], status=status,
                                   error=None if status == "finished" else "boom"), VERSIONS, None, "cpu")
    return path


def content(path: Path) -> list[tuple]:
    """Every run with its metrics, by config key (run ids differ between stores)."""
    return raw(path, "SELECT r.config_key, r.status, r.seed, r.notes, m.scope, m.metric, m.epoch, m.step, m.value,"
                     " m.stderr FROM runs r LEFT JOIN metrics m USING (run_id) ORDER BY 1, 5, 6, 7, 8")


def merge(capsys, *args) -> tuple[int, str, str]:
    status = main(["merge", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def test_disjoint_stores_are_united_with_every_number(tmp_path, capsys):
    a, b = make_store(tmp_path / "a.db", [0, 1]), make_store(tmp_path / "b.db", [2, 3, 4])
    dst = tmp_path / "all.db"
    status, out, err = merge(capsys, a, b, "--into", dst)
    assert (status, err) == (0, "")
    assert "a.db: 2 run(s) copied, 0 already present" in out and "b.db: 3 run(s) copied" in out
    assert content(dst) == sorted(content(a) + content(b))
    assert len(raw(dst, "SELECT * FROM metrics")) == 5 * 4


def test_overlapping_stores_keep_one_run_per_key_and_merging_again_changes_nothing(tmp_path, capsys):
    a, b = make_store(tmp_path / "a.db", [0, 1, 2]), make_store(tmp_path / "b.db", [1, 2, 3])
    dst = tmp_path / "all.db"
    assert merge(capsys, a, b, "--into", dst)[0] == 0
    assert raw(dst, "SELECT count(*), count(DISTINCT config_key) FROM runs") == [(4, 4)]
    first = content(dst)
    status, out, _ = merge(capsys, a, b, "--into", dst)
    assert status == 0 and "a.db: 0 run(s) copied, 3 already present" in out and "b.db: 0 run(s) copied" in out
    assert content(dst) == first
    assert raw(dst, "SELECT count(*) FROM metrics") == [(16,)]


def test_conflict_is_one_line_each_and_the_destination_is_kept(tmp_path, capsys):
    dst = make_store(tmp_path / "dst.db", [0, 1, 2])
    before = content(dst)
    other = make_store(tmp_path / "other.db", [1, 2, 3], variance_shift=0.25)
    status, out, err = merge(capsys, other, "--into", dst)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("conflict: reinforce") for line in lines)
    assert "seed 1" in lines[0] + lines[1] and "seed 2" in lines[0] + lines[1]
    assert "variance (all) 1.5 here, 1.75 in the source" in err and "kept the destination's run" in err
    assert "1 run(s) copied, 2 already present, 2 conflict(s)" in out
    after = content(dst)
    assert [row for row in after if row[2] != 3] == before  # seeds 0-2 untouched, seed 3 added
    assert {row[2] for row in after} == {0, 1, 2, 3}


def test_times_differing_between_machines_are_not_conflicts(tmp_path, capsys):
    dst = make_store(tmp_path / "dst.db", [0])
    slow = make_store(tmp_path / "slow.db", [0], time_s=5e-6)
    status, _, err = merge(capsys, slow, "--into", dst)
    assert (status, err) == (0, "")


def test_finished_run_replaces_a_failed_one_but_never_the_reverse(tmp_path, capsys):
    failed, finished = make_store(tmp_path / "failed.db", [0, 1], status="failed"), make_store(tmp_path / "ok.db", [1])
    dst = tmp_path / "dst.db"
    merge(capsys, finished, "--into", dst)
    status, out, _ = merge(capsys, failed, "--into", dst)
    assert status == 0 and "1 run(s) copied, 1 already present" in out
    assert sorted(raw(dst, "SELECT seed, status FROM runs")) == [(0, "failed"), (1, "finished")]
    status, out, _ = merge(capsys, finished, make_store(tmp_path / "ok0.db", [0]), "--into", dst)
    assert "1 failed run(s) replaced by finished ones" in out
    assert sorted(raw(dst, "SELECT seed, status FROM runs")) == [(0, "finished"), (1, "finished")]
    assert raw(dst, "SELECT count(*) FROM metrics WHERE run_id NOT IN (SELECT run_id FROM runs)") == [(0,)]


def test_version_1_source_is_upgraded_on_the_way_and_left_as_it_was(tmp_path, capsys):
    old = tmp_path / "v1.db"
    make_v1_store(old)
    before = old.read_bytes()
    dst = make_store(tmp_path / "dst.db", [0])
    status, out, _ = merge(capsys, old, "--into", dst)
    assert status == 0 and "1 run(s) copied" in out
    assert sorted(raw(dst, "SELECT m.scope, m.metric, m.value, m.epoch FROM metrics m JOIN runs r USING (run_id)"
                           " WHERE r.config_key = 'key7'")) == [("all", "variance", 0.5, None),
                                                               ("unit0", "variance", 0.25, None)]
    assert old.read_bytes() == before
    assert raw(old, "PRAGMA user_version") == [(1,)]


@pytest.mark.parametrize("existing_destination", [False, True])
def test_non_store_source_is_one_line_and_nothing_is_written(tmp_path, capsys, existing_destination):
    good = make_store(tmp_path / "good.db", [0, 1])
    junk = tmp_path / "notes.db"
    junk.write_text("not a database\n")
    dst = tmp_path / "dst.db"
    if existing_destination:
        make_store(dst, [5])
    before = dst.read_bytes() if existing_destination else None
    status, out, err = merge(capsys, good, junk, "--into", dst)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "notes.db is not a results database" in err
    if existing_destination:
        assert dst.read_bytes() == before
    else:
        assert not dst.exists()


def test_source_that_is_the_destination_is_refused(tmp_path, capsys):
    dst = make_store(tmp_path / "dst.db", [0])
    status, _, err = merge(capsys, dst, "--into", dst)
    assert status == 2 and "is the destination" in err


class FailingConnection:
    """The destination's connection, failing the ``fail_at``-th metrics insert (a trigger would do
    it in SQL, but stores with objects we did not create are refused)."""

    def __init__(self, connection, fail_at: int):
        self._connection, self._left = connection, fail_at

    def executemany(self, *args):
        self._left -= 1
        if self._left == 0:
            raise sqlite3.IntegrityError("full")
        return self._connection.executemany(*args)

    def __getattr__(self, name):
        return getattr(self._connection, name)


def test_each_source_is_one_transaction(tmp_path, capsys, monkeypatch):
    """A source that fails half-way leaves none of its runs; an earlier source stays merged."""
    import benchcli.commands.merge as merge_command

    first, second = make_store(tmp_path / "a.db", [0]), make_store(tmp_path / "b.db", [1, 2, 3])
    dst = make_store(tmp_path / "dst.db", [])
    real = merge_command.merge_store
    calls = iter(range(1, 100))

    def merge_failing(destination, source):  # the third run of the second source cannot be written
        if next(calls) == 2:
            destination.connection = FailingConnection(destination.connection, fail_at=3)
        return real(destination, source)

    monkeypatch.setattr(merge_command, "merge_store", merge_failing)
    with pytest.raises(sqlite3.IntegrityError):
        main(["merge", str(first), str(second), "--into", str(dst)])
    assert raw(dst, "SELECT seed FROM runs") == [(0,)]
    assert raw(dst, "SELECT count(*) FROM metrics") == [(4,)]


def test_training_runs_differing_only_in_their_speed_are_not_conflicts(tmp_path, capsys):
    """Identical VAE runs on two machines: seconds_per_step (and the times) differ, the numbers do not."""
    def vae_like(path: Path, speed: float) -> Path:
        with Store(path) as store:
            metrics = [Metric("train_elbo", -100.5, step=1000), Metric("seconds_per_step", speed, step=1000),
                       Metric("wall_time_s", 1000 * speed, step=1000)]
            store.save(make_result(0, metrics), VERSIONS, None, "cpu")
        return path

    status, out, err = merge(capsys, vae_like(tmp_path / "a.db", 0.01), vae_like(tmp_path / "b.db", 0.03),
                             "--into", tmp_path / "all.db")
    assert (status, err) == (0, "")
    assert "b.db: 0 run(s) copied, 1 already present" in out and "conflict" not in out


def test_a_copy_left_by_a_killed_merge_is_removed_by_the_next(tmp_path, capsys):
    import subprocess
    import tempfile

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    left = Path(tempfile.gettempdir()) / f"stochgrad-merge-{gone.pid}-abcd1234"
    left.mkdir()
    (left / "source.db").write_bytes(b"x" * 1000)
    mine = Path(tempfile.gettempdir()) / f"stochgrad-merge-{os.getpid()}-alive000"  # a live process's: kept
    mine.mkdir()
    try:
        assert merge(capsys, make_store(tmp_path / "a.db", [0]), "--into", tmp_path / "all.db")[0] == 0
        assert not left.exists() and mine.exists()
    finally:
        mine.rmdir()
