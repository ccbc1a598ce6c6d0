"""The API's side of a job against the real optimizer stream in-process, with the faults a network brings:
streams that break mid-job, a full batch, a user's cancel, an API replica that stops and one that takes over."""

from __future__ import annotations

import asyncio
import logging
import uuid
from http import HTTPStatus

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import BadInput, BentoMLException, InternalServerError, ServiceUnavailable

from clipdlut.cube import read_cube
from clipdlut.engine import Engine, EngineFull
from clipdlut.serving.bundle import pack
from clipdlut.serving.driven import Ending
from clipdlut.serving.driver import Resilience, _busy, drive
from clipdlut.serving.drivers import Drivers, HandedOver
from clipdlut.serving.errors import JobEnded
from clipdlut.serving.jobs import JobOptions, Upload, accept, photo_file
from clipdlut.serving.jobstream import stream_job
from clipdlut.serving.settings import Settings
from clipdlut.serving.stores.sqlite import SqliteJobStore
from clipdlut.serving.validation import decode_upload
from clipdlut.serving.wire import Failed, encode_event
from clipdlut.status import JobStatus
from tests.conftest import gradient_image, png_bytes, until
from tests.test_optimizer import BATCH_TOLERANCE

pytestmark = pytest.mark.unit
SETTINGS = Settings(views=1, progress_every=2, working_size=64)
FAST = Resilience(attempts=3, max_wait_s=30, stall_s=10, checkpoint_s=0, backoff_s=0.01, max_backoff_s=0.05)
PHOTO = png_bytes(gradient_image(80, 60))


@pytest.fixture
def engine(guide):
    e = Engine(guide, capacity=1)
    yield e
    e.stop()


@pytest.fixture
def store(tmp_path):
    return SqliteJobStore(tmp_path / "jobs.db")


async def new_job(store, steps=12, prompt="暖色", owner="api-a") -> tuple[str, object, JobOptions]:
    job_id = uuid.uuid4().hex
    decoded = decode_upload(PHOTO, SETTINGS)
    opts = JobOptions(target_prompt=prompt, steps=steps, lut_size=17, seed=5)
    await accept(store, job_id, Upload([(PHOTO, decoded)]), opts, SETTINGS, owner=owner)
    return job_id, [PHOTO], opts


class Optimizer:
    """The optimizer's ``optimize`` in-process, with faults on demand: the first ``breaks`` calls lose their
    stream after ``after`` events (the replica closes the job, as on a disconnect, and the caller sees a reset)."""

    def __init__(self, engine: Engine, breaks: int = 0, after: int = 3, replica_fails: bool = False):
        self.engine, self.breaks, self.after, self.replica_fails = engine, breaks, after, replica_fails
        self.tries = 0
        self.calls: list[int | None] = []  # the iteration each call the optimizer took resumed from

    async def optimize(self, request):
        self.tries += 1
        events = stream_job(self.engine, request, "tiny")
        broken = False
        try:
            n = 0
            async for line in events:
                n += 1
                if n == 1:
                    self.calls.append(request.resume.iteration if request.resume else None)
                    broken = len(self.calls) <= self.breaks
                if broken and n > self.after and self.replica_fails:  # e.g. CUDA out of memory in a big batch
                    yield encode_event(Failed(iteration=0, error="optimizer error: out of memory", retryable=True))
                    return
                if broken and n > self.after:
                    raise ConnectionResetError("connection reset by peer")
                yield line
        finally:
            await events.aclose()


async def run(store, job, optimizer, stop=None, policy=FAST):
    job_id, photos, opts = job
    return await drive(store, job_id, photos, opts, optimizer.optimize, SETTINGS, stop or asyncio.Event(), policy)


async def cube_table(store, job_id):
    return read_cube(await store.file(job_id, "cube")).table


async def test_a_job_runs_to_a_stored_result(engine, store):
    job = await new_job(store)
    outcome = await run(store, job, Optimizer(engine))
    record = await store.get(job[0])
    assert record.status == JobStatus.FINISHED and record.iteration == 12 and outcome.result["model"] == "tiny"
    assert (outcome.ending, outcome.status, outcome.result) == (Ending.ENDED, JobStatus.FINISHED, record.result)
    assert (await store.preview(job[0]))[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_cube(await store.file(job[0], "cube")).size == 17


async def test_a_broken_stream_resumes_where_its_state_was_and_ends_the_same(engine, store):
    clean = await new_job(store)
    await run(store, clean, Optimizer(engine))
    broken = await new_job(store)
    optimizer = Optimizer(engine, breaks=2, after=3)  # accepted + 2 progress events, then the connection drops
    await run(store, broken, optimizer)
    assert optimizer.calls == [None, 4, 8]  # each new call resumed from the last state the events carried
    record = await store.get(broken[0])
    assert record.status == JobStatus.FINISHED and record.iteration == 12
    assert np.abs(await cube_table(store, broken[0]) - await cube_table(store, clean[0])).max() < BATCH_TOLERANCE


async def test_a_break_after_the_last_step_resumes_from_the_last_state_before_it(engine, store):
    job = await new_job(store)
    optimizer = Optimizer(engine, breaks=1, after=7)  # accepted, 6 reports (the last at step 12), then the break
    await run(store, job, optimizer)
    assert optimizer.calls == [None, 10] and (await store.get(job[0])).status == JobStatus.FINISHED


async def test_a_job_a_replica_failed_for_its_own_reasons_is_sent_again(engine, store):
    job = await new_job(store)
    optimizer = Optimizer(engine, breaks=1, after=3, replica_fails=True)
    await run(store, job, optimizer)
    assert optimizer.calls == [None, 4] and (await store.get(job[0])).status == JobStatus.FINISHED


async def test_without_states_a_lost_job_starts_over_with_its_seed(engine, store):
    clean = await new_job(store)
    await run(store, clean, Optimizer(engine))
    again = await new_job(store)
    optimizer = Optimizer(engine, breaks=1, after=3)
    await run(store, again, optimizer, policy=Resilience(**{**FAST.__dict__, "checkpoint_s": None}))
    assert optimizer.calls == [None, None]
    assert np.abs(await cube_table(store, again[0]) - await cube_table(store, clean[0])).max() < BATCH_TOLERANCE


async def test_attempts_are_bounded_and_the_reason_says_so(engine, store):
    job = await new_job(store)
    outcome = await run(store, job, Optimizer(engine, breaks=10, after=2))
    record = await store.get(job[0])
    assert (outcome.ending, outcome.status, outcome.reason) == (Ending.ENDED, JobStatus.FAILED, record.error)
    assert record.status == JobStatus.FAILED and "lost 3 times" in record.error
    assert "ConnectionResetError" in record.error
    await until(lambda: engine.running == 0, timeout=5)  # nothing left running on the replica


async def test_a_job_waits_for_room_in_a_full_batch(engine, store):
    first, second = await new_job(store, steps=60), await new_job(store, steps=6)
    optimizer = Optimizer(engine)
    seen = []

    async def watch():
        while (await store.get(second[0])).status == JobStatus.QUEUED:
            seen.append(optimizer.tries)
            await asyncio.sleep(0.005)

    running = asyncio.create_task(drive(store, *first, optimizer.optimize, SETTINGS, asyncio.Event(), FAST))
    await until(lambda: store.get(first[0]), lambda r: r.status == JobStatus.RUNNING)
    await asyncio.gather(running, drive(store, *second, optimizer.optimize, SETTINGS, asyncio.Event(), FAST), watch())
    assert max(seen) >= 3  # the second job was refused (capacity 1) and sent again, queued meanwhile, not failed
    assert optimizer.calls == [None, None] and optimizer.tries > 2
    assert (await store.get(first[0])).status == (await store.get(second[0])).status == JobStatus.FINISHED


@pytest.mark.parametrize("error,busy", [
    (EngineFull("full"), True), (ServiceUnavailable("batch full"), True), (ConnectionRefusedError(), True),
    (TimeoutError(), True), (BentoMLException("bad gateway", error_code=HTTPStatus.BAD_GATEWAY), True),
    (aiohttp.ServerDisconnectedError(), True), (BadInput("the job cannot be run"), False),
    (InternalServerError("bug"), False), (ValueError("x"), False)])
def test_busy_means_not_now_rather_than_never(error, busy):
    assert _busy(error) is busy


async def test_a_job_the_optimizer_cannot_run_fails_at_once(engine, store):
    job_id, photos, opts = await new_job(store)
    await store.create("junk", opts.as_dict(), pack({photo_file(0): PHOTO}), pack({photo_file(0): b"not a PNG"}),
                       owner="api-a")
    optimizer = Optimizer(engine)
    outcome = await run(store, ("junk", photos, opts), optimizer)
    record = await store.get("junk")
    assert (outcome.ending, outcome.status) == (Ending.ENDED, JobStatus.FAILED)
    assert record.status == JobStatus.FAILED and "cannot be run" in record.error
    assert optimizer.tries == 1  # not sent again: it would fail the same way


def replica(store, engine, settings=SETTINGS, instance="api-a", **faults) -> Drivers:
    """An API replica's drivers, sending jobs to the optimizer in-process, its loops quick."""
    return Drivers(store, Optimizer(engine, **faults).optimize, settings, instance=instance, poll_s=0.02,
                   lease_s=0.05)


async def test_a_cancel_from_the_store_stops_the_job_on_the_optimizer(engine, store):
    job = await new_job(store, steps=100_000)
    drivers = replica(store, engine)
    watcher = asyncio.create_task(drivers.watch())
    running = asyncio.create_task(drivers.run(*job))
    await until(lambda: store.get(job[0]), lambda r: r.iteration > 0)
    await store.request_cancel(job[0])  # as any API replica would
    with pytest.raises(JobEnded):
        await running
    watcher.cancel()
    assert (await store.get(job[0])).status == JobStatus.CANCELLED
    await until(lambda: engine.running == 0, timeout=5)


async def test_a_job_whose_replica_died_is_taken_over_and_resumes_from_its_checkpoint(guide, store):
    clean = await new_job(store, steps=40)
    engine = Engine(guide, capacity=2)
    await run(store, clean, Optimizer(engine))
    job_id, photos, opts = await new_job(store, steps=40, owner="api-a")
    dying = replica(store, engine, instance="api-a")
    driving = asyncio.create_task(dying.run(job_id, photos, opts))
    await until(lambda: store.checkpoint(job_id))
    driving.cancel()  # the process is gone: no more writes, no more lease renewals, its stream closed
    with pytest.raises(asyncio.CancelledError):
        await driving
    stopped_at = (await store.get(job_id)).iteration
    survivor = Drivers(store, (optimizer := Optimizer(engine)).optimize,
                       SETTINGS.but(watchdog_s=0.3), instance="api-b", poll_s=0.02, lease_s=0.05)
    watcher = asyncio.create_task(survivor.watch())
    record = await until(lambda: store.get(job_id), lambda r: r.done, timeout=60)
    watcher.cancel()
    engine.stop()
    assert record.status == JobStatus.FINISHED and (record.owner, record.takeovers) == (None, 1)
    assert optimizer.calls and 0 < optimizer.calls[0] <= stopped_at  # resumed, not started over
    assert np.abs(await cube_table(store, job_id) - await cube_table(store, clean[0])).max() < BATCH_TOLERANCE


async def test_a_replica_shutting_down_hands_its_jobs_on_at_once(engine, store):
    job = await new_job(store, steps=30, owner="api-a")
    leaving = replica(store, engine, instance="api-a")
    driving = asyncio.create_task(leaving.run(*job))
    await until(lambda: store.get(job[0]), lambda r: r.iteration > 0)
    await leaving.shutdown()
    with pytest.raises(HandedOver):
        await driving
    assert (await store.get(job[0])).status == JobStatus.RUNNING  # nothing written by the leaving replica
    staying = replica(store, engine, settings=SETTINGS.but(watchdog_s=3600), instance="api-b")
    watcher = asyncio.create_task(staying.watch())
    record = await until(lambda: store.get(job[0]), lambda r: r.done, timeout=60)
    watcher.cancel()
    assert record.status == JobStatus.FINISHED and record.takeovers == 0  # a clean handover does not count


async def test_a_replica_that_lost_its_lease_stops_writing_and_reports_the_end_from_the_store(engine, store):
    job = await new_job(store, steps=400, owner="api-a")
    slow = Drivers(store, Optimizer(engine).optimize, SETTINGS, instance="api-a", lease_s=3600)
    driving = asyncio.create_task(slow.run(*job))
    await until(lambda: store.get(job[0]), lambda r: r.iteration > 0)
    await asyncio.sleep(0.3)
    assert await store.take_over("api-b", idle_s=0.2, limit=1) == [(job[0], 1)]  # it seemed dead to the others
    await slow._leases()  # its next renewal finds the lease gone: it stops without a write
    await until(lambda: engine.running == 0, timeout=5)
    other = replica(store, engine, instance="api-b")
    await other.run_stored(job[0])
    result = await driving  # the first caller still gets the job's result, from the store
    assert result["model"] == "tiny" and (await store.get(job[0])).status == JobStatus.FINISHED


async def test_a_job_that_outlived_too_many_replicas_fails_as_interrupted(engine, store):
    job_id, _, _ = await new_job(store, owner="api-gone")
    await asyncio.sleep(0.2)
    drivers = replica(store, engine, settings=SETTINGS.but(watchdog_s=0.1, takeovers=0),
                      instance="api-b")
    await drivers._leases()
    record = await until(lambda: store.get(job_id), lambda r: r.done, timeout=10)
    assert record.status == JobStatus.FAILED and "interrupted: 1 API process" in record.error


async def test_the_watch_rides_out_a_store_that_cannot_be_reached_and_readiness_hears_it_once(engine, caplog):
    """Every round of the watch fails against a Redis that is not there; the watch goes on, the store itself tells
    readiness of each failure, and the log has one warning for the whole outage (the chaos probe found 17 tracebacks
    in 5 s, and readiness flipping back to ready between rounds)."""
    from clipdlut.serving.readiness import Readiness
    from clipdlut.serving.stores import open_store
    from tests.live import free_port

    readiness = Readiness()
    gone = open_store(f"redis://127.0.0.1:{free_port()}/0", on_unavailable=readiness.store_failed)
    drivers = Drivers(gone, Optimizer(engine).optimize, SETTINGS, poll_s=0.01, lease_s=0.01)
    with caplog.at_level(logging.INFO):
        watcher = asyncio.create_task(drivers.watch())
        await until(lambda: readiness.store_failures >= 5)
        assert not watcher.done()
        watcher.cancel()
    assert readiness.reason == "the job store cannot be reached (ConnectionError); retry in a few seconds"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("not ready: the job store cannot be reached (ConnectionError")


async def test_a_replica_shutting_down_starts_no_job_and_stops_waiting_for_others(engine, store):
    job = await new_job(store, steps=30, owner="api-a")
    leaving = replica(store, engine, instance="api-a")
    await leaving.shutdown()
    with pytest.raises(HandedOver):  # a task that begins after the signal leaves its job to the next replica
        await leaving.run(*job)
    assert await leaving.store.take_over("api-b", idle_s=3600, limit=5) == [(job[0], 0)]  # released: at once


class FlakyStore(SqliteJobStore):
    """A job store whose progress writes fail from the ``fail_from``-th on (a Redis failover, a dropped link)."""

    def __init__(self, path, fail_from: int):
        super().__init__(path)
        self.writes, self.fail_from = 0, fail_from

    async def progress(self, *args, **kwargs):
        self.writes += 1
        if self.writes >= self.fail_from:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await super().progress(*args, **kwargs)


async def test_a_store_that_fails_under_a_write_leaves_the_job_to_the_next_lease_holder(engine, tmp_path):
    store = FlakyStore(tmp_path / "jobs.db", fail_from=3)
    job = await new_job(store, steps=30, owner="api-a")
    outcome = await drive(store, *job, Optimizer(engine).optimize, SETTINGS, asyncio.Event(), FAST, owner="api-a")
    assert outcome.ending == Ending.STORE_LOST and "ConnectionError" in outcome.reason
    record = await store.get(job[0])
    assert record.status == JobStatus.RUNNING and record.error is None  # not failed: another replica takes it over
    await until(lambda: engine.running == 0, timeout=5)  # and nothing left running on the optimizer
