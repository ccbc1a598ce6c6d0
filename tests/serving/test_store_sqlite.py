"""What the SQLite job store adds to the contract (tests/test_store.py): several processes on one file, a file
that shrinks when jobs expire, and files written by an earlier version."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid

import pytest

from clipdlut.serving.stores.sqlite import SqliteJobStore
from clipdlut.status import JobStatus

pytestmark = pytest.mark.unit


async def test_purge_gives_the_space_back(tmp_path, clock):
    store = SqliteJobStore(tmp_path / "jobs.db", retention_s=0.5, clock=clock)
    blob = bytes(range(256)) * 4096  # 1 MiB
    for i in range(20):
        await store.create(f"old{i}", {"steps": 1}, blob, blob, owner="api")
        await store.finish(f"old{i}", {}, {"image": blob})
    size = store.path.stat().st_size
    clock.advance(0.6)
    await store.create("open", {"steps": 1}, b"", b"", owner="api")
    assert await store.purge() == 20
    store._exec("PRAGMA wal_checkpoint(TRUNCATE)")
    assert await store.get("old3") is None and await store.get("open") is not None
    assert store.path.stat().st_size < size / 4


async def test_a_file_of_an_earlier_version_opens_and_its_open_jobs_can_be_taken_over(tmp_path):
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as c:  # the first release's schema, with a job that was running
        c.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
              iteration INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, loss REAL,
              terms TEXT NOT NULL DEFAULT '{}', error TEXT, cancel INTEGER NOT NULL DEFAULT 0,
              options TEXT NOT NULL DEFAULT '{}', result TEXT, source BLOB, working BLOB, preview BLOB, api_owner TEXT);
            INSERT INTO jobs (id, status, created, updated, source, working, api_owner)
              VALUES ('old', 'running', 1, 1, x'01', x'02', 'api-gone');""")
    store = SqliteJobStore(path)
    assert await store.take_over("api-new", idle_s=15, limit=10) == [("old", 1)]
    assert await store.input("old") == (b"\x01", b"\x02")


def _client(path: str, n: int, out) -> None:
    """One client process's thread: submit, poll and update its own jobs, as the API replicas do."""

    async def run() -> None:
        store = SqliteJobStore(path)
        name = uuid.uuid4().hex
        for k in range(n):
            jid = f"{name}-{k}"
            await store.create(jid, {"steps": 2}, b"x" * 1000, b"y", owner=name)
            await store.progress(jid, 1, 2, 0.5, {"a": 1.0}, b"p")
            assert (await store.get(jid)).iteration == 1
            await (store.request_cancel(jid) if k % 3 == 0 else store.finish(jid, {"k": k}, {"cube": b"c"}))
            await store.renew(name, [jid])

    try:
        asyncio.run(run())
        out.put(None)
    except Exception as e:  # reported by the parent
        out.put(repr(e))


def _threads(path: str, out) -> None:
    threads = [threading.Thread(target=_client, args=(path, 12, out)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_fifty_concurrent_clients_across_processes(tmp_path):
    """5 processes x 10 threads on one file: no 'database is locked', no lost update."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    path = str(tmp_path / "jobs.db")
    SqliteJobStore(path)
    procs = [ctx.Process(target=_threads, args=(path, out)) for _ in range(5)]
    for p in procs:
        p.start()
    errors = [out.get(timeout=120) for _ in range(50)]
    for p in procs:
        p.join(timeout=60)
    assert errors == [None] * 50
    store = SqliteJobStore(path)
    rows = dict(store._exec("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    assert rows[JobStatus.FINISHED] == 50 * 8 and sum(rows.values()) == 50 * 12  # k = 1, 2, 4, 5, 7, 8, 10, 11 of 0..11
    assert store._exec("SELECT COUNT(*) FROM jobs WHERE cancel = 1").fetchone()[0] == 50 * 4


def test_only_errors_of_the_file_mean_the_store_is_unavailable():
    import sqlite3

    from clipdlut.serving.stores.sqlite import unavailable

    for message in ("database is locked", "disk I/O error", "unable to open database file",
                    "attempt to write a readonly database", "database or disk is full"):
        assert unavailable(sqlite3.OperationalError(message)), message
    assert not unavailable(sqlite3.OperationalError("no such column: nope"))  # (a bug: a 500 with its traceback)
    assert not unavailable(ValueError("database is locked"))
