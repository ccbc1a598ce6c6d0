"""The API's side of a job against the real optimizer stream in-process, with the faults a network brings:
streams that break mid-job, a full batch, a user's cancel."""

from __future__ import annotations

import asyncio
import uuid
from http import HTTPStatus

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import BadInput, BentoMLException, InternalServerError, ServiceUnavailable

from clipdlut.cube import read_cube
from clipdlut.driver import Drivers, Resilience, _busy, drive
from clipdlut.engine import Engine, EngineFull
from clipdlut.jobs import JobEnded, JobOptions, accept, decode_upload
from clipdlut.jobstream import stream_job
from clipdlut.settings import Settings
from clipdlut.store import CANCELLED, FAILED, FINISHED, QUEUED, SqliteJobStore
from clipdlut.wire import Failed, encode_event
from tests.conftest import gradient_image, png_bytes, wait
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


def new_job(store, steps=12, prompt="暖色") -> tuple[str, object, JobOptions]:
    job_id = uuid.uuid4().hex
    decoded = decode_upload(PHOTO, SETTINGS)
    opts = JobOptions(prompt, steps=steps, lut_size=17, seed=5)
    accept(store, job_id, PHOTO, decoded, opts, SETTINGS)
    return job_id, decoded, opts


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


def run(store, job, optimizer, stop=None, policy=FAST):
    job_id, decoded, opts = job
    return asyncio.run(drive(store, job_id, decoded, opts, optimizer.optimize, SETTINGS, stop or asyncio.Event(),
                             policy))


def cube_table(store, job_id):
    return read_cube(store.file(job_id, "cube")).table


def test_a_job_runs_to_a_stored_result(engine, store):
    job = new_job(store)
    result = run(store, job, Optimizer(engine))
    record = store.get(job[0])
    assert record.status == FINISHED and record.iteration == 12 and result["model"] == "tiny"
    assert store.preview(job[0])[:8] == b"\x89PNG\r\n\x1a\n" and read_cube(store.file(job[0], "cube")).size == 17


def test_a_broken_stream_resumes_where_its_state_was_and_ends_the_same(engine, store):
    clean = new_job(store)
    run(store, clean, Optimizer(engine))
    broken = new_job(store)
    optimizer = Optimizer(engine, breaks=2, after=3)  # accepted + 2 progress events, then the connection drops
    run(store, broken, optimizer)
    assert optimizer.calls == [None, 4, 8]  # each new call resumed from the last state the events carried
    assert store.get(broken[0]).status == FINISHED and store.get(broken[0]).iteration == 12
    assert np.abs(cube_table(store, broken[0]) - cube_table(store, clean[0])).max() < BATCH_TOLERANCE


def test_a_break_after_the_last_step_resumes_from_the_last_state_before_it(engine, store):
    job = new_job(store)
    optimizer = Optimizer(engine, breaks=1, after=7)  # accepted, 6 reports (the last at step 12), then the break
    run(store, job, optimizer)
    assert optimizer.calls == [None, 10] and store.get(job[0]).status == FINISHED


def test_a_job_a_replica_failed_for_its_own_reasons_is_sent_again(engine, store):
    job = new_job(store)
    optimizer = Optimizer(engine, breaks=1, after=3, replica_fails=True)
    run(store, job, optimizer)
    assert optimizer.calls == [None, 4] and store.get(job[0]).status == FINISHED


def test_without_states_a_lost_job_starts_over_with_its_seed(engine, store):
    clean = new_job(store)
    run(store, clean, Optimizer(engine))
    again = new_job(store)
    optimizer = Optimizer(engine, breaks=1, after=3)
    run(store, again, optimizer, policy=Resilience(**{**FAST.__dict__, "checkpoint_s": None}))
    assert optimizer.calls == [None, None]
    assert np.abs(cube_table(store, again[0]) - cube_table(store, clean[0])).max() < BATCH_TOLERANCE


def test_attempts_are_bounded_and_the_reason_says_so(engine, store):
    job = new_job(store)
    with pytest.raises(JobEnded):
        run(store, job, Optimizer(engine, breaks=10, after=2))
    record = store.get(job[0])
    assert record.status == FAILED and "lost 3 times" in record.error and "ConnectionResetError" in record.error
    wait(lambda: engine.running == 0, timeout=5)  # nothing left running on the replica


def test_a_job_waits_for_room_in_a_full_batch(engine, store):
    first, second = new_job(store, steps=60), new_job(store, steps=6)
    optimizer = Optimizer(engine)
    seen = []

    async def watch():
        while store.get(second[0]).status == QUEUED:
            seen.append(optimizer.tries)
            await asyncio.sleep(0.005)

    async def both():
        await asyncio.gather(
            drive(store, first[0], first[1], first[2], optimizer.optimize, SETTINGS, asyncio.Event(), FAST),
            drive(store, second[0], second[1], second[2], optimizer.optimize, SETTINGS, asyncio.Event(), FAST),
            watch())

    asyncio.run(both())
    assert max(seen) >= 3  # the second job was refused (capacity 1) and sent again, queued meanwhile, not failed
    assert optimizer.calls == [None, None] and optimizer.tries > 2
    assert store.get(first[0]).status == store.get(second[0]).status == FINISHED


@pytest.mark.parametrize("error,busy", [
    (EngineFull("full"), True), (ServiceUnavailable("batch full"), True), (ConnectionRefusedError(), True),
    (TimeoutError(), True), (BentoMLException("bad gateway", error_code=HTTPStatus.BAD_GATEWAY), True),
    (aiohttp.ServerDisconnectedError(), True), (BadInput("the job cannot be run"), False),
    (InternalServerError("bug"), False), (ValueError("x"), False)])
def test_busy_means_not_now_rather_than_never(error, busy):
    assert _busy(error) is busy


def test_a_job_the_optimizer_cannot_run_fails_at_once(engine, store):
    job_id, decoded, opts = new_job(store)
    store.create("junk", opts.as_dict(), PHOTO, b"not a PNG")
    optimizer = Optimizer(engine)
    with pytest.raises(JobEnded):
        run(store, ("junk", decoded, opts), optimizer)
    assert store.get("junk").status == FAILED and "cannot be run" in store.get("junk").error
    assert optimizer.tries == 1  # not sent again: it would fail the same way


def test_a_cancel_from_the_store_stops_the_job_on_the_optimizer(engine, store):
    job = new_job(store, steps=100_000)
    drivers = Drivers(store, Optimizer(engine).optimize, SETTINGS, poll_s=0.02)

    async def scenario():
        watcher = asyncio.create_task(drivers.watch_cancels())
        running = asyncio.create_task(drivers.run(*job))
        await asyncio.to_thread(wait, lambda: store.get(job[0]).iteration > 0)
        store.request_cancel(job[0])  # as any API replica would
        with pytest.raises(JobEnded):
            await running
        watcher.cancel()

    asyncio.run(scenario())
    assert store.get(job[0]).status == CANCELLED
    wait(lambda: engine.running == 0, timeout=5)
