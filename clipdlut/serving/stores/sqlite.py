""":class:`~clipdlut.serving.stores.contract.JobStore` on one SQLite file: the embedded default for a single host.

WAL mode, one connection per thread, a generous busy timeout; each method is one statement or one
``BEGIN IMMEDIATE`` transaction, so several processes on the host may share the file. Calls run on a
worker thread so the API's event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from clipdlut.serving.stores.contract import HOUR_S, Admission, JobRecord, Quota, Refusal
from clipdlut.status import JobStatus

_UNAVAILABLE = ("locked", "disk", "unable to open", "i/o", "readonly")  # (how SQLite words each)


def unavailable(e: BaseException) -> bool:
    """Whether ``e`` says the file cannot be used now (locked past the busy timeout, a full, failing or read-only
    disk), not that a statement is wrong."""
    return isinstance(e, sqlite3.OperationalError) and any(word in str(e).lower() for word in _UNAVAILABLE)

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
-- each client's submissions of the last hour (its jobs-per-hour quota; a purged job still counts)
CREATE TABLE IF NOT EXISTS submissions (client TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS submissions_client ON submissions (client, at);
-- the fair queue: jobs waiting for an optimizer slot; each client's weighted service; the service's virtual time
CREATE TABLE IF NOT EXISTS waiting (job_id TEXT PRIMARY KEY, client TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shares (client TEXT PRIMARY KEY, served REAL NOT NULL DEFAULT 0,
                                   weight REAL NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS fair_clock (id INTEGER PRIMARY KEY CHECK (id = 0), vtime REAL NOT NULL);
INSERT OR IGNORE INTO fair_clock (id, vtime) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS an_ended_job_leaves_the_queue AFTER UPDATE OF status ON jobs
    WHEN NEW.status NOT IN ('queued', 'running') BEGIN DELETE FROM waiting WHERE job_id = NEW.id; END;
CREATE TRIGGER IF NOT EXISTS a_deleted_job_leaves_the_queue AFTER DELETE ON jobs
    BEGIN DELETE FROM waiting WHERE job_id = OLD.id; END;
"""
# columns added since the first release (an existing file gets them on open)
_ADDED = {"owner": "TEXT", "lease": "REAL", "takeovers": "INTEGER NOT NULL DEFAULT 0",
          "released": "INTEGER NOT NULL DEFAULT 0", "checkpoint": "BLOB", "client": "TEXT NOT NULL DEFAULT ''"}
_INDEXES = "CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client, status);"  # (on columns added since)
_RECORD = ("id, status, created, updated, iteration, total, loss, terms, error, cancel, options, result, owner, "
           "takeovers, client")
_OPEN = "status IN ('queued', 'running')"
_HOLDS = "(? IS NULL OR owner = ?)"  # a write fenced by the lease (no owner given: unfenced)
# what an ending job lets go of: its lease, and the inputs only a running job needs
_LET_GO = "owner = NULL, lease = NULL, source = NULL, working = NULL, checkpoint = NULL"


class SqliteJobStore:
    """The job store in a SQLite file (see :class:`~.contract.JobStore` for what each method promises)."""

    def __init__(self, path: str | Path, retention_s: float = 86_400.0, busy_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock  # seconds: every timestamp, lease and retention (tests pass one they can move)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self._busy_timeout = busy_timeout_s
        self._local = threading.local()
        # the ping's own thread: while the file is locked every shared worker thread may be waiting out the busy
        # timeout, and a ping queued behind them would notice the outage late
        self._pinger = ThreadPoolExecutor(1, thread_name_prefix="sqlite-ping")
        with self._conn() as c:
            c.executescript(_SCHEMA)
            have = {row[1] for row in c.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED.items():
                if column not in have:
                    c.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            c.executescript(_INDEXES)

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

    async def _run(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    def _transaction(self, fn) -> Any:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = fn(conn)
            conn.execute("COMMIT")
            return value
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def create(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes, owner: str,
                     max_open: int | None = None, client: str = "", quota: Quota = Quota()) -> Admission:
        def run(conn: sqlite3.Connection) -> Admission:
            now = self.clock()
            if (row := conn.execute("SELECT owner FROM jobs WHERE id = ?", (job_id,)).fetchone()) is not None:
                if row[0] == owner:
                    return Admission()
                raise ValueError(f"job {job_id} exists")
            if (refused := self._refusal(conn, now, max_open, client, quota)) is not None:
                return refused
            conn.execute(
                "INSERT INTO jobs (id, status, created, updated, total, options, source, working, owner, lease, "
                "client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, JobStatus.QUEUED, now, now, int(options.get("steps", 0)), json.dumps(options), source, working,
                 owner, now, client))
            conn.execute("INSERT INTO submissions (client, at) VALUES (?, ?)", (client, now))
            return Admission()

        return await self._run(self._transaction, run)

    async def admission(self, max_open: int | None = None, client: str = "", quota: Quota = Quota()) -> Admission:
        def run() -> Admission:  # (reads only: no write lock on the way in)
            refused = self._refusal(self._conn(), self.clock(), max_open, client, quota)
            return Admission() if refused is None else refused  # (a refusal is falsy: no `or` here)

        return await self._run(run)

    @staticmethod
    def _refusal(conn: sqlite3.Connection, now: float, max_open: int | None, client: str, quota: Quota
                 ) -> Admission | None:
        """The bound a new job of ``client`` would break now, if any (in the create's transaction)."""
        def count(sql: str, *params: Any) -> int:
            return conn.execute(sql, params).fetchone()[0]

        if max_open is not None and count(f"SELECT COUNT(*) FROM jobs WHERE {_OPEN}") >= max_open:
            return Admission(Refusal.SERVICE_FULL)
        if quota.max_open is not None and count(f"SELECT COUNT(*) FROM jobs WHERE client = ? AND {_OPEN}",
                                                client) >= quota.max_open:
            return Admission(Refusal.CLIENT_OPEN)
        if quota.per_hour is not None:  # (older submissions go at purge)
            times = [r[0] for r in conn.execute(
                "SELECT at FROM submissions WHERE client = ? AND at > ? ORDER BY at DESC LIMIT ?",
                (client, now - HOUR_S, quota.per_hour))]
            if len(times) >= quota.per_hour:  # (the oldest of the last per_hour leaves the window first)
                return Admission(Refusal.CLIENT_HOURLY, retry_after_s=max(0.0, times[-1] + HOUR_S - now))
        return None

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._run(lambda: self._exec(f"SELECT {_RECORD} FROM jobs WHERE id = ?", (job_id,)).fetchone())
        if row is None:
            return None
        (jid, status, created, updated, iteration, total, loss, terms, error, cancel, options, result, owner,
         takeovers, client) = row
        return JobRecord(jid, status, created, updated, iteration, total, loss, json.loads(terms), error,
                         bool(cancel), json.loads(options), json.loads(result) if result else None, owner,
                         takeovers, client)

    async def input(self, job_id: str) -> tuple[bytes, bytes] | None:
        row = await self._run(lambda: self._exec(f"SELECT source, working FROM jobs WHERE id = ? AND {_OPEN}",
                                                 (job_id,)).fetchone())
        return (row[0], row[1]) if row and row[0] is not None else None

    async def set_status(self, job_id: str, status: str, error: str | None = None, owner: str | None = None
                         ) -> bool:
        let_go = "" if status in (JobStatus.QUEUED, JobStatus.RUNNING) else ", " + _LET_GO
        cur = await self._run(self._exec, f"UPDATE jobs SET status = ?, error = COALESCE(?, error), updated = ?"
                              f"{let_go} WHERE id = ? AND {_OPEN} AND {_HOLDS}",
                              (status, error, self.clock(), job_id, owner, owner))
        return cur.rowcount > 0

    async def progress(self, job_id: str, iteration: int, total: int, loss: float, terms: dict[str, float],
                       preview: bytes | None = None, checkpoint: bytes | None = None, owner: str | None = None
                       ) -> bool:
        cur = await self._run(self._exec,
                              "UPDATE jobs SET iteration = ?, total = ?, loss = ?, terms = ?, "
                              "preview = COALESCE(?, preview), checkpoint = COALESCE(?, checkpoint), "
                              f"status = 'running', updated = ? WHERE id = ? AND {_OPEN} AND {_HOLDS}",
                              (iteration, total, loss, json.dumps(terms), preview, checkpoint, self.clock(), job_id,
                               owner, owner))
        return cur.rowcount > 0

    async def preview(self, job_id: str) -> bytes | None:
        row = await self._run(lambda: self._exec("SELECT preview FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return row[0] if row else None

    async def checkpoint(self, job_id: str) -> bytes | None:
        row = await self._run(lambda: self._exec(f"SELECT checkpoint FROM jobs WHERE id = ? AND {_OPEN}",
                                                 (job_id,)).fetchone())
        return row[0] if row else None

    async def request_cancel(self, job_id: str) -> bool:
        cur = await self._run(self._exec, f"UPDATE jobs SET cancel = 1, updated = ? WHERE id = ? AND {_OPEN}",
                              (self.clock(), job_id))
        return cur.rowcount > 0

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        rows = await self._run(lambda: self._exec(f"SELECT id FROM jobs WHERE cancel = 1 AND id IN ({marks})",
                                                  tuple(job_ids)).fetchall())
        return {r[0] for r in rows}

    async def finish(self, job_id: str, result: dict[str, Any], files: dict[str, bytes], owner: str | None = None
                     ) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(f"UPDATE jobs SET status = ?, result = ?, updated = ?, {_LET_GO} "
                               f"WHERE id = ? AND {_OPEN} AND {_HOLDS}",
                               (JobStatus.FINISHED, json.dumps(result), self.clock(), job_id, owner, owner))
            if cur.rowcount == 0:
                return False
            conn.executemany("INSERT OR REPLACE INTO files (job_id, name, data) VALUES (?, ?, ?)",
                             [(job_id, name, data) for name, data in files.items()])
            return True

        return await self._run(self._transaction, run)

    async def file(self, job_id: str, name: str) -> bytes | None:
        row = await self._run(lambda: self._exec("SELECT data FROM files WHERE job_id = ? AND name = ?",
                                                 (job_id, name)).fetchone())
        return row[0] if row else None

    async def open_jobs(self) -> int:
        return await self._run(lambda: self._exec(f"SELECT COUNT(*) FROM jobs WHERE {_OPEN}").fetchone()[0])

    async def renew(self, owner: str, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        rows = await self._run(lambda: self._exec(
            f"UPDATE jobs SET lease = ? WHERE owner = ? AND {_OPEN} AND id IN ({marks}) RETURNING id",
            (self.clock(), owner, *job_ids)).fetchall())
        return {r[0] for r in rows}

    async def release(self, owner: str) -> int:
        cur = await self._run(self._exec, f"UPDATE jobs SET lease = 0, released = 1 WHERE owner = ? AND {_OPEN}",
                              (owner,))
        return cur.rowcount

    async def take_over(self, owner: str, idle_s: float, limit: int) -> list[tuple[str, int]]:
        now = self.clock()
        rows = await self._run(lambda: self._exec(
            "UPDATE jobs SET owner = ?, lease = ?, takeovers = takeovers + 1 - released, released = 0 WHERE id IN "
            f"(SELECT id FROM jobs WHERE {_OPEN} AND COALESCE(lease, 0) < ? ORDER BY created LIMIT ?) "
            "RETURNING id, takeovers", (owner, now, now - idle_s, limit)).fetchall())
        return [(r[0], r[1]) for r in rows]

    async def queue(self, job_id: str, client: str, weight: float = 1.0) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM waiting WHERE job_id = ?", (job_id,)).fetchone():
                return
            conn.execute("INSERT INTO shares (client, weight) VALUES (?, ?) ON CONFLICT (client) DO UPDATE SET "
                         "weight = excluded.weight", (client, weight))
            if not conn.execute("SELECT 1 FROM waiting WHERE client = ?", (client,)).fetchone():
                conn.execute("UPDATE shares SET served = MAX(served, (SELECT vtime FROM fair_clock)) WHERE client = ?",
                             (client,))
            conn.execute(f"INSERT INTO waiting (job_id, client) SELECT ?, ? WHERE EXISTS "
                         f"(SELECT 1 FROM jobs WHERE id = ? AND {_OPEN})", (job_id, client, job_id))

        await self._run(self._transaction, run)

    async def head(self) -> str | None:
        row = await self._run(lambda: self._exec(
            "SELECT w.job_id FROM waiting w JOIN shares s ON s.client = w.client JOIN jobs j ON j.id = w.job_id "
            "ORDER BY s.served, j.created, w.rowid LIMIT 1").fetchone())  # (first come: submitted first)
        return row[0] if row else None

    async def charge(self, client: str, passes: float, started: str | None = None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if started is not None:
                conn.execute("DELETE FROM waiting WHERE job_id = ?", (started,))
                conn.execute("UPDATE fair_clock SET vtime = MAX(vtime, COALESCE((SELECT served FROM shares WHERE "
                             "client = ?), 0))", (client,))
            conn.execute("INSERT INTO shares (client) VALUES (?) ON CONFLICT (client) DO NOTHING", (client,))
            conn.execute("UPDATE shares SET served = served + ? / weight WHERE client = ?", (passes, client))

        await self._run(self._transaction, run)

    async def purge(self) -> int:
        """Also gives the freed pages back to the file system."""

        def run(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM jobs WHERE status IN ('finished', 'cancelled', 'failed') AND updated < ?",
                (self.clock() - self.retention_s,))]
            conn.executemany("DELETE FROM files WHERE job_id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            conn.execute("DELETE FROM submissions WHERE at <= ?", (self.clock() - HOUR_S,))
            return len(ids)

        def purge() -> int:
            n = self._transaction(run)
            self._conn().executescript("PRAGMA incremental_vacuum;")  # to the end: execute() frees one page a step
            return n

        return await self._run(purge)

    async def ping(self, busy_timeout_s: float = 1.0) -> None:
        """Take the file's write lock and let it go at once, on a connection of its own with a short busy timeout: a
        file another process holds locked fails in a second (a read would pass: WAL readers never wait)."""
        def run() -> None:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, timeout=busy_timeout_s,
                                   isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        await asyncio.get_running_loop().run_in_executor(self._pinger, run)

    async def close(self) -> None:
        """(Connections are per thread and close with their thread.)"""
        self._pinger.shutdown(wait=False)
