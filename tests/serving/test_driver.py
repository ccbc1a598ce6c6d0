"""One job's driver (clipdlut/serving/driver.py) against the real optimizer stream in-process, with the faults a
network brings: streams that break mid-job, a full batch, a job the optimizer cannot run, a store that fails."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import BadInput, BentoMLException, InternalServerError, ServiceUnavailable

from clipdlut.cube import read_cube
from clipdlut.engine import EngineFull
from clipdlut.serving.bundle import pack
from clipdlut.serving.driven import Ending
from clipdlut.serving.driver import Resilience, _busy, drive
from clipdlut.serving.jobs import photo_file
from clipdlut.serving.stores.sqlite import SqliteJobStore
from clipdlut.status import JobStatus
from tests.conftest import until
from tests.serving.driving import FAST, PHOTO, SETTINGS, Optimizer, cube_table, new_job, run
from tests.test_optimizer import BATCH_TOLERANCE

pytestmark = pytest.mark.unit


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
