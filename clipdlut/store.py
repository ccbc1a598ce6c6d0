"""The job store: state, progress, previews, cancel flags and results of every job.

Written by the optimizer service, read by the API service, so it must be safe across processes.
:class:`JobStore` is the interface the services use; :class:`SqliteJobStore` implements it on one
SQLite file in WAL mode (no server needed). A networked store only needs to implement the interface.
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

    def create(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes) -> None: ...
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
    def put_file(self, job_id: str, name: str, data: bytes) -> None: ...
    def set_state(self, key: str, value: dict[str, Any]) -> None: ...
    def state(self, key: str) -> dict[str, Any] | None: ...
    def count(self, statuses: tuple[str, ...]) -> int: ...


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
    preview BLOB
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS files (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
"""
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

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _exec(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, params)

    def create(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes) -> None:
        now = time.time()
        self._exec(
            "INSERT INTO jobs (id, status, created, updated, total, options, source, working) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, QUEUED, now, now, int(options.get("steps", 0)), json.dumps(options), source, working))

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

    def put_file(self, job_id: str, name: str, data: bytes) -> None:
        self._exec("INSERT OR REPLACE INTO files (job_id, name, data) VALUES (?, ?, ?)", (job_id, name, data))

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        self._exec("INSERT OR REPLACE INTO state (key, value, updated) VALUES (?, ?, ?)",
                   (key, json.dumps(value), time.time()))

    def state(self, key: str) -> dict[str, Any] | None:
        row = self._exec("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def count(self, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        return self._exec(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses).fetchone()[0]
