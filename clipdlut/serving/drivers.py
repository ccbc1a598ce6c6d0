"""The jobs one API replica drives, under leases in the job store: the cancels that reach them from any replica,
the leases renewed, the jobs taken over from replicas that stopped, and each job handed on when this one stops."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType

from clipdlut.serving.bundle import unpack
from clipdlut.serving.driven import Driven, Ending, Outcome, StoreLost
from clipdlut.serving.driver import OpenStream, Stop, drive
from clipdlut.serving.errors import JobEnded, StoreUnavailable, describe
from clipdlut.serving.jobs import JobOptions, photo_file
from clipdlut.serving.settings import Settings
from clipdlut.serving.stores import JobStore
from clipdlut.serving.turns import Turns
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)


class HandedOver(Exception):
    """This replica is shutting down: it no longer drives the job, which goes on on another replica."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} goes on on another API replica")


def new_instance(role: str = "api") -> str:
    """A unique name for one process of one role (a restarted process gets a new one)."""
    return f"{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Drivers:
    """The jobs this API replica drives under its leases, the cancels that reach them from any replica, and
    the jobs it takes over from replicas that stopped.

    :meth:`watch` runs for the life of the process: every ``poll_s`` it stops the jobs whose cancel was
    requested; every ``lease_s`` it renews its leases (stopping, without a write, any job whose lease went
    elsewhere) and takes over jobs whose lease was not renewed for ``settings.watchdog_s``; now and then it
    purges expired jobs (a store that cannot be reached is readiness's news, told by the store itself). :meth:`shutdown`
    hands every job on at once.
    """

    def __init__(self, store: JobStore, open_stream: OpenStream, settings: Settings, instance: str | None = None,
                 poll_s: float = 0.1, lease_s: float = 1.0, purge_every_s: float = 60.0,
                 weight_of: Callable[[str], float] = lambda client: 1.0):
        self.store = store
        self.open_stream = open_stream
        self.settings = settings
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.purge_every_s = purge_every_s
        self.instance = instance or new_instance()
        # the fair queue's turns of this replica's jobs (None: a free slot goes to the first job to ask again)
        self.turns = Turns(store, weight_of, every_s=poll_s) if settings.fair_share else None
        self._stops: dict[str, Stop] = {}
        self._starting: set[str] = set()  # taken over or accepted, its upload being read: leased, not yet driven
        self._tasks: set[asyncio.Task] = set()
        self._closing = False

    async def run(self, job_id: str, photos: list[bytes], opts: JobOptions) -> dict:
        """Drive one job to its end (see :func:`~clipdlut.serving.driver.drive`); if another replica takes it over
        meanwhile, wait for its end there. Returns the result summary; raises :class:`JobEnded` for a job that ends
        cancelled or failed, :class:`HandedOver` once this replica is shutting down (a job it has not started yet is
        left for the next replica too)."""
        if self._closing:
            await self.store.release(self.instance)  # (one accepted while the others were being released)
            raise HandedOver(job_id)
        if job_id in self._stops:  # (driven here already)
            return await self._settle(job_id, await self._elsewhere(job_id))
        stop = self._stops[job_id] = Stop()
        try:
            outcome = await drive(self.store, job_id, photos, opts, self.open_stream, self.settings, stop,
                                  owner=self.instance, turns=self.turns)
        except Exception as e:  # a bug: the job must still end, with a reason
            log.exception("job %s failed", job_id)
            outcome = await self._fail(job_id, f"internal error: {describe(e)}")
        finally:
            self._stops.pop(job_id, None)
            if self.turns is not None:
                self.turns.nudge()  # (its slot may be free)
        if outcome.ending == Ending.STORE_LOST and not self._closing:  # (readiness warns once; a line a job)
            log.info("job %s: %s", job_id, outcome.reason)
        elif outcome.ending == Ending.HANDED_ON and not self._closing:
            log.warning("job %s: another API replica drives it now (this one lost its lease)", job_id)
        if outcome.ending != Ending.ENDED and not self._closing:
            outcome = await self._elsewhere(job_id)
        return await self._settle(job_id, outcome)

    async def _settle(self, job_id: str, outcome: Outcome) -> dict:
        """A route's answer to how a job's driving ended: the result summary, or :class:`JobEnded`, or (the job
        open, this replica stopping) :class:`HandedOver`."""
        if outcome.ending != Ending.ENDED:
            raise HandedOver(job_id)
        if outcome.status == JobStatus.FINISHED and outcome.result is not None:
            return outcome.result
        raise JobEnded(outcome.status, outcome.reason)

    async def _elsewhere(self, job_id: str) -> Outcome:
        """Wait for a job driven elsewhere to end (riding out a store that does not answer for a while); stop
        waiting when this replica is shutting down."""
        while not self._closing:
            try:
                outcome = await Driven(self.store, job_id).outcome()
            except Exception as e:  # (a store that does not answer for a while: ask again)
                log.debug("job %s: the job store did not answer: %s", job_id, describe(e))
            else:
                if outcome.ending == Ending.ENDED:
                    return outcome
            await asyncio.sleep(0.5)
        return Outcome(Ending.HANDED_ON, JobStatus.RUNNING, f"job {job_id} goes on on another API replica")

    async def _fail(self, job_id: str, reason: str) -> Outcome:
        """End a job this replica holds as failed (the store's word if it cannot)."""
        try:
            record = await Driven(self.store, job_id).read("get")
            return await Driven(self.store, job_id, self.instance, record.client if record else "").end(
                JobStatus.FAILED, reason)
        except StoreLost as e:
            return Outcome(Ending.STORE_LOST, JobStatus.RUNNING, str(e))

    async def run_stored(self, job_id: str) -> dict:
        """Drive a job from what the store holds of it (one accepted at the door, or taken over)."""
        if job_id in self._stops or job_id in self._starting:
            return await self._settle(job_id, await self._elsewhere(job_id))
        self._starting.add(job_id)  # (its lease is renewed while its upload is read)
        try:
            record, stored = await self.store.get(job_id), await self.store.input(job_id)
            if record is None or stored is None:
                return await self._settle(job_id, Outcome.of(record, job_id))
            try:
                uploads = unpack(stored[0])
                photos = [uploads[photo_file(i)] for i in range(len(uploads))]
            except Exception as e:
                return await self._settle(job_id, await self._fail(
                    job_id, f"internal error: the stored upload cannot be read: {e}"))
        finally:
            self._starting.discard(job_id)
        return await self.run(job_id, photos, JobOptions(**record.options))

    async def adopt(self, job_id: str, takeovers: int) -> None:
        """Drive on a job taken over from a replica that stopped (or end it, once it has been taken over too often:
        a job that crashes every replica that drives it must not go round forever)."""
        try:
            if takeovers > self.settings.takeovers:
                await self._fail(job_id, f"interrupted: {takeovers} API process(es) that drove this job stopped "
                                 "without handing it on (a crash each time); submit it again")
                return
            log.warning("job %s: taken over from an API replica that stopped (takeover %d)", job_id, takeovers)
            await self.run_stored(job_id)
        except (JobEnded, HandedOver):
            pass  # (its end is in the store, or another replica drives it)
        except Exception:  # (the store failed: the lease lapses and the job is taken over again)
            log.exception("job %s: could not be taken over", job_id)

    async def watch(self) -> None:
        """Forever: cancels every ``poll_s``; leases, takeovers and retention every ``lease_s``."""
        last_lease = last_purge = 0.0
        failing: str | None = None
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._cancels()
                now = time.monotonic()
                if now - last_lease >= self.lease_s:
                    last_lease = now
                    await self._leases()
                if now - last_purge >= self.purge_every_s:
                    last_purge = now
                    if n := await self.store.purge():
                        log.info("deleted %d jobs older than the retention time", n)
                failing = None
            except StoreUnavailable:  # (readiness says so, once per outage)
                pass
            except Exception as e:  # a bug must not end the watch either
                error = describe(e)
                if error != failing:  # (once per kind of failure, not ten times a second)
                    log.exception("a round of the job watch failed: %s", error)
                failing = error

    async def _cancels(self) -> None:
        if self._stops:
            for job_id in await self.store.cancel_requested(list(self._stops)):
                if (stop := self._stops.get(job_id)) is not None:
                    stop.set()

    async def _leases(self) -> None:
        if self._closing:  # (renewing now would undo the release)
            return
        mine = [*self._stops, *self._starting]
        held = await self.store.renew(self.instance, mine)
        for job_id in set(mine) - held:
            if (stop := self._stops.get(job_id)) is not None:
                stop.handover = True
                stop.set()
        for job_id, takeovers in await self.store.take_over(self.instance, self.settings.watchdog_s,
                                                            self.settings.max_open_jobs):
            if job_id in self._stops or job_id in self._starting:
                continue  # its lease had lapsed (a stalled loop) but it is driven here: it is renewed again now
            self._keep(asyncio.create_task(self.adopt(job_id, takeovers)))

    def _keep(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def shutdown_on(self, signum: int = signal.SIGTERM) -> None:
        """Hand the jobs on as soon as the process is told to stop (before the server waits for its requests:
        a native task is a request that lasts as long as its job), then let the server's own handler run."""
        if threading.current_thread() is not threading.main_thread():
            return  # (a server run in a thread, as tests do, gets no signals; only the main thread may listen)
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(lambda: self._keep(loop.create_task(self.shutdown())))
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop driving (each job's optimizer stream is closed) and release every lease, so that a live replica
        (or this one, restarted) takes the jobs over at once instead of after the watchdog bound."""
        self._closing = True
        for stop in self._stops.values():
            stop.handover = True
            stop.set()
        deadline = time.monotonic() + grace_s
        while self._stops and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if n := await self.store.release(self.instance):
            log.info("released %d jobs for another API replica to take over", n)
