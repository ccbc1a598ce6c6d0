"""A replica's drivers (clipdlut/serving/drivers.py): a user's cancel from any replica, leases renewed and lost,
jobs taken over from a replica that died or handed on by one that stops, a store out of reach under the watch."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from clipdlut.engine import Engine
from clipdlut.serving.drivers import Drivers, HandedOver
from clipdlut.serving.errors import JobEnded
from clipdlut.serving.stores.sqlite import SqliteJobStore
from clipdlut.status import JobStatus
from tests.conftest import until
from tests.serving.driving import SETTINGS, Optimizer, cube_table, new_job, replica, run
from tests.test_optimizer import BATCH_TOLERANCE

pytestmark = pytest.mark.unit


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


async def test_a_job_whose_replica_died_is_taken_over_and_resumes_from_its_checkpoint(guide, store, clock):
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
    clock.advance(1)  # its lease lapses
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


async def test_a_replica_that_lost_its_lease_stops_writing_and_reports_the_end_from_the_store(engine, store,
                                                                                               clock):
    job = await new_job(store, steps=400, owner="api-a")
    slow = Drivers(store, Optimizer(engine).optimize, SETTINGS, instance="api-a", lease_s=3600)
    driving = asyncio.create_task(slow.run(*job))
    await until(lambda: store.get(job[0]), lambda r: r.iteration > 0)
    clock.advance(0.3)
    assert await store.take_over("api-b", idle_s=0.2, limit=1) == [(job[0], 1)]  # it seemed dead to the others
    await slow._leases()  # its next renewal finds the lease gone: it stops without a write
    await until(lambda: engine.running == 0, timeout=5)
    other = replica(store, engine, instance="api-b")
    await other.run_stored(job[0])
    result = await driving  # the first caller still gets the job's result, from the store
    assert result["model"] == "tiny" and (await store.get(job[0])).status == JobStatus.FINISHED


async def test_a_job_that_outlived_too_many_replicas_fails_as_interrupted(engine, store, clock):
    job_id, _, _ = await new_job(store, owner="api-gone")
    clock.advance(0.2)
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


class BrokenRow(SqliteJobStore):
    """A job store whose stored input cannot be read: a bug, not an outage."""

    async def input(self, job_id):
        raise KeyError("source")


async def test_a_store_bug_under_a_read_fails_the_job_at_once_and_says_so(engine, tmp_path):
    """Not taken for an outage (which would leave the job to lapse from replica to replica until it ran out of
    takeovers, failing as "interrupted"): the job fails now, naming the error."""
    store = BrokenRow(tmp_path / "jobs.db")
    job_id, photos, opts = await new_job(store, owner="api-a")
    with pytest.raises(JobEnded, match="internal error: KeyError"):
        await asyncio.wait_for(replica(store, engine).run(job_id, photos, opts), 10)
    assert (await store.get(job_id)).status == JobStatus.FAILED


async def test_a_slot_that_frees_goes_to_the_client_furthest_below_its_share(engine, store, clock):
    """One slot (the engine's batch of 1): a's first job is long (40 steps), its backlog waits in the fair queue; b's
    two short jobs (6 steps) arrive later and take the next two free slots (b's 12 passes are still below a's 40),
    then a's backlog goes on, first come, first served."""
    optimizer = Optimizer(engine)
    drivers = Drivers(store, optimizer.optimize, SETTINGS, instance="api-a", poll_s=0.02)
    async def submitted(steps: int, client: str):
        clock.advance(1)  # (the store's clock: each job submitted a second after the last)
        return await new_job(store, steps=steps, client=client)

    a = [await submitted(40 if i == 0 else 6, "a") for i in range(4)]  # (the first is long: time for b to come)
    running = [asyncio.create_task(drivers.run(*a[0]))]
    await until(lambda: optimizer.taken, lambda taken: len(taken) == 1)
    running += [asyncio.create_task(drivers.run(*job)) for job in a[1:]]
    await until(lambda: store.head(), lambda head: head is not None)  # (a's others are queued)
    b = [await submitted(6, "b") for _ in range(2)]
    running += [asyncio.create_task(drivers.run(*job)) for job in b]
    await asyncio.gather(*running)
    ids = {job[0]: name for name, jobs in (("a", a), ("b", b)) for job in jobs}
    assert [ids[j] for j in optimizer.taken] == ["a", "b", "b", "a", "a", "a"]
    assert [j for j in optimizer.taken if ids[j] == "a"] == [job[0] for job in a]  # (first come, first served)
    assert await store.head() is None


async def test_an_accepted_job_is_in_the_fair_queue_before_its_driver_starts(engine, store, clock):
    """BentoML starts a job's task only after the submission is answered: a slot that frees meanwhile is already
    the turn of the accepted job's client (one slot; b's job is accepted while a's first runs, its driver later)."""
    optimizer = Optimizer(engine)
    drivers = Drivers(store, optimizer.optimize, SETTINGS, instance="api-a", poll_s=0.02)
    a = []
    for steps in (8, 4):
        clock.advance(1)
        a.append(await new_job(store, steps=steps, client="a"))
    first = asyncio.create_task(drivers.run(*a[0]))
    await until(lambda: optimizer.taken, lambda taken: len(taken) == 1)
    backlog = asyncio.create_task(drivers.run(*a[1]))
    clock.advance(1)
    b = await new_job(store, steps=4, client="b")  # (accepted; not driven yet)
    await first
    assert await store.head() == b[0]  # (a's backlog asks at once; the slot is b's turn)
    await asyncio.gather(backlog, drivers.run(*b))
    assert optimizer.taken == [a[0][0], b[0], a[1][0]]
    await new_job(store, settings=SETTINGS.but(fair_share=False))
    assert await store.head() is None  # (no fair queue: nothing would ever take a job out of it)


async def test_a_replica_that_hangs_does_not_hold_the_fair_queue(engine, store):
    """The head's first call reaches a replica that never answers: after the stall bound it is sent again, as to a
    full optimizer, instead of holding every client's jobs behind it for as long as a job may wait."""
    optimizer = Optimizer(engine)
    calls = []

    async def hangs_once(request):
        calls.append(request.job_id)
        if len(calls) == 1:
            await asyncio.Event().wait()  # (a replica that took the connection and says nothing)
        async for line in optimizer.optimize(request):
            yield line

    settings = SETTINGS.but(stream_stall_s=0.3, optimizer_wait_s=60)
    drivers = Drivers(store, hangs_once, settings, instance="api-a", poll_s=0.02)
    jobs = [await new_job(store, steps=4, client=name) for name in ("a", "b")]
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(asyncio.gather(*(drivers.run(*job) for job in jobs)), timeout=20)
    assert asyncio.get_running_loop().time() - started < 10 and len(optimizer.taken) == 2
