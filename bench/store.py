"""The results store: an embedded SQLite database with a runs table and metrics in long form.

Every run is written with its metrics in one transaction, so a killed sweep leaves either the
whole run or nothing; a finished run is found again by its config key and not recomputed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import stat
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pandas as pd

from bench.runconfig import RunResult

APPLICATION_ID = 0x53474231  # "SGB1", stamped in the SQLite header (PRAGMA application_id)
SCHEMA_VERSION = 2
DEFAULT_DB = Path("bench-results") / "results.db"
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    config_key TEXT NOT NULL UNIQUE,
    estimator TEXT NOT NULL,
    estimator_params TEXT NOT NULL,
    problem TEXT NOT NULL,
    problem_params TEXT NOT NULL,
    seed INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    device TEXT NOT NULL,
    device_description TEXT,
    config TEXT NOT NULL,
    versions TEXT NOT NULL,
    git_revision TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    wall_time_s REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('finished', 'failed', 'skipped')),
    error TEXT,
    notes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    scope TEXT NOT NULL DEFAULT 'all',
    metric TEXT NOT NULL,
    epoch INTEGER,
    step INTEGER,
    value REAL,
    stderr REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS metrics_key
    ON metrics (run_id, scope, metric, ifnull(epoch, -1), ifnull(step, -1));
CREATE INDEX IF NOT EXISTS runs_by_pair ON runs (estimator, problem);
"""

# Version 1 had no epoch/step and a primary key on (run_id, scope, metric): set its metrics table
# aside, let SCHEMA create the current one, then copy the rows across.
MIGRATIONS = {1: ("ALTER TABLE metrics RENAME TO metrics_v1",
                  "INSERT INTO metrics (run_id, scope, metric, value, stderr)"
                  " SELECT run_id, scope, metric, value, stderr FROM metrics_v1; DROP TABLE metrics_v1")}


# Every schema object a store of ours may hold (v1 stores have the metrics primary-key index).
# A store with anything else (a trigger, a view, another table) was not made by us: refused.
EXPECTED_OBJECTS = {("table", "runs"), ("table", "metrics"), ("table", "sqlite_sequence"),
                    ("index", "metrics_key"), ("index", "runs_by_pair"), ("index", "sqlite_autoindex_runs_1"),
                    ("index", "sqlite_autoindex_metrics_1")}
# The columns every version's tables have (version 1 metrics had no epoch or step; the upgrade adds them).
REQUIRED_COLUMNS = {"runs": {"run_id", "config_key", "estimator", "estimator_params", "problem", "problem_params", "seed",
                             "samples", "device", "config", "versions", "started_at", "finished_at", "wall_time_s",
                             "status", "notes"},
                    "metrics": {"run_id", "scope", "metric", "value", "stderr"}}
# SQLite result codes (primary, low byte) that mean the storage failed, not the program.
STORAGE_ERRORS = {3: "SQLITE_PERM", 8: "SQLITE_READONLY", 10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT",
                  13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN", 26: "SQLITE_NOTADB"}
CREATION_WAIT_S = 2.0  # how long a reader waits for a store that another process is creating
SIZE_CHECKS = 4  # reads of the header and size that must all disagree before a store is called cut short
BUSY_TIMEOUT_MS = 60_000  # how long a writer waits for another writer's transaction to end


class StoreError(ValueError):
    """The path is not usable as a results database; the message is one line."""


class StorageFailure(StoreError, sqlite3.OperationalError):
    """SQLite could not write the file (disk full, I/O error, read-only, damaged): one line
    naming the cause and the path; still an OperationalError for callers that catch those."""


def recovery_hint(path: Path) -> str:
    return (f"restore it from a backup, or salvage what is readable with "
            f"`sqlite3 {path} .recover | sqlite3 recovered.db`")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _stat(path: Path, create: bool) -> os.stat_result | None:
    """The file's status (symbolic links followed), or None for a path where a new store may be
    made; every other case is a one-line StoreError."""
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise StoreError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist") from None
    except OSError as exc:  # a symlink loop, a name too long, a path through a file, no permission
        raise StoreError(f"cannot use {path} as a results database: {exc.strerror}") from None
    if not create:
        raise StoreError(f"results database {path} does not exist")
    try:
        parent = path.parent.stat()
    except FileNotFoundError:
        raise StoreError(f"directory {path.parent} does not exist (for --db {path})") from None
    except OSError as exc:
        raise StoreError(f"cannot use {path} as a results database: {exc.strerror}") from None
    if not stat.S_ISDIR(parent.st_mode):
        raise StoreError(f"{path.parent} is not a directory (for --db {path})")
    return None


def _read_header(path: Path, create: bool) -> bytes:
    """The first 100 bytes; a reader waits briefly on an empty file (a store being created)."""
    deadline = time.monotonic() + (0 if create else CREATION_WAIT_S)
    while True:
        try:
            with path.open("rb") as handle:
                header = handle.read(100)
        except OSError as exc:
            raise StoreError(f"cannot read results database {path}: {exc.strerror}") from None
        if header or time.monotonic() >= deadline:
            return header
        time.sleep(0.05)


def _check_size(path: Path, header: bytes) -> None:
    """A file cut short (a copy that ended early, a full disk) is found by its size, which
    quick_check alone does not always see: a whole number of pages, and, with no write-ahead log
    holding newer pages, exactly the page count the header records."""
    if len(header) < 100:
        raise StoreError(f"{path} is damaged (shorter than an SQLite header); {recovery_hint(path)}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    size = path.stat().st_size
    if page_size < 512 or size % page_size:
        raise StoreError(f"{path} is damaged (its size, {size} bytes, is not a whole number of "
                         f"{page_size}-byte pages: it was cut short); {recovery_hint(path)}")
    wal = path.with_name(path.name + "-wal")
    for attempt in range(SIZE_CHECKS):  # a writer checkpointing meanwhile changes both: read again
        pages, valid_for, changes = (int.from_bytes(header[a:a + 4], "big") for a in (28, 92, 24))
        if not (valid_for == changes and pages and not (wal.exists() and wal.stat().st_size)
                and size != pages * page_size):
            return
        time.sleep(0.05 * (attempt + 1))
        with path.open("rb") as handle:
            header = handle.read(100)
        size = path.stat().st_size
    raise StoreError(f"{path} is damaged (the header records {pages} pages, the file holds "
                     f"{size // page_size}); {recovery_hint(path)}")


def _writable_storage(path: Path) -> bool:
    """Whether this process may write the store and create files beside it (then so may a writer)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _uri(path: Path, read_only: bool) -> str:
    """An SQLite URI for ``path`` (quoted, so '?', '#' and '%' stay part of it).

    A reader must see a consistent snapshot while a writer may be saving runs, so it takes SQLite's
    locks like any connection; it never opens with ``immutable=1`` (no locks, the file assumed
    unchanging) unless no writer can exist: read-only storage with no write-ahead log. A reader of
    writable storage opens read-write (writes refused by ``query_only``, see :class:`Store`) so that
    closing it removes the -wal and -shm files it made; one whose -wal already exists (a writer is
    at work, or was killed) opens mode=ro and changes nothing."""
    uri = f"file:{urllib.request.pathname2url(str(path.resolve()))}"
    if not read_only:
        return uri + "?mode=rw"
    if path.with_name(path.name + "-wal").exists():
        return uri + "?mode=ro"
    if _writable_storage(path):
        return uri + "?mode=rw"
    return uri + "?mode=ro&immutable=1"


@contextlib.contextmanager
def private_folder(purpose: str) -> Iterator[str]:
    """A temporary folder named with this process's id, removed afterwards; folders of earlier
    processes that are gone (killed with kill -9 mid-merge: a whole store's copy) are removed first."""
    import shutil

    prefix = f"stochgrad-{purpose}-"
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        pid = stale.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as folder:
        yield folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def check_path(path: Path, create: bool) -> None:
    """Refuse anything but a regular file that is one of our databases, or a new path (or an
    empty file) where ``create`` may start one. Every refusal is one line; nothing is written."""
    status = _stat(path, create)
    if status is None:
        return
    if stat.S_ISDIR(status.st_mode):
        raise StoreError(f"{path} is a directory, not a results database file")
    if not stat.S_ISREG(status.st_mode):
        raise StoreError(f"{path} is a {_file_kind(status.st_mode)}, not a results database file")
    header = _read_header(path, create)
    if len(header) == 0:
        if not create:
            raise StoreError(f"{path} is an empty file, not yet a results database (if a run is creating "
                             f"it, try again once it has stored a run)")
        return
    if not header.startswith(SQLITE_MAGIC):
        raise StoreError(f"{path} is not a results database (not an SQLite file)")
    _check_size(path, header)
    deadline = time.monotonic() + (0 if create else CREATION_WAIT_S)
    while True:
        try:
            probe = sqlite3.connect(_uri(path, read_only=True), uri=True, timeout=60)
            try:
                app_id = probe.execute("PRAGMA application_id").fetchone()[0]
                tables = probe.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            finally:
                probe.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a readable results database ({exc})") from None
        if app_id == APPLICATION_ID or (create and app_id == 0 and tables == 0):
            return
        if app_id != 0 or tables != 0 or time.monotonic() >= deadline:  # else: being created, wait
            raise StoreError(f"{path} is an SQLite file but not a stochgrad-bench results database")
        time.sleep(0.05)


def _finite(value: float | None) -> float | None:
    """SQLite keeps +-inf but turns NaN into NULL; be explicit about it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


class Store:
    """A results database; use as a context manager. ``create=False`` opens it read-only (for
    export and report): nothing is written and nothing is created beside it."""

    def __init__(self, path: Path | str, create: bool = True):
        self.path = Path(path)
        self.read_only = not create
        check_path(self.path, create)
        if create and self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"cannot write results database {self.path}: the file is read-only "
                             f"(export and report can read it)")
        new = create and not self.path.exists()
        try:
            self.connection = self._connect(self.read_only)
            try:
                if self.read_only:  # one snapshot for everything this reader reads (see _begin_reading)
                    self._begin_reading()
                self._verify()
                self._check_version()
                if create:
                    self._initialise()
            except BaseException:
                self.connection.close()
                raise
        except BaseException:
            if new:  # a store that could not be created (a full disk) is not left behind as an empty file
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(OSError):
                        Path(f"{self.path}{suffix}").unlink()
            raise

    def _begin_reading(self) -> None:
        """Open the read transaction a reader holds until it closes: every query sees the store as
        it was at the first one (a run and its metrics, or neither), whatever a writer saves meanwhile."""
        try:
            self.connection.execute("BEGIN")
            self.connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._storage_error("read", exc) from None

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        try:
            file = self._file or self.path
            exists = file.exists()
            connection = sqlite3.connect(_uri(file, read_only) if exists else file, uri=exists,
                                         timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            connection.execute("PRAGMA trusted_schema = OFF")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if read_only:
                connection.execute("PRAGMA query_only = ON")  # opened read-write only to tidy up on close
        except sqlite3.Error as exc:
            raise self._storage_error("open", exc) from None
        return connection

    def _storage_error(self, action: str, exc: sqlite3.Error) -> StoreError:
        detail = " ".join(str(exc).split())
        if _locked(exc):
            return StoreError(self._locked_message())
        if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in (11, 26) or "malformed" in detail:
            return StoreError(f"{self.path} is damaged ({detail}); nothing was written to it; {recovery_hint(self.path)}")
        return StoreError(f"cannot {action} results database {self.path}: {detail}")

    def _verify(self) -> None:
        """Before anything is read or written: SQLite's quick integrity check; the indexes the store
        relies on (a config-key index missing entries passes quick_check, and runs would then be
        stored twice), checked against their tables; the columns we read; and no schema object we
        did not create (a trigger could rewrite stored results behind our back)."""
        try:
            problems = [row[0] for row in self.connection.execute("PRAGMA quick_check")]
            objects = set(self.connection.execute(
                "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'").fetchall())
            if problems == ["ok"] and ("table", "runs") in objects:
                problems = [row[0] for row in self.connection.execute("PRAGMA integrity_check(runs)")]
            if problems == ["ok"] and ("index", "metrics_key") in objects:
                table, indexed = self.connection.execute(
                    "SELECT (SELECT count(*) FROM metrics NOT INDEXED),"
                    " (SELECT count(*) FROM metrics INDEXED BY metrics_key WHERE run_id IS NOT NULL)").fetchone()
                if table != indexed:
                    problems = [f"index metrics_key holds {indexed} entries for {table} rows"]
            columns = {table: {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}
                       for kind, table in objects if kind == "table" and table in REQUIRED_COLUMNS}
        except sqlite3.DatabaseError as exc:
            raise self._storage_error("read", exc) from None
        if problems != ["ok"]:
            index = any("index" in problem for problem in problems)
            repair = (f"rebuild its indexes with `sqlite3 {self.path} REINDEX` (if that fails, "
                      f"{recovery_hint(self.path)})" if index else recovery_hint(self.path))
            found = "; ".join(" ".join(problem.split()) for problem in problems[:3])
            raise StoreError(f"{self.path} is damaged ({found}); nothing was "
                             f"written to it; {repair}")
        foreign = sorted(objects - EXPECTED_OBJECTS)
        if foreign:
            names = ", ".join(f"{kind} {name}" for kind, name in foreign[:5])
            raise StoreError(f"{self.path} holds schema objects stochgrad-bench does not create ({names}); "
                             f"refusing to use it")
        for table, present in columns.items():
            missing = sorted(REQUIRED_COLUMNS[table] - present)
            if missing:
                raise StoreError(f"{self.path} has a {table} table without the column(s) {', '.join(missing)}: "
                                 f"not a results database this version can read; refusing to use it")

    def _initialise(self) -> None:
        """Create the schema, or upgrade an older one in the same transaction (all or nothing)."""
        with self._transaction(lambda exc: str(self._storage_error("write to", exc)), wal=True) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            has_tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
            steps = [MIGRATIONS[old] for old in range(max(version, 1), SCHEMA_VERSION)] if has_tables else []
            for before, _ in steps:
                conn.execute(before)
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            for _, after in steps:
                for statement in filter(str.strip, after.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self, failure: Callable[[sqlite3.Error], str], wal: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction (all or nothing). A storage failure (disk full, I/O, damage) is a
        one-line :class:`StorageFailure` with ``failure(exc)`` as its message; nothing is half-written."""
        conn = self.connection
        try:
            if wal:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            if _storage_failure(exc):
                raise StorageFailure(failure(exc)) from None
            if _locked(exc):
                raise StoreError(self._locked_message()) from None
            raise

    def _locked_message(self) -> str:
        return (f"results database {self.path} stayed locked by another process for {BUSY_TIMEOUT_MS / 1000:g} s "
                f"(another sweep or merge writing to it?); nothing was written; try again when it has finished")

    def _check_version(self) -> None:
        version = self.connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer stochgrad-bench (schema {version}, "
                             f"this one reads up to {SCHEMA_VERSION}); upgrade stochgrad-bench")
        if 0 < version < SCHEMA_VERSION:  # upgrades in one transaction; the stored numbers are all kept
            if not self.read_only:
                self._initialise()
                return
            self.connection.close()  # a reader upgrades through a writable connection, then reads
            if not _writable_storage(self.path):  # read-only storage: upgrade a private copy instead
                self._scratch = contextlib.ExitStack()
                folder = self._scratch.enter_context(private_folder("upgrade"))
                copy = Path(folder) / self.path.name
                source = sqlite3.connect(_uri(self.path, read_only=True), uri=True)
                target = sqlite3.connect(copy)
                try:
                    source.backup(target)
                finally:
                    target.close()
                    source.close()
                self._file = copy
            self.connection = self._connect(read_only=False)
            try:
                self._initialise()
            finally:
                self.connection.close()
            self.connection = self._connect(read_only=True)
            self._begin_reading()
            self._verify()

    _scratch: contextlib.ExitStack | None = None  # an upgraded copy of a store on read-only storage
    _file: Path | None = None  # the file connected to, when not ``path`` (that copy)

    def close(self) -> None:
        self.connection.close()
        if self._scratch is not None:
            self._scratch.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------
    def finished_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            rows = self.connection.execute(
                f"SELECT config_key FROM runs WHERE status = 'finished' AND config_key IN "
                f"({','.join('?' * len(part))})", part)
            found.update(row[0] for row in rows)
        return found

    def save(self, result: RunResult, versions: dict[str, Any], git_revision: str | None,
             device_description: str) -> int:
        """Write (or replace) one run and all its metrics atomically; return its run_id. A storage
        failure (disk full, I/O error) leaves the store as it was and is a one-line StoreError."""
        c = result.config
        if not -2**63 <= c.seed < 2**63:
            raise StoreError(f"seed {c.seed} cannot be stored (seeds are 64-bit integers)")
        failure = (lambda exc: f"could not save the run to {self.path}: {' '.join(str(exc).split())}; "
                               "runs saved before are intact")
        with self._transaction(failure) as conn:
            conn.execute("DELETE FROM runs WHERE config_key = ?", (c.key,))
            cursor = conn.execute(
                "INSERT INTO runs (config_key, estimator, estimator_params, problem, problem_params, seed,"
                " samples, device, device_description, config, versions, git_revision, started_at,"
                " finished_at, wall_time_s, status, error, notes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (c.key, c.estimator, json.dumps(c.estimator_params, sort_keys=True), c.problem,
                 json.dumps(c.problem_params, sort_keys=True), c.seed, c.samples, c.device,
                 device_description, json.dumps(c.as_dict(), sort_keys=True),
                 json.dumps(versions, sort_keys=True), git_revision, result.started_at, result.finished_at,
                 result.wall_time_s, result.status, result.error, json.dumps(result.notes, sort_keys=True)))
            run_id = int(cursor.lastrowid)
            conn.executemany(
                "INSERT INTO metrics (run_id, scope, metric, epoch, step, value, stderr)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, m.scope, m.name, m.epoch, m.step, _finite(m.value), _finite(m.stderr))
                 for m in result.metrics])
        return run_id

    # -- reading ---------------------------------------------------------------------------
    def _query(self, query: str, params: list[Any] | None = None) -> pd.DataFrame:
        try:
            return pd.read_sql_query(query, self.connection, params=params)
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, sqlite3.Error) else exc
            raise self._storage_error("read", cause) from None

    def runs(self) -> pd.DataFrame:
        return self._query("SELECT * FROM runs ORDER BY run_id")

    def metrics(self, run_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """Long form: one row per (run, scope, metric, epoch, step) with the run's identifying
        columns; epoch and step are empty (NaN) for numbers not tied to a point in training."""
        query = ("SELECT r.run_id, r.estimator, r.estimator_params, r.problem, r.problem_params, r.seed,"
                 " r.samples, r.device, r.status, m.scope, m.metric, m.epoch, m.step, m.value, m.stderr"
                 " FROM metrics m JOIN runs r USING (run_id)")
        params: list[Any] = []
        if run_ids is not None:
            ids = list(run_ids)
            query += f" WHERE r.run_id IN ({','.join('?' * len(ids))})"
            params = ids
        query += " ORDER BY r.run_id, m.scope, m.metric, m.epoch, m.step"
        frame = self._query(query, params)
        return frame.astype({"epoch": "Int64", "step": "Int64"})


def _storage_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed because of the storage (full, unwritable, damaged), not the program."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in STORAGE_ERRORS
    return any(text in str(exc) for text in ("disk is full", "disk I/O error", "readonly database", "malformed"))


def _locked(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection held the lock past the busy timeout."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "database is locked" in str(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open. SQLite has already rolled back after some
    errors (SQLITE_FULL among them); a second ROLLBACK would fail and hide the real cause."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


# =================================================================================================
# Merging stores (``python -m bench merge``). Kept in one block, apart from the code above.
# Sources are only read: each is copied (SQLite backup) into a temporary file, upgraded there when
# it is an older version, then its runs are copied into the destination in one transaction.
# =================================================================================================
import dataclasses  # noqa: E402

# Times and memory differ between machines running the same config; they are not compared.
MACHINE_DEPENDENT_SUFFIXES = ("_s", "_bytes", "seconds_per_step")  # a name ending so: not compared
METRIC_COLUMNS = ("scope", "metric", "epoch", "step", "value", "stderr")


@dataclasses.dataclass
class MergeReport:
    """What merging one source did: runs copied, already present, and one line per conflict."""

    source: Path
    copied: int = 0
    replaced: int = 0  # a failed or skipped destination run replaced by the source's finished one
    present: int = 0
    conflicts: list[str] = dataclasses.field(default_factory=list)


def check_merge_source(path: Path) -> None:
    """Refuse (StoreError, one line) a source that is not a whole results database of a version we
    read: the checks a reader makes (:meth:`Store._verify`), on the source itself, changing nothing."""
    check_path(path, create=False)
    probe = Store.__new__(Store)  # a reader's connection and checks, without a reader's upgrade
    probe.path, probe.read_only = path, True
    probe.connection = probe._connect(read_only=True)
    try:
        probe._begin_reading()
        probe._verify()
        version = probe.connection.execute("PRAGMA user_version").fetchone()[0]
    finally:
        probe.connection.close()
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer stochgrad-bench (schema {version}, "
                         f"this one reads up to {SCHEMA_VERSION}); upgrade stochgrad-bench")


@contextlib.contextmanager
def snapshot(path: Path) -> Iterator[Store]:
    """A private, current-version copy of the store at ``path`` (which is left as it is)."""
    check_merge_source(path)
    with private_folder("merge") as folder:
        copy = Path(folder) / "source.db"
        source = sqlite3.connect(_uri(path, read_only=True), uri=True, timeout=60)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        try:
            store = Store(copy, create=False)  # checks the copy, and upgrades that of an older version
        except StoreError as exc:  # about the source, which the user named
            raise StoreError(str(exc).replace(str(copy), str(path))) from None
        with store:
            yield store


def _numbers(connection: sqlite3.Connection, run_id: int) -> list[tuple]:
    rows = connection.execute(f"SELECT {', '.join(METRIC_COLUMNS)} FROM metrics WHERE run_id = ?", (run_id,))
    return sorted((row for row in rows if not row[1].endswith(MACHINE_DEPENDENT_SUFFIXES)),
                  key=lambda row: tuple((value is None, value) for value in row))


def _difference(mine: list[tuple], theirs: list[tuple]) -> str:
    """The first metric that differs, in words."""
    ours = {row[:4]: row[4:] for row in mine}
    other = {row[:4]: row[4:] for row in theirs}
    for key in sorted(set(ours) | set(other), key=lambda k: tuple((v is None, v) for v in k)):
        if ours.get(key) != other.get(key):
            scope, metric, epoch, step = key
            where = "".join(f" {name} {value}" for name, value in (("epoch", epoch), ("step", step))
                            if value is not None)
            here = "absent" if key not in ours else f"{ours[key][0]!r}"
            there = "absent" if key not in other else f"{other[key][0]!r}"
            return f"{metric} ({scope}{where}) {here} here, {there} in the source"
    return "the same metrics"


def merge_store(destination: Store, source_path: Path) -> MergeReport:
    """Copy the runs of ``source_path`` missing from ``destination``, keyed by config hash, in one
    transaction. A finished run already present is kept; if its numbers (times and memory aside)
    differ from the source's, that is reported as a conflict and the destination's run kept."""
    report = MergeReport(source_path)
    conn = destination.connection
    columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)") if row[1] != "run_id"]
    with snapshot(source_path) as source:
        src = source.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in src.execute(f"SELECT run_id, {', '.join(columns)} FROM runs ORDER BY run_id").fetchall():
                run = dict(zip(["run_id", *columns], row))
                existing = conn.execute("SELECT run_id, status FROM runs WHERE config_key = ?",
                                        (run["config_key"],)).fetchone()
                if existing is not None:
                    if existing[1] == "finished" or run["status"] != "finished":
                        report.present += 1
                        if existing[1] == run["status"] == "finished":
                            mine, theirs = _numbers(conn, existing[0]), _numbers(src, run["run_id"])
                            if mine != theirs:
                                report.conflicts.append(
                                    f"conflict: {run['estimator']} {run['estimator_params']} on {run['problem']} "
                                    f"{run['problem_params']} seed {run['seed']} (key {run['config_key'][:12]}): "
                                    f"{_difference(mine, theirs)}; kept the destination's run")
                        continue
                    conn.execute("DELETE FROM runs WHERE run_id = ?", (existing[0],))
                    report.replaced += 1
                else:
                    report.copied += 1
                cursor = conn.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                                      [run[c] for c in columns])
                conn.executemany(
                    f"INSERT INTO metrics (run_id, {', '.join(METRIC_COLUMNS)}) VALUES (?{', ?' * len(METRIC_COLUMNS)})",
                    ((cursor.lastrowid, *metric) for metric in src.execute(
                        f"SELECT {', '.join(METRIC_COLUMNS)} FROM metrics WHERE run_id = ?", (run["run_id"],))))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
    return report
