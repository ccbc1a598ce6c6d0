"""The API's side of a job: send it to the optimizer, follow its stream into the job store, render the result.

Each job is one streamed call to the optimizer service. Events become progress, previews and checkpoints in
the job store; the last one carries the exact LUT, from which the ``.cube`` text is written and the
full-resolution image rendered here (the original never travels to the optimizer).

When the optimizer cannot take the job (its batch is full, it is restarting, no replica is up) the job
waits with backoff, up to ``max_wait_s``. When a stream breaks after the job was taken (a replica killed
or restarted, a connection dropped, a replica silent for ``stall_s``), the job is sent again and the
router picks a live replica; it resumes from the last checkpoint, or starts over with the same seed. After
``attempts`` broken streams it fails with a reason that says so. Closing the stream is how a cancel reaches
whichever replica runs the job.

Each API replica drives the jobs it accepted under a lease in the job store (:class:`Drivers`); when a
replica stops, a live one takes its jobs over and drives them on from their last checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from clipdlut.cube import read_cube
from clipdlut.engine import EngineFull
from clipdlut.export import lut_to_cube
from clipdlut.imaging import MEDIA_TYPES, encode_image, output_format
from clipdlut.lut import from_table as table_to_lut
from clipdlut.quality import measure_grade
from clipdlut.render import apply_table
from clipdlut.serving.bundle import unpack
from clipdlut.serving.errors import JobEnded, StoreUnavailable
from clipdlut.serving.jobs import REFERENCE_FILE, START_FILE, JobOptions, image_file, photo_file
from clipdlut.serving.jobstream import InvalidJob
from clipdlut.serving.settings import Settings
from clipdlut.serving.stores import JobStore
from clipdlut.serving.validation import decode_upload
from clipdlut.serving.wire import (
    Accepted,
    Beat,
    Checkpoint,
    Failed,
    Finished,
    OptimizeRequest,
    ProgressEvent,
    decode_tensor,
    encode_tensor,
    read_events,
)
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)
OpenStream = Callable[[OptimizeRequest], AsyncIterable[str | bytes]]  # one call to the optimizer's ``optimize``
BUSY_STATUSES = frozenset({429, 502, 503, 504})  # no replica could take the job now: wait and send it again


@dataclass(frozen=True)
class Resilience:
    """How a job rides out a busy or lost optimizer (from :class:`Settings`)."""

    attempts: int
    max_wait_s: float
    stall_s: float
    checkpoint_s: float | None
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0

    @classmethod
    def of(cls, s: Settings) -> Resilience:
        return cls(attempts=s.optimizer_attempts, max_wait_s=s.optimizer_wait_s, stall_s=s.stream_stall_s,
                   checkpoint_s=s.checkpoint_s if s.checkpoint_s >= 0 else None)


class _Stopped(Exception):
    """The job's stop signal was set: the user cancelled it, or this replica gave up driving it."""


class Stop(asyncio.Event):
    """A job's stop signal: a cancel, or (``handover``) this replica no longer drives it."""

    handover = False


class HandedOver(JobEnded):
    """This replica stopped driving an open job (its lease went to another replica, or it is shutting down)."""

    def __init__(self, job_id: str):
        super().__init__(JobStatus.RUNNING, f"job {job_id} is driven by another API replica now")


class _Lost(Exception):
    """The stream broke after the optimizer took the job (or the replica failed it for a reason of its own)."""


class StoreLost(HandedOver):
    """The job store failed under a write: this replica stops driving the job without a word, and its lease
    lapses to whichever replica can reach the store (it resumes from the last state stored)."""

    def __init__(self, job_id: str, reason: str):
        JobEnded.__init__(self, JobStatus.RUNNING, f"the job store failed while driving job {job_id}: {reason}")


class _NotMine(Exception):
    """A write was refused: the job has ended, or another replica holds its lease now."""


async def _record(job_id: str, write: Callable, *args, **kwargs) -> None:
    """A job store write fenced by the lease; :class:`StoreLost` when the store fails, :class:`_NotMine` when
    the write was refused."""
    try:
        written = await write(*args, **kwargs)
    except Exception as e:
        raise StoreLost(job_id, f"{type(e).__name__}: {e}") from e
    if written is False:
        raise _NotMine


def optimize_request(job_id: str, working: bytes, opts: JobOptions, settings: Settings,
                     checkpoint_s: float | None) -> OptimizeRequest:
    """The optimizer's request for a stored job: its working inputs (:func:`clipdlut.serving.jobs.accept`), the
    user's options, the service's settings."""
    files = unpack(working)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    start = start_size = None
    if (cube := files.get(START_FILE)) is not None:
        lut = table_to_lut(read_cube(cube).normalized())
        start, start_size = encode_tensor(lut), int(lut.shape[-1])
    reference = files.get(REFERENCE_FILE)
    return OptimizeRequest(job_id=job_id, images=[b64(files[photo_file(i)]) for i in range(opts.photos)],
                           target_prompt=opts.target_prompt, source_prompt=opts.source_prompt, steps=opts.steps,
                           lut_size=opts.lut_size, seed=opts.seed, views=settings.views,
                           keep_blacks=opts.keep_blacks, keep_whites=opts.keep_whites,
                           progress_every=settings.progress_every, preview=True, checkpoint_s=checkpoint_s,
                           reference=b64(reference) if reference is not None else None, start=start,
                           start_size=start_size, mode=opts.mode)


def _busy(e: BaseException) -> bool:
    """An error that says "not now" rather than "never": the job is sent again after a wait."""
    if isinstance(e, EngineFull | OSError):  # (connection errors and timeouts are OSErrors)
        return True
    code = getattr(e, "error_code", None)
    if code is not None:
        return int(code) in BUSY_STATUSES
    return type(e).__module__.split(".")[0] in ("aiohttp", "httpx")  # a transport error of the clients


async def _next(events: AsyncIterator, stop: asyncio.Event, timeout: float):
    """The next event, or :class:`_Stopped` when ``stop`` is set first, or ``TimeoutError`` after ``timeout``."""
    following = asyncio.ensure_future(anext(events))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({following, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if following in done:
        return following.result()
    following.cancel()
    with contextlib.suppress(BaseException):
        await following
    if stop.is_set():
        raise _Stopped
    raise TimeoutError(f"no word from the optimizer for {timeout:g} s")


async def _wait(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    if stop.is_set():
        raise _Stopped


async def drive(store: JobStore, job_id: str, photos: list[bytes], opts: JobOptions, open_stream: OpenStream,
                settings: Settings, stop: asyncio.Event, resilience: Resilience | None = None,
                owner: str | None = None) -> dict:
    """Run a stored job on the optimizer to its end and store its result; returns the result summary. ``photos``
    are the original uploads (decoded only when the result is rendered: a series of large photos is not held
    decoded while it is optimized).

    Starts from the job's last checkpoint in the store, if it has one (a job taken over from another replica).
    Raises :class:`JobEnded` when the job was cancelled (``stop`` set) or failed, the store says which and
    why; :class:`HandedOver` (and writes nothing) when ``stop`` is a :class:`Stop` set for a handover, when
    another replica holds the job's lease (every write is fenced by ``owner``'s lease), or when the store fails.
    """
    policy = resilience or Resilience.of(settings)
    record = await store.get(job_id)
    submitted = record.created if record else time.time()
    stored = await store.input(job_id)
    if stored is None and record is not None and not record.done:
        raise await _end(store, job_id, owner, JobStatus.FAILED, f"job {job_id} has no input in the job store")
    if stored is None:  # it has ended (another replica finished it)
        return await _outcome(store, job_id)
    request = await asyncio.to_thread(optimize_request, job_id, stored[1], opts, settings, policy.checkpoint_s)
    saved = await store.checkpoint(job_id)
    checkpoint = Checkpoint.model_validate_json(saved) if saved else None
    lost, backoff, waiting_since, started = 0, policy.backoff_s, time.monotonic(), None
    try:
        while True:
            taken, final = False, None
            raw = open_stream(request.model_copy(update={"resume": checkpoint}))
            events = read_events(raw)
            try:
                while final is None:
                    # before the job is taken it may wait in a queue (BentoCloud's external queue, a replica
                    # scaling up from zero) for as long as a job may wait; once taken, silence means a lost replica
                    timeout = policy.stall_s if taken else max(1.0, policy.max_wait_s - (time.monotonic()
                                                                                         - waiting_since))
                    try:
                        event = await _next(events, stop, timeout)
                    except StopAsyncIteration:
                        raise _Lost("the optimizer's stream ended before the job did") from None
                    if isinstance(event, Accepted):
                        taken, backoff = True, policy.backoff_s
                        started = started or time.time()
                        await _record(job_id, store.set_status, job_id, JobStatus.RUNNING, owner=owner)
                        if event.iteration:
                            log.info("job %s resumed at iteration %d", job_id, event.iteration)
                    elif isinstance(event, ProgressEvent):
                        preview = base64.b64decode(event.preview) if event.preview else None
                        state = None
                        if event.checkpoint is not None and event.checkpoint.iteration < event.total:
                            checkpoint = event.checkpoint
                            state = checkpoint.model_dump_json().encode()
                        await _record(job_id, store.progress, job_id, event.iteration, event.total, event.loss,
                                      event.terms, preview, state, owner=owner)
                    elif isinstance(event, Finished):
                        final = event
                    elif isinstance(event, Failed) and event.retryable:
                        raise _Lost(f"the replica failed the job: {event.error}")
                    elif isinstance(event, Failed):
                        raise await _end(store, job_id, owner, JobStatus.FAILED, event.error)
                    elif not isinstance(event, Beat):
                        raise _Lost(f"unexpected event {event!r}")
            except (_Stopped, JobEnded):
                raise
            except InvalidJob as e:
                raise await _end(store, job_id, owner, JobStatus.FAILED, str(e)) from None
            except _NotMine:
                raise await _ended(store, job_id) from None
            except Exception as e:
                reason = f"{type(e).__name__}: {e}".strip().rstrip(":")
                if taken or isinstance(e, _Lost):
                    lost += 1
                    if lost >= policy.attempts:
                        raise await _end(store, job_id, owner, JobStatus.FAILED,
                                         f"the optimizer was lost {lost} times while running this job (last: "
                                         f"{reason}); submit it again") from None
                    log.warning("job %s: the optimizer's stream broke (%s); sending it again (%d of %d), %s",
                                job_id, reason, lost + 1, policy.attempts,
                                f"resuming at iteration {checkpoint.iteration}" if checkpoint else "from the start")
                    waiting_since = time.monotonic()
                elif not _busy(e):
                    raise await _end(store, job_id, owner, JobStatus.FAILED,
                                     f"the optimizer refused the job: {reason}") from None
                elif time.monotonic() - waiting_since > policy.max_wait_s:
                    raise await _end(store, job_id, owner, JobStatus.FAILED, f"no optimizer could take the job within "
                               f"{policy.max_wait_s:g} s (last: {reason}); submit it again") from None
                else:
                    log.debug("job %s waits for an optimizer: %s", job_id, reason)
            finally:
                await _close(events, raw)
            if final is not None:  # (rendering is the API's own work: nothing to send again if it fails)
                return await _finish(store, job_id, photos, opts, final, submitted, started, owner, settings)
            await _wait(backoff * random.uniform(0.5, 1.0), stop)
            backoff = min(backoff * 2, policy.max_backoff_s)
    except _Stopped:
        if getattr(stop, "handover", False):
            raise HandedOver(job_id) from None
        raise await _end(store, job_id, owner, JobStatus.CANCELLED, "cancelled by the user") from None


async def _close(*streams: object) -> None:
    """Close a job's streams now (closing the HTTP response is what tells the replica to stop the job)."""
    for stream in streams:
        if (aclose := getattr(stream, "aclose", None)) is not None:
            with contextlib.suppress(BaseException):
                await aclose()


async def _end(store: JobStore, job_id: str, owner: str | None, status: str, reason: str) -> JobEnded:
    """End an open job (fenced by ``owner``'s lease); what to raise (the job's real end, should it have ended
    already, or :class:`HandedOver` if another replica holds it)."""
    try:
        ended = await store.set_status(job_id, status, reason, owner=owner)
    except Exception as e:
        return StoreLost(job_id, f"{type(e).__name__}: {e}")
    if ended:
        log.info("job %s ended %s: %s", job_id, status, reason)
        return JobEnded(status, reason)
    return await _ended(store, job_id)


async def _outcome(store: JobStore, job_id: str) -> dict:
    """A job's result summary if it has finished; else raises how it ended (:class:`JobEnded`), or
    :class:`HandedOver` while it is open (another replica drives it)."""
    record = await store.get(job_id)
    if record is not None and record.status == JobStatus.FINISHED and record.result is not None:
        return record.result
    raise await _ended(store, job_id)


async def _ended(store: JobStore, job_id: str) -> JobEnded:
    """How a job that refused a write ended (:class:`HandedOver` if it is open: another replica holds it)."""
    record = await store.get(job_id)
    if record is None:
        return JobEnded(JobStatus.FAILED, f"job {job_id} is gone from the job store")
    if not record.done:
        return HandedOver(job_id)
    return JobEnded(record.status, record.error or f"job {job_id} ended {record.status}")


async def _finish(store: JobStore, job_id: str, photos: list[bytes], opts: JobOptions, event: Finished,
                  submitted: float, started: float | None, owner: str | None, settings: Settings) -> dict:
    """Write the ``.cube`` text, render each full-resolution photo from it, and store them with the scores."""
    t0 = time.time()
    n = event.lut_size
    comments = [*opts.describe(),
                f"model: {event.model}, steps: {opts.steps}, seed: {opts.seed}, strength: {opts.strength}"]
    fmt = output_format(opts.image_format)

    def write_render_measure() -> tuple[str, list[tuple[bytes, dict]]]:  # (off the event loop: 10 ms to seconds)
        cube = lut_to_cube(decode_tensor(event.lut, (1, 3, n, n, n)), strength=opts.strength, size=opts.lut_size,
                           keep_blacks=opts.keep_blacks, keep_whites=opts.keep_whites, neutral=opts.mode == "bw",
                           title=(opts.target_prompt or "CLIP-DLUT")[:64], comments=comments)
        table = read_cube(cube).normalized()  # (rendered from the returned text: a client's Pillow gets these pixels)
        graded = []
        for data in photos:  # (one decoded photo in memory at a time)
            d = decode_upload(data, settings)
            out = apply_table(d.rgb, table)
            graded.append((encode_image(out, fmt, d.alpha, d.icc_profile),
                           {"media_type": MEDIA_TYPES[fmt], "width": d.size[0], "height": d.size[1],
                            "quality": measure_grade(d.rgb, out, table).as_dict()}))
        return cube, graded

    cube, graded = await asyncio.to_thread(write_render_measure)
    done = time.time()
    started = started or t0 - event.seconds
    each = [summary for _, summary in graded]
    result: dict[str, Any] = {
        "cube_size": opts.lut_size, **each[0], "photos": each, "model": event.model, "scores": asdict(event.scores),
        "timings": {"queued_s": max(0.0, started - submitted), "optimize_s": max(0.0, t0 - started),
                    "render_s": done - t0, "total_s": done - submitted},
    }
    files = {"cube": cube.encode("utf-8"), **{image_file(i): image for i, (image, _) in enumerate(graded)}}
    try:
        finished = await store.finish(job_id, result, files, owner=owner)
    except Exception as e:
        raise StoreLost(job_id, f"{type(e).__name__}: {e}") from e
    if not finished:  # it ended meanwhile (a late cancel, or another replica finished it), or is not ours now
        return await _outcome(store, job_id)
    t = result["timings"]
    log.info("job %s finished: queued %.2f s, optimize %.2f s, render %.2f s, total %.2f s (%d photo(s), first "
             "%dx%d, %d steps)", job_id, t["queued_s"], t["optimize_s"], t["render_s"], t["total_s"], len(each),
             each[0]["width"], each[0]["height"], opts.steps)
    return result


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
                 poll_s: float = 0.1, lease_s: float = 1.0, purge_every_s: float = 60.0):
        self.store = store
        self.open_stream = open_stream
        self.settings = settings
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.purge_every_s = purge_every_s
        self.instance = instance or new_instance()
        self._stops: dict[str, Stop] = {}
        self._starting: set[str] = set()  # taken over or accepted, its upload being read: leased, not yet driven
        self._tasks: set[asyncio.Task] = set()
        self._closing = False

    async def run(self, job_id: str, photos: list[bytes], opts: JobOptions) -> dict:
        """Drive one job to its end (see :func:`drive`); if another replica takes it over meanwhile, wait for
        its end there. Raises :class:`JobEnded` for a job that ends cancelled or failed, :class:`HandedOver` once
        this replica is shutting down (a job it has not started yet is left for the next replica too)."""
        if self._closing:
            await self.store.release(self.instance)  # (one accepted while the others were being released)
            raise HandedOver(job_id)
        if job_id in self._stops:  # (driven here already)
            return await self._outcome(job_id)
        stop = self._stops[job_id] = Stop()
        try:
            return await drive(self.store, job_id, photos, opts, self.open_stream, self.settings, stop,
                               owner=self.instance)
        except HandedOver as e:
            if self._closing:
                raise
            if isinstance(e, StoreLost):  # (an outage: readiness warns once; each job is a line of its own)
                log.info("job %s: %s", job_id, e)
            else:
                log.warning("job %s: another API replica drives it now (this one lost its lease)", job_id)
        except JobEnded:
            raise
        except Exception as e:  # a bug: the job must still end, with a reason
            log.exception("job %s failed", job_id)
            raise await _end(self.store, job_id, self.instance, JobStatus.FAILED,
                             f"internal error: {type(e).__name__}: {e}") from None
        finally:
            self._stops.pop(job_id, None)
        return await self._outcome(job_id)

    async def _outcome(self, job_id: str) -> dict:
        """Wait for a job driven elsewhere to end (riding out a store that does not answer for a while): its
        result summary, or :class:`JobEnded`."""
        while True:
            if self._closing:
                raise HandedOver(job_id)
            try:
                return await _outcome(self.store, job_id)
            except HandedOver:
                pass  # (still open: driven elsewhere)
            except JobEnded:
                raise
            except Exception as e:
                log.debug("job %s: the job store did not answer: %s", job_id, e)
            await asyncio.sleep(0.5)

    async def run_stored(self, job_id: str) -> dict:
        """Drive a job from what the store holds of it (one accepted at the door, or taken over)."""
        if job_id in self._stops or job_id in self._starting:
            return await self._outcome(job_id)
        self._starting.add(job_id)  # (its lease is renewed while its upload is read)
        try:
            record, stored = await self.store.get(job_id), await self.store.input(job_id)
            if record is None or stored is None:
                return await _outcome(self.store, job_id)
            try:
                uploads = unpack(stored[0])
                photos = [uploads[photo_file(i)] for i in range(len(uploads))]
            except Exception as e:
                raise await _end(self.store, job_id, self.instance, JobStatus.FAILED,
                                 f"internal error: the stored upload cannot be read: {e}") from None
        finally:
            self._starting.discard(job_id)
        return await self.run(job_id, photos, JobOptions(**record.options))

    async def adopt(self, job_id: str, takeovers: int) -> None:
        """Drive on a job taken over from a replica that stopped (or end it, once it has been taken over too often:
        a job that crashes every replica that drives it must not go round forever)."""
        try:
            if takeovers > self.settings.takeovers:
                await _end(self.store, job_id, self.instance, JobStatus.FAILED,
                           f"interrupted: {takeovers} API process(es) that drove this job stopped without handing "
                           "it on (a crash each time); submit it again")
                return
            log.warning("job %s: taken over from an API replica that stopped (takeover %d)", job_id, takeovers)
            await self.run_stored(job_id)
        except JobEnded:
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
                error = f"{type(e).__name__}: {e}"
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
