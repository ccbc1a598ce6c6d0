import threading
import time

import pytest

from clipdlut.engine import Engine, EngineFull, Report
from clipdlut.imaging import working_copy
from clipdlut.optimizer import JobResult, JobSpec
from clipdlut.status import JobStatus
from tests.conftest import gradient_image

pytestmark = pytest.mark.unit


def spec(job_id: str, steps: int) -> JobSpec:
    return JobSpec(job_id, working_copy(gradient_image()), "暖色", steps=steps, lut_size=9, views=1,
                   progress_every=1)


class Heard:
    """A job's listener: what it heard, and an event set at the job's end."""

    def __init__(self) -> None:
        self.items: list[Report | JobResult] = []
        self.ended = threading.Event()

    def __call__(self, item: Report | JobResult) -> None:
        self.items.append(item)
        if isinstance(item, JobResult):
            self.ended.set()

    def result(self, timeout: float = 60) -> JobResult:
        assert self.ended.wait(timeout), "the job did not end"
        return self.items[-1]

    def reports(self) -> list[Report]:
        return [i for i in self.items if isinstance(i, Report)]


def running(engine: Engine, job_id: str) -> Heard:
    """A job that would run for ages, once it has taken its first step."""
    heard = Heard()
    engine.submit(spec(job_id, 100_000), heard)
    while not heard.reports():
        time.sleep(0.01)
    return heard


def test_jobs_report_progress_and_end_and_a_full_batch_refuses(guide):
    engine = Engine(guide, capacity=2)
    a, b = Heard(), Heard()
    engine.submit(spec("a", 4), a, checkpoint_s=0)
    engine.submit(spec("b", 3), b)
    with pytest.raises(EngineFull, match="full"):
        engine.submit(spec("c", 3), Heard())
    assert a.result().status == JobStatus.FINISHED and b.result().status == JobStatus.FINISHED
    assert [r.progress.iteration for r in a.reports()] == [1, 2, 3, 4]
    # checkpoint_s=0: a state with every report but the last (a finished job's state is its result)
    assert [r.state is not None for r in a.reports()] == [True, True, True, False]
    assert all(r.preview_png is None for r in a.reports())
    assert all(r.state is None for r in b.reports())  # no checkpoints asked for
    assert engine.running == 0
    engine.submit(spec("c", 2), c := Heard())  # room again
    assert c.result().status == JobStatus.FINISHED
    engine.stop()


def test_cancel_leaves_the_batch_within_a_step_and_timeout_fails_with_a_reason(guide, caplog):
    engine = Engine(guide, job_timeout_s=0.5)
    slow, stop = running(engine, "slow"), running(engine, "stop")
    with caplog.at_level("INFO", logger="clipdlut.engine"):
        engine.cancel("stop")
        assert stop.result(timeout=10).status == JobStatus.CANCELLED
    (line,) = [r.getMessage() for r in caplog.records if "left the batch" in r.getMessage()]
    assert int(line.split(", ")[1].split(" ")[0]) <= 1  # "... N step(s) after it was cancelled"
    r = slow.result(timeout=30)
    assert r.status == JobStatus.FAILED and "timed out" in r.error
    engine.stop()


def test_a_job_sent_again_ends_its_earlier_copy_and_waits_until_it_has_left(guide):
    engine = Engine(guide)
    earlier = running(engine, "j")
    with pytest.raises(EngineFull, match="still leaving"):
        engine.submit(spec("j", 3), Heard())
    assert earlier.result(timeout=10).status == JobStatus.CANCELLED
    again = Heard()
    engine.submit(spec("j", 3), again)  # (the API sends it again after a backoff)
    assert again.result().status == JobStatus.FINISHED
    engine.stop()


def test_stop_fails_the_jobs_it_holds(guide):
    engine = Engine(guide)
    held = running(engine, "held")
    engine.stop()
    assert held.result(timeout=5).status == JobStatus.FAILED
    with pytest.raises(EngineFull, match="shutting down"):
        engine.submit(spec("late", 1), Heard())
