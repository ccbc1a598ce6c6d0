import time

import pytest

from clipdlut.engine import Engine
from clipdlut.imaging import working_copy
from clipdlut.optimizer import CANCELLED, FAILED, FINISHED, JobSpec
from clipdlut.store import SqliteJobStore
from tests.conftest import gradient_image

pytestmark = pytest.mark.unit


def spec(job_id: str, steps: int) -> JobSpec:
    return JobSpec(job_id, working_copy(gradient_image()), "暖色", steps=steps, lut_size=9, views=1,
                   progress_every=1)


@pytest.fixture
def store(tmp_path):
    s = SqliteJobStore(tmp_path / "jobs.db")
    for job_id in ("a", "b", "slow", "stop"):
        s.create(job_id, {"steps": 1}, b"", b"")
    return s


def test_jobs_end_recorded_and_submission_is_idempotent(guide, store):
    ended = []
    engine = Engine(guide, store, on_end=ended.append)
    first = engine.submit([spec("a", 4)])
    again = engine.submit([spec("a", 4), spec("b", 3)])
    assert again[0] is first[0]  # the same job, not a second copy
    assert first[0].result(timeout=60).status == FINISHED and again[1].result(timeout=60).status == FINISHED
    assert sorted(r.job_id for r in ended) == ["a", "b"]
    engine.stop()


def test_timeout_fails_the_job_with_a_reason_and_cancel_stops_another(guide, store):
    engine = Engine(guide, store, job_timeout_s=0.5)
    slow, stop = engine.submit([spec("slow", 100_000), spec("stop", 100_000)])
    while store.get("stop").iteration == 0:
        time.sleep(0.01)
    store.request_cancel("stop")
    assert stop.result(timeout=10).status == CANCELLED
    r = slow.result(timeout=30)
    assert r.status == FAILED and "timed out" in r.error
    assert store.get("slow").status == FAILED and "timed out" in store.get("slow").error
    engine.stop()
