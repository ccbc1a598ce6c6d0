import threading

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


def test_state(store):
    assert store.state("optimizer") is None
    store.set_state("optimizer", {"ready": True})
    assert store.state("optimizer") == {"ready": True}


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
