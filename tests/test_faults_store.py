"""The store and output files under storage faults: a full disk, paths that are not regular files,
read-only stores, damaged and crafted stores, and report text that matplotlib or Markdown would
misread. Each fault is one line on stderr (exit 2), and nothing stored is changed."""
from __future__ import annotations

import errno
import io
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import bench.files
from benchcli.cli import build_parser, main
from bench.metrics import Metric
from bench.store import Store, StoreError
from conftest import cli_command, cli_env, one_line_error
from test_store import VERSIONS, make_result, raw

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0




def gradient_metrics(value: float = 0.5) -> list[Metric]:
    return [Metric("variance", value, 0.01), Metric("bias_norm", 0.1, 0.02), Metric("exact_variance", value),
            Metric("loss_evals", 1.0), Metric("time_per_estimate_s", 1e-6, 1e-8)]


@pytest.fixture
def store(tmp_path) -> Path:
    """A results database with three finished runs, closed (no -wal file beside it)."""
    path = tmp_path / "store" / "results.db"
    path.parent.mkdir()
    with Store(path) as s:
        for seed in range(3):
            s.save(make_result(seed=seed, metrics=gradient_metrics(0.5 + seed)), VERSIONS, None, "cpu")
    return path


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- disk full -----------------------------------------------------------------------------------
def fill_up(connection: sqlite3.Connection) -> None:
    """Simulated SQLITE_FULL: the database may not grow past the pages it has now."""
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")


def test_disk_full_names_the_cause_and_keeps_the_store(store):
    big = [Metric(f"m{i}", float(i)) for i in range(5000)]
    with Store(store) as s:
        fill_up(s.connection)
        with pytest.raises(StoreError) as info:
            s.save(make_result(seed=7, metrics=big), VERSIONS, None, "cpu")
        assert not s.connection.in_transaction
    message = str(info.value)
    assert "database or disk is full" in message and str(store) in message and "\n" not in message
    assert "cannot rollback" not in message
    assert raw(store, "SELECT seed FROM runs ORDER BY seed") == [(0,), (1,), (2,)]
    assert raw(store, "PRAGMA integrity_check") == [("ok",)]


def test_disk_full_during_a_sweep_is_one_line_and_nothing_is_claimed(invoke, tmp_path, monkeypatch):
    db = tmp_path / "r.db"
    real_save = Store.save

    def save_on_a_full_disk(self, result, *args, **kwargs):
        fill_up(self.connection)  # and a run too large for the pages left
        result.metrics = result.metrics + [Metric(f"pad{i}", float(i)) for i in range(5000)]
        return real_save(self, result, *args, **kwargs)

    monkeypatch.setattr(Store, "save", save_on_a_full_disk)
    code, out, err = invoke("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)",
                            "--samples", "200", "--warmup", "0", "--quiet", "--db", db)
    one_line_error(code, err, "database or disk is full", str(db))
    assert "results in" not in out
    assert raw(db, "SELECT count(*) FROM runs") == [(0,)]


# -- paths that are not regular files --------------------------------------------------------------
def test_dev_null_is_refused_and_nothing_created(invoke, tmp_path):
    journal = Path("/dev/null-journal")
    existed = journal.exists()
    for argv in (("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--db", "/dev/null"),
                 ("export", "--db", "/dev/null", "--format", "csv", "--out", tmp_path / "o.csv")):
        code, out, err = invoke(*argv)
        one_line_error(code, err, "/dev/null is a character device")
    assert journal.exists() == existed and not (tmp_path / "o.csv").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
@pytest.mark.parametrize("command", ["export", "report", "run"])
def test_fifo_is_refused_without_hanging(tmp_path, command):
    fifo = tmp_path / "pipe.db"
    os.mkfifo(fifo)
    argv = {"export": ["export", "--db", fifo, "--format", "csv", "--out", tmp_path / "o.csv"],
            "report": ["report", "--db", fifo, "--out", tmp_path / "rep"],
            "run": ["run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--db", fifo]}[command]
    result = subprocess.run(cli_command(*argv), cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    one_line_error(result.returncode, result.stderr, "named pipe (FIFO)")


def _path_cases(tmp: Path) -> list[tuple[str, Path, str]]:
    (tmp / "loop").symlink_to(tmp / "loop")
    (tmp / "dangling.db").symlink_to(tmp / "nowhere.db")
    (tmp / "plain").write_text("a file\n")
    return [("symlink loop", tmp / "loop", "Too many levels of symbolic links"),
            ("dangling symlink", tmp / "dangling.db", "symbolic link to"),
            ("name too long", tmp / ("x" * 300 + ".db"), "File name too long"),
            ("path through a file", tmp / "plain" / "r.db", "Not a directory")]


@pytest.mark.parametrize("case", range(4), ids=["loop", "dangling", "too-long", "through-file"])
@pytest.mark.parametrize("command", ["run", "export"])
def test_bad_paths_are_one_line_each(invoke, tmp_path, case, command):
    _, path, fragment = _path_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = (("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--db", path)
            if command == "run" else ("export", "--db", path, "--format", "csv", "--out", tmp_path / "o.csv"))
    code, out, err = invoke(*argv)
    if command == "export" and case == 3:
        fragment = "does not exist" if "does not exist" in err else fragment
    one_line_error(code, err, fragment if command == "run" or case != 1 else "symbolic link to")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their permissions")
def test_unreadable_store_is_one_line(invoke, store, tmp_path):
    store.chmod(0)
    try:
        code, out, err = invoke("export", "--db", store, "--format", "csv", "--out", tmp_path / "o.csv")
    finally:
        store.chmod(0o644)
    one_line_error(code, err, "Permission denied")


# -- output files ------------------------------------------------------------------------------------
def full_disk_on_flush(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_export_to_a_full_disk_leaves_no_file(invoke, store, tmp_path, monkeypatch):
    out = tmp_path / "out" / "metrics.csv"
    out.parent.mkdir()
    monkeypatch.setattr(os, "fsync", full_disk_on_flush)
    code, stdout, err = invoke("export", "--db", store, "--format", "csv", "--out", out)
    one_line_error(code, err, "No space left on device", str(out))
    assert list(out.parent.iterdir()) == []


def test_export_replaces_an_old_file_only_when_complete(invoke, store, tmp_path, monkeypatch):
    out = tmp_path / "metrics.csv"
    out.write_text("old contents\n")
    monkeypatch.setattr(os, "fsync", full_disk_on_flush)
    code, _, err = invoke("export", "--db", store, "--format", "csv", "--out", out)
    assert code == 2 and out.read_text() == "old contents\n"
    monkeypatch.undo()
    code, _, err = invoke("export", "--db", store, "--format", "csv", "--out", out)
    assert code == 0, err
    assert len(pd.read_csv(out)) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "store"]


def test_export_to_stdout(invoke, store, tmp_path):
    code, out, err = invoke("export", "--db", store, "--format", "csv", "--out", "-")
    assert code == 0, err
    assert "standard output" in err
    frame = pd.read_csv(io.StringIO(out))
    assert len(frame) == 15 and set(frame["metric"]) == {m.name for m in gradient_metrics()}
    assert not (tmp_path / "-").exists()


def test_report_to_a_full_disk_leaves_no_partial_file(invoke, store, tmp_path, monkeypatch):
    out = tmp_path / "report"
    monkeypatch.setattr(os, "fsync", full_disk_on_flush)
    code, _, err = invoke("report", "--db", store, "--out", out)
    one_line_error(code, err, "No space left on device")
    assert list(out.iterdir()) == []


def test_write_atomically_removes_the_temporary_file_on_any_error(tmp_path):
    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("a bug in the writer")

    with pytest.raises(RuntimeError):
        bench.files.write_atomically(tmp_path / "x.csv", broken)
    assert list(tmp_path.iterdir()) == []


# -- read-only stores ----------------------------------------------------------------------------------
def test_readers_open_the_store_read_only_and_leave_no_files(invoke, store, tmp_path):
    before = files(store.parent)
    with Store(store, create=False) as s:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            s.connection.execute("CREATE TABLE intruder (x)")
        assert len(s.runs()) == 3
    code, _, err = invoke("export", "--db", store, "--format", "csv", "--out", tmp_path / "o.csv")
    assert code == 0, err
    code, _, err = invoke("report", "--db", store, "--out", tmp_path / "rep")
    assert code == 0, err
    assert files(store.parent) == before  # no -journal, -wal or -shm; the bytes unchanged


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only directories; the test above checks mode=ro")
def test_export_and_report_work_in_a_read_only_directory(invoke, store, tmp_path):
    store.parent.chmod(0o555)
    try:
        for argv in (("export", "--db", store, "--format", "csv", "--out", tmp_path / "o.csv"),
                     ("report", "--db", store, "--out", tmp_path / "rep")):
            code, _, err = invoke(*argv)
            assert code == 0, err
    finally:
        store.parent.chmod(0o755)


# -- damaged stores ------------------------------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated-1-byte":
        data = data[:-1]
    elif how == "truncated-1-page":
        data = data[:-4096]
    elif how == "garbage-page":  # overwrite page 2 (the runs table's b-tree root) with junk
        data[4096:8192] = bytes((i * 37 + 11) % 256 for i in range(4096))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated-1-byte", "truncated-1-page", "garbage-page"])
def test_damaged_store_is_refused_untouched(invoke, store, tmp_path, how):
    damage(store, how)
    before = files(store.parent)
    for argv in (("export", "--db", store, "--format", "csv", "--out", tmp_path / "o.csv"),
                 ("report", "--db", store, "--out", tmp_path / "rep"),
                 ("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--samples", "100",
                  "--db", store)):
        code, out, err = invoke(*argv)
        one_line_error(code, err, str(store), "damaged", ".recover")
    assert files(store.parent) == before  # nothing written into it, nothing created beside it
    assert not (tmp_path / "o.csv").exists()


def test_a_store_being_created_is_waited_for(tmp_path):
    path = tmp_path / "results.db"
    path.touch()  # another process has just created the file

    def create_it():
        time.sleep(0.2)
        with Store(path) as s:
            s.save(make_result(), VERSIONS, None, "cpu")

    writer = threading.Thread(target=create_it)
    writer.start()
    try:
        with Store(path, create=False) as s:
            runs = s.runs()
    finally:
        writer.join()
    assert len(runs) in (0, 1)  # the schema is there: read before or after the first save


def test_an_empty_file_is_not_called_a_foreign_database(tmp_path):
    path = tmp_path / "results.db"
    path.touch()
    with pytest.raises(StoreError) as info:
        Store(path, create=False)
    assert "empty file" in str(info.value) and "not a stochgrad-bench" not in str(info.value)


# -- crafted stores -------------------------------------------------------------------------------------
CRAFTED = {
    "trigger": "CREATE TRIGGER rewrite AFTER INSERT ON metrics BEGIN UPDATE metrics SET value = 0; END",
    "view": "CREATE VIEW everything AS SELECT * FROM runs",
    "table": "CREATE TABLE extra (x)",
}


@pytest.mark.parametrize("kind", CRAFTED)
def test_store_with_foreign_schema_objects_is_refused(invoke, store, tmp_path, kind):
    con = sqlite3.connect(store)
    con.execute(CRAFTED[kind])
    con.commit()
    con.close()
    before = files(store.parent)
    for argv in (("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--samples", "100",
                  "--db", store),
                 ("export", "--db", store, "--format", "csv", "--out", tmp_path / "o.csv")):
        code, out, err = invoke(*argv)
        one_line_error(code, err, str(store), "schema objects stochgrad-bench does not create", kind)
    assert files(store.parent) == before


def test_malformed_json_in_a_stored_run_does_not_crash_report_or_export(invoke, store, tmp_path):
    con = sqlite3.connect(store)
    con.execute("UPDATE runs SET estimator_params = '{not json', config = '[1, 2' WHERE seed = 1")
    con.commit()
    con.close()
    code, _, err = invoke("export", "--db", store, "--format", "csv", "--out", tmp_path / "o.csv")
    assert code == 0, err
    code, out, err = invoke("report", "--db", store, "--out", tmp_path / "rep")
    assert code == 0, err
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "| unreadable |" in summary and "is not valid JSON" in summary


# -- report text --------------------------------------------------------------------------------------------
def test_report_survives_dollars_and_escapes_html(invoke, tmp_path):
    db = tmp_path / "r.db"
    with Store(db) as s:
        for seed in (0, 1):
            result = make_result(seed=seed, metrics=gradient_metrics(0.5 + seed))
            result.config = type(result.config)("reinforce", {"note": r"$\frac{1}$ and $x^$"}, "bernoulli-target",
                                                {"d": 3, "t": 0.45, "logit": 0.0}, seed, 1000)
            s.save(result, VERSIONS, None, "cpu")
        s.save(make_result(seed=5, status="failed", estimator="<script>alert(1)</script>",
                           error="<script>alert(2)</script>", metrics=[]), VERSIONS, None, "cpu")
    code, out, err = invoke("report", "--db", db, "--out", tmp_path / "rep")
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "<script>alert" not in page and "<script>alert" not in summary
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in summary
    assert "(note='$" in summary and "and $x^$')" in summary  # labels keep their '$' outside figures
    assert "<img" in page


def test_plugin_help_says_it_runs_code():
    parser = build_parser()
    for command in ("run", "list"):
        sub = parser._subparsers._group_actions[0].choices[command]
        text = sub.format_help()
        assert "runs as ordinary Python code" in " ".join(text.split())


# -- readers beside a writer -----------------------------------------------------------------------------
def run_keys_and_metric_counts(store: Store) -> tuple[list[int], dict[int, int]]:
    runs = store.runs()
    metrics = store.metrics()
    return sorted(runs["run_id"]), metrics.groupby("run_id").size().to_dict()


@pytest.mark.parametrize("writer_open", [False, True], ids=["no-wal-at-open", "writer-open"])
def test_a_reader_sees_one_snapshot_while_a_writer_saves(store, writer_open):
    """A reader's runs and metrics come from one snapshot: runs a writer saves (and checkpoints)
    after the reader opened are invisible to it, whether a writer was open then (a -wal file
    existed) or not (the reader once opened such a store immutable, assuming it never changes)."""
    writer = Store(store) if writer_open else None
    try:
        with Store(store, create=False) as reader:
            before_runs, _ = run_keys_and_metric_counts(reader)
            with Store(store) as other:
                for seed in range(3, 40):  # replaced and new runs, enough pages to move the tables
                    other.save(make_result(seed=seed % 6, metrics=gradient_metrics(seed) +
                                           [Metric(f"pad{i}", float(i)) for i in range(200)]), VERSIONS, None, "cpu")
                other.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            runs, counts = run_keys_and_metric_counts(reader)
        assert runs == before_runs == [1, 2, 3]
        assert counts == {1: 5, 2: 5, 3: 5}  # every run with all its metrics, and nothing else
    finally:
        if writer is not None:
            writer.close()
    with Store(store, create=False) as reader:  # a new reader sees the writer's runs
        runs, counts = run_keys_and_metric_counts(reader)
    assert len(runs) == 6 and set(counts.values()) == {205}


def test_a_reader_leaves_no_files_beside_a_closed_store_and_is_refused_writes(store):
    before = files(store.parent)
    with Store(store, create=False) as reader:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.connection.execute("DELETE FROM runs")
        assert len(reader.runs()) == 3
    assert files(store.parent) == before


def test_size_check_reads_again_before_calling_a_store_cut_short(store, monkeypatch):
    """The header's page count and the file's size are read apart; a writer checkpointing between
    the two reads made a healthy store look cut short ("damaged ... restore it from a backup")."""
    from bench import store as store_module

    real_stat, calls = Path.stat, []

    def stale_size(self, *args, **kwargs):  # the first size read sees one page more than the header
        result = real_stat(self, *args, **kwargs)
        if self == store and not calls:
            calls.append(1)
            return os.stat_result((*result[:6], result.st_size + 4096, *result[7:]))
        return result

    header = store.read_bytes()[:100]
    monkeypatch.setattr(Path, "stat", stale_size)
    store_module._check_size(store, header)  # no StoreError: the second read agrees
    assert calls == [1]


# -- damaged indexes -------------------------------------------------------------------------------------
def damage_config_key_index(path: Path) -> None:
    """Change one config key inside the runs table's unique index only (its last hex digit, so the
    order holds): quick_check passes, but the index no longer finds that run."""
    con = sqlite3.connect(path)
    root, page_size = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_runs_1'").fetchone()[0], \
        con.execute("PRAGMA page_size").fetchone()[0]
    key = con.execute("SELECT config_key FROM runs ORDER BY run_id LIMIT 1").fetchone()[0]
    con.close()
    data = bytearray(path.read_bytes())
    page = slice((root - 1) * page_size, root * page_size)
    at = bytes(data[page]).index(key.encode())
    last = at + len(key) - 1
    data[page.start + last] = ord("0") if data[page.start + last] != ord("0") else ord("1")
    path.write_bytes(bytes(data))
    assert raw(path, "PRAGMA quick_check") == [("ok",)]


def test_a_damaged_config_key_index_is_found_and_nothing_is_stored_twice(invoke, store, tmp_path):
    damage_config_key_index(store)
    before = files(store.parent)
    for argv in (("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--samples", "100",
                  "--db", store),
                 ("export", "--db", store, "--format", "csv", "--out", tmp_path / "o.csv"),
                 ("merge", store, "--into", tmp_path / "merged.db")):
        code, out, err = invoke(*argv)
        one_line_error(code, err, str(store), "damaged", "REINDEX")
    assert files(store.parent) == before
    assert not (tmp_path / "merged.db").exists() and not (tmp_path / "o.csv").exists()
    con = sqlite3.connect(store)
    con.execute("REINDEX")  # the repair the message names
    con.close()
    with Store(store) as s:
        assert len(s.runs()) == 3


def test_a_metrics_index_missing_entries_is_found(store):
    """The metrics index rebuilt as if partial (no 'variance' rows), then declared whole again: a
    sound b-tree that quick_check passes, missing three entries."""
    con = sqlite3.connect(store)
    (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'metrics_key'").fetchone()
    con.execute("PRAGMA writable_schema = ON")
    con.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'metrics_key'", (sql + " WHERE metric != 'variance'",))
    con.commit()
    con.close()
    con = sqlite3.connect(store)
    con.execute("REINDEX metrics_key")
    con.execute("PRAGMA writable_schema = ON")
    con.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'metrics_key'", (sql,))
    con.commit()
    con.close()
    assert raw(store, "PRAGMA quick_check") == [("ok",)]
    with pytest.raises(StoreError, match=r"damaged \(index metrics_key holds 12 entries for 15 rows\).*REINDEX"):
        Store(store, create=False)


def test_a_store_with_wrong_columns_is_one_line(invoke, tmp_path):
    db = tmp_path / "cols.db"
    with Store(db):
        pass
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE runs DROP COLUMN notes")
    con.close()
    for argv in (("export", "--db", db, "--format", "csv", "--out", tmp_path / "o.csv"),
                 ("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--samples", "100",
                  "--db", db)):
        code, out, err = invoke(*argv)
        one_line_error(code, err, str(db), "without the column(s) notes")


# -- read-only storage -----------------------------------------------------------------------------------
def test_a_read_only_store_is_refused_for_writing_with_nothing_created_beside_it(invoke, store, monkeypatch):
    store.chmod(0o444)
    if AS_ROOT:  # root may write anything: this process is told it may not write the store
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if (Path(path) == store and mode & os.W_OK)
                            else real_access(path, mode, **kw))
    before = files(store.parent)
    code, out, err = invoke("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--samples",
                            "100", "--db", store)
    one_line_error(code, err, str(store), "read-only")
    assert files(store.parent) == before


def test_a_version_1_store_on_read_only_storage_is_exported(invoke, tmp_path, monkeypatch):
    """Storage this process cannot write (a read-only mount; simulated, as root writes anywhere):
    the upgrade is made in a private copy, and the store is left as it was."""
    from bench import store as store_module
    from test_store import make_v1_store

    folder = tmp_path / "ro"
    folder.mkdir()
    make_v1_store(folder / "old.db")
    before = files(folder)
    monkeypatch.setattr(store_module, "_writable_storage", lambda path: path.parent != folder)
    code, out, err = invoke("export", "--db", folder / "old.db", "--format", "csv", "--out", tmp_path / "o.csv")
    assert code == 0, err
    assert files(folder) == before
    frame = pd.read_csv(tmp_path / "o.csv")
    assert sorted(zip(frame["scope"], frame["value"])) == [("all", 0.5), ("unit0", 0.25)]


def test_a_store_locked_past_the_busy_timeout_is_one_line(invoke, store, monkeypatch):
    from bench import store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 300)
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write transaction that does not end
    try:
        with Store(store):  # opening for writing takes the write lock (schema check, WAL mode)
            pass
    except StoreError as exc:
        assert "stayed locked by another process for 0.3 s" in str(exc) and "\n" not in str(exc)
    else:
        pytest.fail("a locked store was opened for writing")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_store_that_cannot_be_created_leaves_no_empty_file(invoke, tmp_path, monkeypatch):
    from bench.store import StorageFailure

    def full(self):
        raise StorageFailure(f"cannot write to results database {self.path}: database or disk is full")

    monkeypatch.setattr(Store, "_initialise", full)
    db = tmp_path / "new.db"
    code, out, err = invoke("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--samples",
                            "100", "--db", db)
    one_line_error(code, err, "disk is full")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("new.db")) == []


def test_the_records_readme_shows_device_and_revision_fields_as_text(tmp_path):
    from analysis.frames import load_results
    from analysis.record import readme

    db = tmp_path / "r.db"
    with Store(db) as s:
        s.save(make_result(), VERSIONS, "abc123\n- injected item", "cpu <script>alert(1)</script>\n# Injected heading")
    text = readme(load_results(db), "t", ["python", "-m", "bench"])
    assert "&lt;script&gt;alert(1)&lt;/script&gt; # Injected heading" in text
    assert "abc123 - injected item" in text
    assert not any(line.startswith(("# Injected", "- injected")) for line in text.splitlines())
