"""The job store: state, progress, previews, cancel flags and results of every job.

Owned by the API service (the optimizer keeps no state): every API process and worker reads and writes
it, so it must be safe across processes. :class:`JobStore` is the interface the service uses;
:class:`SqliteJobStore` implements it on one SQLite file in WAL mode (no server needed). A networked
store only needs to implement the interface.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

QUEUED, RUNNING, FINISHED, CANCELLED, FAILED = "queued", "running", "finished", "cancelled", "failed"
TERMINAL = frozenset({FINISHED, CANCELLED, FAILED})


@dataclass
class JobRecord:
    """One job as the API reports it (previews, inputs and result files are fetched separately)."""

    job_id: str
    status: str
    created: float
    updated: float
    iteration: int = 0
    total: int = 0
    loss: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class JobStore(Protocol):
    """What the services need from a job store."""

    def create(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes,
               owner: str | None = None, max_open: int | None = None) -> bool: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def input(self, job_id: str) -> tuple[bytes, bytes] | None: ...
    def set_status(self, job_id: str, status: str, error: str | None = None) -> None: ...
    def progress(self, job_id: str, iteration: int, total: int, loss: float, terms: dict[str, float],
                 preview: bytes | None = None) -> None: ...
    def preview(self, job_id: str) -> bytes | None: ...
    def request_cancel(self, job_id: str) -> bool: ...
    def cancel_requested(self, job_ids: list[str]) -> set[str]: ...
    def finish(self, job_id: str, result: dict[str, Any], files: dict[str, bytes]) -> None: ...
    def file(self, job_id: str, name: str) -> bytes | None: ...
    def count(self, statuses: tuple[str, ...]) -> int: ...
    def beat(self, instance: str, role: str, pid: int) -> None: ...
    def retire(self, instance: str) -> None: ...
    def workers(self, role: str | None = None, fresh_within_s: float | None = None) -> list[dict[str, Any]]: ...
    def fail_orphans(self, stale_after_s: float) -> list[str]: ...
    def purge(self, ended_before: float) -> int: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    iteration INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    terms TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    cancel INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    source BLOB,
    working BLOB,
    preview BLOB,
    api_owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS files (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS workers (instance TEXT PRIMARY KEY, role TEXT NOT NULL, pid INTEGER NOT NULL,
                                    started REAL NOT NULL, beat REAL NOT NULL);
"""
OWNER_COLUMNS = {"api": "api_owner"}  # role -> the column naming the instance that holds a job
_RECORD_COLUMNS = "id, status, created, updated, iteration, total, loss, terms, error, cancel, options, result"


class SqliteJobStore:
    """:class:`JobStore` on a SQLite file; one connection per thread, WAL, generous busy timeout."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout_s
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_SCHEMA)
            have = {row[1] for row in c.execute("PRAGMA table_info(jobs)")}
            for column in OWNER_COLUMNS.values():  # files made by an earlier version
                if column not in have:
                    c.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file: purges shrink it
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _exec(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, params)

    def create(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes,
               owner: str | None = None, max_open: int | None = None) -> bool:
        """Add a queued job owned by API instance ``owner``; False (nothing added) when ``max_open``
        jobs are already queued or running. The check and the insert are one statement: no overshoot."""
        now = time.time()
        limit = -1 if max_open is None else max_open
        cur = self._exec(
            "INSERT INTO jobs (id, status, created, updated, total, options, source, working, api_owner) "
            "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE ? < 0 OR "
            "(SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')) < ?",
            (job_id, QUEUED, now, now, int(options.get("steps", 0)), json.dumps(options), source, working, owner,
             limit, limit))
        return cur.rowcount == 1

    def get(self, job_id: str) -> JobRecord | None:
        row = self._exec(f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        (jid, status, created, updated, iteration, total, loss, terms, error, cancel, options, result) = row
        return JobRecord(jid, status, created, updated, iteration, total, loss, json.loads(terms), error,
                         bool(cancel), json.loads(options), json.loads(result) if result else None)

    def input(self, job_id: str) -> tuple[bytes, bytes] | None:
        row = self._exec("SELECT source, working FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return (row[0], row[1]) if row and row[0] is not None else None

    def set_status(self, job_id: str, status: str, error: str | None = None) -> None:
        # Terminal states are final: a late writer never turns a stopped job back into a running one.
        self._exec("UPDATE jobs SET status = ?, error = COALESCE(?, error), updated = ? "
                   "WHERE id = ? AND status NOT IN ('finished', 'cancelled', 'failed')",
                   (status, error, time.time(), job_id))

    def progress(self, job_id: str, iteration: int, total: int, loss: float, terms: dict[str, float],
                 preview: bytes | None = None) -> None:
        self._exec("UPDATE jobs SET iteration = ?, total = ?, loss = ?, terms = ?, preview = COALESCE(?, preview), "
                   "status = CASE WHEN status = 'queued' THEN 'running' ELSE status END, updated = ? WHERE id = ?",
                   (iteration, total, loss, json.dumps(terms), preview, time.time(), job_id))

    def preview(self, job_id: str) -> bytes | None:
        row = self._exec("SELECT preview FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def request_cancel(self, job_id: str) -> bool:
        """Flag a job for cancellation; False if it has already ended."""
        cur = self._exec("UPDATE jobs SET cancel = 1, updated = ? WHERE id = ? AND status IN ('queued', 'running')",
                         (time.time(), job_id))
        return cur.rowcount > 0

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        rows = self._exec(f"SELECT id FROM jobs WHERE cancel = 1 AND id IN ({marks})", tuple(job_ids))
        return {r[0] for r in rows}

    def finish(self, job_id: str, result: dict[str, Any], files: dict[str, bytes]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO files (job_id, name, data) VALUES (?, ?, ?)",
                             [(job_id, name, data) for name, data in files.items()])
            conn.execute("UPDATE jobs SET status = 'finished', result = ?, updated = ? WHERE id = ?",
                         (json.dumps(result), time.time(), job_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def file(self, job_id: str, name: str) -> bytes | None:
        row = self._exec("SELECT data FROM files WHERE job_id = ? AND name = ?", (job_id, name)).fetchone()
        return row[0] if row else None

    def count(self, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        return self._exec(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses).fetchone()[0]

    def beat(self, instance: str, role: str, pid: int) -> None:
        now = time.time()
        self._exec("INSERT INTO workers (instance, role, pid, started, beat) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (instance) DO UPDATE SET beat = excluded.beat", (instance, role, pid, now, now))

    def retire(self, instance: str) -> None:
        self._exec("DELETE FROM workers WHERE instance = ?", (instance,))

    def workers(self, role: str | None = None, fresh_within_s: float | None = None) -> list[dict[str, Any]]:
        """Live (or all) worker instances: their role, pid, start and last heartbeat."""
        since = time.time() - fresh_within_s if fresh_within_s is not None else 0.0
        rows = self._exec("SELECT instance, role, pid, started, beat FROM workers WHERE beat >= ? "
                          "AND (? IS NULL OR role = ?) ORDER BY started", (since, role, role)).fetchall()
        return [dict(zip(("instance", "role", "pid", "started", "beat"), r)) for r in rows]

    def fail_orphans(self, stale_after_s: float) -> list[str]:
        """Fail open jobs whose API instance stopped beating; returns their ids."""
        since = time.time() - stale_after_s
        failed = []
        for role, column in OWNER_COLUMNS.items():
            rows = self._exec(
                f"UPDATE jobs SET status = 'failed', updated = ?, error = ? "
                f"WHERE status IN ('queued', 'running') AND {column} IS NOT NULL "
                f"AND {column} NOT IN (SELECT instance FROM workers WHERE beat >= ?) RETURNING id",
                (time.time(), f"interrupted: the {role} process that held this job stopped (a crash or a restart); "
                              "submit it again", since)).fetchall()
            failed += [r[0] for r in rows]
        return failed

    def purge(self, ended_before: float) -> int:
        """Delete jobs that ended before ``ended_before`` with their files, and long-gone workers;
        gives the pages back to the file system. Returns the number of jobs deleted."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM jobs WHERE status IN ('finished', 'cancelled', 'failed') AND updated < ?",
                (ended_before,))]
            conn.executemany("DELETE FROM files WHERE job_id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            conn.execute("DELETE FROM workers WHERE beat < ?", (ended_before,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.executescript("PRAGMA incremental_vacuum;")  # run to the end: execute() frees one page a step
        return len(ids)
