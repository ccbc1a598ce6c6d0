"""The API's side of one job: send it to the optimizer, follow its stream into the job store, deliver the result.

Each job is one streamed call to the optimizer service. Events become progress, previews and checkpoints in
the job store; the last one carries the exact LUT, from which :mod:`~clipdlut.serving.delivery` writes the ``.cube``
and renders the full-resolution photos here (the original never travels to the optimizer).

When the optimizer cannot take the job (its batch is full, it is restarting, no replica is up) the job
waits with backoff, up to ``max_wait_s``. When a stream breaks after the job was taken (a replica killed
or restarted, a connection dropped, a replica silent for ``stall_s``), the job is sent again and the
router picks a live replica; it resumes from the last checkpoint, or starts over with the same seed. After
``attempts`` broken streams it fails with a reason that says so. Closing the stream is how a cancel reaches
whichever replica runs the job.

Driving ends in one of a few ways (:class:`~clipdlut.serving.driven.Outcome`); :mod:`~clipdlut.serving.drivers`
drives the jobs of a replica under their leases.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from clipdlut.cube import read_cube
from clipdlut.engine import EngineFull
from clipdlut.lut import from_table as table_to_lut
from clipdlut.serving import usage
from clipdlut.serving.bundle import unpack
from clipdlut.serving.delivery import deliver
from clipdlut.serving.driven import Driven, Ending, Outcome, StoreLost
from clipdlut.serving.errors import StoreUnavailable, describe
from clipdlut.serving.jobs import REFERENCE_FILE, START_FILE, JobOptions, photo_file
from clipdlut.serving.jobstream import InvalidJob
from clipdlut.serving.settings import Settings
from clipdlut.serving.stores import JobStore
from clipdlut.serving.turns import Turns
from clipdlut.serving.wire import (
    Accepted,
    Beat,
    Checkpoint,
    Failed,
    Finished,
    OptimizeRequest,
    ProgressEvent,
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


class Stop(asyncio.Event):
    """A job's stop signal: a cancel, or (``handover``) this replica no longer drives it."""

    handover = False


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
                           protect_skin=opts.protect_skin,
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


_STOPPED = object()  # what :func:`_next` returns when the job's stop signal came first


async def _next(events: AsyncIterator, stop: asyncio.Event, timeout: float) -> Any:
    """The next event, or ``_STOPPED`` when ``stop`` is set first; ``TimeoutError`` after ``timeout``."""
    following = asyncio.ensure_future(anext(events))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({following, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if following in done:
        return following.result()
    following.cancel()
    await asyncio.wait({following})
    if not following.cancelled() and (error := following.exception()) is not None:
        log.debug("the stream's last read failed: %s", describe(error))
    if stop.is_set():
        return _STOPPED
    raise TimeoutError(f"no word from the optimizer for {timeout:g} s")


async def _pause(seconds: float, stop: asyncio.Event) -> bool:
    """Wait ``seconds``, or less when ``stop`` is set first: whether it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _close(*streams: object) -> None:
    """Close a job's streams now (closing the HTTP response is what tells the replica to stop the job)."""
    for stream in streams:
        if (aclose := getattr(stream, "aclose", None)) is not None:
            try:
                await aclose()
            except Exception as e:  # (a stream that broke may fail to close too: it is closed either way)
                log.debug("closing a stream: %s", describe(e))


@dataclass(frozen=True)
class _Broken:
    """A stream that ended without the job's end: why; ``lost`` if the optimizer had taken the job (or its replica
    failed it for a reason of its own), ``busy`` if it said "not now" before taking it."""

    reason: str
    lost: bool
    busy: bool = False


class _Run:
    """Driving one job: attempts at the optimizer's stream, and the retry policy between them."""

    def __init__(self, job: Driven, request: OptimizeRequest, open_stream: OpenStream, policy: Resilience,
                 stop: asyncio.Event, checkpoint: Checkpoint | None, submitted: float, turns: Turns | None = None):
        self.job, self.request, self.open_stream, self.policy, self.stop = job, request, open_stream, policy, stop
        self.checkpoint = checkpoint  # the last state stored: what the next attempt resumes from
        self.started: float | None = None  # when the optimizer first took the job
        self.submitted = submitted  # when the client submitted it (its queue wait counts from here)
        self.iteration = checkpoint.iteration if checkpoint else 0  # the last step the store heard of
        self.lost, self.backoff, self.waiting_since = 0, policy.backoff_s, time.monotonic()
        self.turns = turns  # the fair queue (None: the first retry after a slot frees takes it)
        self.full = False  # the optimizer was full at the job's last turn
        self.charged_to = self.iteration  # the step up to which the client was charged for this job
        self.passes_per_step = request.views * len(request.images)

    async def until_final(self) -> Finished | Outcome:
        """Send the job, at its turn, until a stream carries it to its last event, or driving it ends otherwise."""
        while True:
            if (end := await self.turn()) is not None:
                return end
            answer = await self.attempt()
            await self._fair(self._give_back())
            if not isinstance(answer, _Broken):
                return answer
            self.full = answer.busy
            if (end := await self.judge(answer)) is not None:
                return end
            pause = 0.0 if answer.busy and self.turns is not None else self.backoff  # (its next turn paces it)
            if await _pause(pause * random.uniform(0.5, 1.0), self.stop):
                return await self.stopped()
            self.backoff = min(self.backoff * 2, self.policy.max_backoff_s)

    async def turn(self) -> Outcome | None:
        """Wait for the job's turn in the fair queue; its end if it was cancelled or waited too long meanwhile."""
        if self.turns is None:
            return None
        p = self.policy
        left = p.max_wait_s - (time.monotonic() - self.waiting_since)
        try:
            if await self._fair(self.turns.wait(self.job.job_id, self.job.client, self.stop, max(left, 0.001),
                                                again=self.full)):
                return None
        except TimeoutError:
            return await self.job.end(JobStatus.FAILED, f"no optimizer slot came free for the job within "
                                      f"{p.max_wait_s:g} s; submit it again")
        return await self.stopped()

    async def _fair(self, call: Awaitable[Any]) -> Any:
        """A call of the fair queue: a store that fails under it is a lost store, as for any write of the job."""
        try:
            return await call
        except StoreUnavailable as e:
            raise StoreLost(f"the job store failed while driving job {self.job.job_id}: {describe(e)}") from e

    async def _charge(self, iteration: int) -> None:
        """The optimizer took the job at ``iteration``: its client is charged the passes of the steps left."""
        self.iteration = iteration
        if self.turns is not None:
            await self._fair(self.turns.started(self.job.job_id, self.job.client,
                                                (self.request.steps - iteration) * self.passes_per_step))
            self.charged_to = self.request.steps

    async def _give_back(self) -> None:
        """After an attempt: the passes charged for steps not served (it ended or broke before them)."""
        if self.turns is not None and self.charged_to > self.iteration:
            await self.turns.give_back(self.job.client, (self.charged_to - self.iteration) * self.passes_per_step)
            self.charged_to = self.iteration

    async def attempt(self) -> Finished | Outcome | _Broken:
        """One call of the optimizer: its events into the store, until the job's last event or a break."""
        raw = self.open_stream(self.request.model_copy(update={"resume": self.checkpoint}))
        events = read_events(raw)
        taken = False
        try:
            while True:
                event = await _next(events, self.stop, self._timeout(taken))
                if event is _STOPPED:
                    return await self.stopped()
                taken = taken or isinstance(event, Accepted)
                if (answer := await self.take(event)) is not None:
                    return answer
        except StopAsyncIteration:
            return _Broken("the optimizer's stream ended before the job did", lost=True)
        except InvalidJob as e:
            return await self.job.end(JobStatus.FAILED, str(e))
        except StoreLost:
            raise
        except Exception as e:  # the stream broke: the call failed, the connection dropped, the replica went silent
            return _Broken(describe(e), lost=taken, busy=_busy(e))
        finally:
            await _close(events, raw)

    def _timeout(self, taken: bool) -> float:
        """Before the job is taken it may wait in a queue (BentoCloud's external queue, a replica scaling up from
        zero) for as long as a job may wait; once taken, silence means a lost replica. At the head of the fair queue
        it waits no longer than that silence either: every other client's jobs wait behind it (a replica that
        hangs must not hold them; it is sent again, as to a full optimizer)."""
        left = max(1.0, self.policy.max_wait_s - (time.monotonic() - self.waiting_since))
        return self.policy.stall_s if taken else min(left, self.policy.stall_s) if self.turns is not None else left

    async def take(self, event: object) -> Finished | Outcome | _Broken | None:
        """One event of the stream: into the store; what ends the attempt, if it does."""
        if isinstance(event, Accepted):
            if self.started is None:
                usage.waited(self.job.client, time.time() - self.submitted)
            await self._charge(event.iteration)
            self.backoff, self.started = self.policy.backoff_s, self.started or time.time()
            if event.iteration:
                log.info("job %s resumed at iteration %d", self.job.job_id, event.iteration)
            return await self._written("set_status", JobStatus.RUNNING)
        if isinstance(event, ProgressEvent):
            preview = base64.b64decode(event.preview) if event.preview else None
            state = None
            if event.checkpoint is not None and event.checkpoint.iteration < event.total:
                self.checkpoint = event.checkpoint
                state = event.checkpoint.model_dump_json().encode()
            usage.served(self.job.client, (event.iteration - self.iteration) * self.passes_per_step)
            self.iteration = event.iteration
            return await self._written("progress", event.iteration, event.total, event.loss, event.terms, preview,
                                       state)
        if isinstance(event, Finished):
            usage.served(self.job.client, (self.request.steps - self.iteration) * self.passes_per_step)
            self.iteration = self.request.steps
            return event
        if isinstance(event, Failed) and event.retryable:
            return _Broken(f"the replica failed the job: {event.error}", lost=True)
        if isinstance(event, Failed):
            return await self.job.end(JobStatus.FAILED, event.error)
        if not isinstance(event, Beat):
            return _Broken(f"unexpected event {event!r}", lost=True)
        return None

    async def _written(self, method: str, *args: Any) -> Outcome | None:
        """A write under the lease; the store's word on the job when it was refused."""
        return None if await self.job.write(method, *args) else await self.job.outcome()

    async def judge(self, broken: _Broken) -> Outcome | None:
        """What a broken stream means for the job: send it again (None), or its end."""
        p = self.policy
        if broken.lost:
            self.lost += 1
            if self.lost >= p.attempts:
                return await self.job.end(JobStatus.FAILED, f"the optimizer was lost {self.lost} times while running "
                                          f"this job (last: {broken.reason}); submit it again")
            log.warning("job %s: the optimizer's stream broke (%s); sending it again (%d of %d), %s", self.job.job_id,
                        broken.reason, self.lost + 1, p.attempts,
                        f"resuming at iteration {self.checkpoint.iteration}" if self.checkpoint else "from the start")
            self.waiting_since = time.monotonic()
        elif not broken.busy:
            return await self.job.end(JobStatus.FAILED, f"the optimizer refused the job: {broken.reason}")
        elif time.monotonic() - self.waiting_since > p.max_wait_s:
            return await self.job.end(JobStatus.FAILED, f"no optimizer could take the job within {p.max_wait_s:g} s "
                                      f"(last: {broken.reason}); submit it again")
        else:
            log.debug("job %s waits for an optimizer: %s", self.job.job_id, broken.reason)
        return None

    async def stopped(self) -> Outcome:
        """The job's stop signal: a handover (this replica no longer drives it), or the user's cancel."""
        if getattr(self.stop, "handover", False):
            return Outcome(Ending.HANDED_ON, JobStatus.RUNNING, f"job {self.job.job_id} is handed on")
        return await self.job.end(JobStatus.CANCELLED, "cancelled by the user")


async def drive(store: JobStore, job_id: str, photos: list[bytes], opts: JobOptions, open_stream: OpenStream,
                settings: Settings, stop: asyncio.Event, resilience: Resilience | None = None,
                owner: str | None = None, turns: Turns | None = None) -> Outcome:
    """Run a stored job on the optimizer to its end and store its result; returns how driving it ended. ``photos``
    are the original uploads (decoded only when the result is rendered: a series of large photos is not held
    decoded while it is optimized).

    Starts from the job's last checkpoint in the store, if it has one (a job taken over from another replica).
    ``stop`` set ends it cancelled, or (a :class:`Stop` set for a handover) hands it on without a write; every
    write is fenced by ``owner``'s lease, so a replica that lost the job writes nothing more. With ``turns``, the
    job waits for its turn in the fair queue before each call of the optimizer.
    """
    job = Driven(store, job_id, owner)
    try:
        record = await job.read("get")
        job.client = record.client if record else ""
        stored = await job.read("input")
        if stored is None and record is not None and not record.done:
            return await job.end(JobStatus.FAILED, f"job {job_id} has no input in the job store")
        if stored is None:  # it has ended (another replica finished it)
            return Outcome.of(record, job_id)
        policy = resilience or Resilience.of(settings)
        request = await asyncio.to_thread(optimize_request, job_id, stored[1], opts, settings, policy.checkpoint_s)
        saved = await job.read("checkpoint")
        submitted = record.created if record else time.time()
        run = _Run(job, request, open_stream, policy, stop, Checkpoint.model_validate_json(saved) if saved else None,
                   submitted, turns)
        final = await run.until_final()
        if isinstance(final, Outcome):
            return final
        return await deliver(job, photos, opts, final, submitted, run.started, settings)
    except StoreLost as e:
        return Outcome(Ending.STORE_LOST, JobStatus.RUNNING, str(e))
