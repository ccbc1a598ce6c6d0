import threading
import uuid

import pytest

from clipdlut.store import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SqliteJobStore

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    return SqliteJobStore(tmp_path / "jobs.db")


def test_lifecycle(store):
    store.create("j1", {"steps": 10, "target_prompt": "x"}, b"src", b"work")
    r = store.get("j1")
    assert r.status == QUEUED and r.total == 10 and r.options["target_prompt"] == "x" and not r.done
    assert store.input("j1") == (b"src", b"work")
    store.progress("j1", 5, 10, 0.5, {"directional": 0.4}, b"png")
    r = store.get("j1")
    assert (r.status, r.iteration, r.loss, r.terms) == (RUNNING, 5, 0.5, {"directional": 0.4})
    assert store.preview("j1") == b"png"
    store.progress("j1", 6, 10, 0.4, {}, None)
    assert store.preview("j1") == b"png"  # a report without a preview keeps the last one
    store.finish("j1", {"model": "tiny"}, {"cube": b"TITLE", "image": b"img"})
    r = store.get("j1")
    assert r.status == FINISHED and r.result == {"model": "tiny"} and r.done
    assert store.file("j1", "cube") == b"TITLE" and store.file("j1", "nope") is None
    assert store.get("missing") is None and store.input("missing") is None


def test_cancel_flags_and_terminal_states_are_final(store):
    store.create("a", {"steps": 1}, b"", b"")
    store.create("b", {"steps": 1}, b"", b"")
    assert store.request_cancel("a")
    assert store.cancel_requested(["a", "b", "zzz"]) == {"a"}
    store.set_status("a", CANCELLED)
    store.set_status("a", RUNNING)  # a late writer cannot revive it
    assert store.get("a").status == CANCELLED
    assert not store.request_cancel("a")
    store.set_status("b", FAILED, "boom")
    assert store.get("b").error == "boom" and store.count((FAILED, CANCELLED)) == 2


def test_concurrent_writers_across_connections(tmp_path):
    """Threads with their own connections (as separate processes have) lose no update."""
    path = tmp_path / "jobs.db"
    stores = [SqliteJobStore(path) for _ in range(8)]
    errors = []

    def work(i, s):
        try:
            for k in range(25):
                jid = f"{i}-{k}"
                s.create(jid, {"steps": 3}, b"x", b"y")
                s.progress(jid, 1, 3, 0.1, {})
                s.finish(jid, {"k": k}, {"cube": b"c"})
        except Exception as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert stores[0].count((FINISHED,)) == 200


def test_open_job_limit_is_atomic(store):
    assert store.create("a", {"steps": 1}, b"", b"", max_open=2)
    assert store.create("b", {"steps": 1}, b"", b"", max_open=2)
    assert not store.create("c", {"steps": 1}, b"", b"", max_open=2)
    assert store.get("c") is None
    store.set_status("a", FINISHED)
    assert store.create("c", {"steps": 1}, b"", b"", max_open=2)


def test_orphans_of_stopped_instances_fail_with_a_reason(store):
    store.beat("api-live", "api", 1)
    store.beat("api-other", "api", 2)
    store.create("mine", {"steps": 1}, b"", b"", owner="api-live")
    store.create("lost-api", {"steps": 1}, b"", b"", owner="api-gone")
    store.create("done", {"steps": 1}, b"", b"", owner="api-gone")
    store.set_status("done", FINISHED)
    assert store.fail_orphans(stale_after_s=60) == ["lost-api"]
    assert store.get("mine").status == QUEUED and store.get("done").status == FINISHED
    assert "interrupted" in store.get("lost-api").error and "api process" in store.get("lost-api").error
    store.retire("api-live")
    assert store.fail_orphans(stale_after_s=60) == ["mine"]
    assert [w["instance"] for w in store.workers()] == ["api-other"]


def test_purge_deletes_expired_jobs_and_gives_the_space_back(store):
    blob = bytes(range(256)) * 4096  # 1 MiB
    for i in range(20):
        store.create(f"old{i}", {"steps": 1}, blob, blob)
        store.finish(f"old{i}", {}, {"image": blob})
    store.create("open", {"steps": 1}, b"", b"")
    store.create("recent", {"steps": 1}, b"", b"")
    store.set_status("recent", FAILED, "x")
    size = store.path.stat().st_size
    store._exec("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.purge(ended_before=store.get("recent").updated - 0.001) == 20
    store._exec("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.get("old3") is None and store.file("old3", "image") is None
    assert store.get("open") is not None and store.get("recent") is not None
    assert store.path.stat().st_size < size / 4


def _client(path: str, n: int, out) -> None:
    """One client process: submit, poll and update its own jobs, as the services do."""
    try:
        store = SqliteJobStore(path)
        name = uuid.uuid4().hex
        for k in range(n):
            jid = f"{name}-{k}"
            store.create(jid, {"steps": 2}, b"x" * 1000, b"y")
            store.progress(jid, 1, 2, 0.5, {"a": 1.0}, b"p")
            assert store.get(jid).iteration == 1
            store.request_cancel(jid) if k % 3 == 0 else store.finish(jid, {"k": k}, {"cube": b"c"})
            store.count((QUEUED, RUNNING))
        out.put(None)
    except Exception as e:  # reported by the parent
        out.put(repr(e))


def test_fifty_concurrent_clients_across_processes(tmp_path):
    """5 processes x 10 threads: no 'database is locked', no lost update."""
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
    assert store.count((FINISHED,)) + store.count((QUEUED, RUNNING)) == 50 * 12
    assert store.count((FINISHED,)) == 50 * 8  # k = 1, 2, 4, 5, 7, 8, 10, 11 of 0..11
    assert len(store.cancel_requested([r[0] for r in store._exec("SELECT id FROM jobs")])) == 50 * 4


def _threads(path: str, out) -> None:
    threads = [threading.Thread(target=_client, args=(path, 12, out)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
