import os
import time

import pytest

from clipdlut.lifecycle import Watchdog
from clipdlut.store import FAILED, FINISHED, QUEUED, SqliteJobStore

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    return SqliteJobStore(tmp_path / "jobs.db")


def test_watchdog_beats_and_fails_jobs_of_a_stopped_process_within_the_bound(store):
    dead = Watchdog(store, "api", stale_after_s=0.5, interval_s=60)
    store.create("lost", {"steps": 1}, b"", b"", owner=dead.instance)
    alive = Watchdog(store, "api", stale_after_s=0.5, interval_s=0.05)
    store.create("kept", {"steps": 1}, b"", b"", owner=alive.instance)
    assert {w["pid"] for w in store.workers(fresh_within_s=5)} == {os.getpid()}
    dead._stop.set()  # stops beating, as a killed process would (no retire)
    t0 = time.monotonic()
    while store.get("lost").status != FAILED:
        assert time.monotonic() - t0 < 3, "the orphan was not failed in time"
        time.sleep(0.02)
    assert "interrupted" in store.get("lost").error and "api process" in store.get("lost").error
    assert store.get("kept").status == QUEUED  # its process is alive
    alive.stop()
    assert alive.instance not in {w["instance"] for w in store.workers()}


def test_watchdog_purges_after_the_retention(store):
    w = Watchdog(store, "api", retention_s=0.2, interval_s=60, purge_every_s=0)
    store.create("old", {"steps": 1}, b"x", b"y", owner=w.instance)
    store.finish("old", {}, {"cube": b"c"})
    w.tick()
    assert store.get("old").status == FINISHED  # not yet expired
    time.sleep(0.3)
    w.tick()
    assert store.get("old") is None and store.file("old", "cube") is None
    w.stop()
