"""The API's side of a job: send it to the optimizer, follow its stream into the job store, render the result.

Each job is one streamed call to the optimizer service. Events become progress and previews in the job
store; the last one carries the exact LUT, from which the ``.cube`` text is written and the
full-resolution image rendered here (the original never travels to the optimizer).

When the optimizer cannot take the job (its batch is full, it is restarting, no replica is up) the job
waits with backoff, up to ``max_wait_s``. When a stream breaks after the job was taken (a replica killed
or restarted, a connection dropped, a replica silent for ``stall_s``), the job is sent again and the
router picks a live replica; it resumes from the last state its events carried, or starts over with the
same seed. After ``attempts`` broken streams it fails with a reason that says so. Closing the stream is
how a cancel reaches whichever replica runs the job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass

from clipdlut.cube import lut_to_cube
from clipdlut.engine import EngineFull
from clipdlut.imaging import MEDIA_TYPES, DecodedImage, encode_image, output_format
from clipdlut.jobs import JobEnded, JobOptions
from clipdlut.jobstream import InvalidJob
from clipdlut.render import render
from clipdlut.settings import Settings
from clipdlut.store import CANCELLED, FAILED, RUNNING, JobStore
from clipdlut.wire import (
    Accepted,
    Beat,
    Checkpoint,
    Failed,
    Finished,
    OptimizeRequest,
    ProgressEvent,
    decode_tensor,
    read_events,
)

log = logging.getLogger(__name__)
OpenStream = Callable[[OptimizeRequest], AsyncIterable[str]]  # one call to the optimizer's ``optimize``
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
    """The user cancelled the job."""


class _Lost(Exception):
    """The stream broke after the optimizer took the job (or the replica failed it for a reason of its own)."""


class _StoreFailed(Exception):
    """The API's own job store failed: not the optimizer's doing, so nothing to send again."""


async def _record(write: Callable, *args) -> None:
    """A job store write, off the event loop; its failure is :class:`_StoreFailed`."""
    try:
        await asyncio.to_thread(write, *args)
    except Exception as e:
        raise _StoreFailed(f"{type(e).__name__}: {e}") from e


def optimize_request(job_id: str, working_png: bytes, opts: JobOptions, settings: Settings,
                     checkpoint_s: float | None) -> OptimizeRequest:
    """The optimizer's request for a stored job: its working copy, the user's options, the service's settings."""
    return OptimizeRequest(job_id=job_id, image=base64.b64encode(working_png).decode(),
                           target_prompt=opts.target_prompt, source_prompt=opts.source_prompt, steps=opts.steps,
                           lut_size=opts.lut_size, seed=opts.seed, views=settings.views,
                           progress_every=settings.progress_every, preview=True, checkpoint_s=checkpoint_s)


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


async def drive(store: JobStore, job_id: str, decoded: DecodedImage, opts: JobOptions, open_stream: OpenStream,
                settings: Settings, stop: asyncio.Event, resilience: Resilience | None = None) -> dict:
    """Run a stored job on the optimizer to its end and store its result; returns the result summary.

    Raises :class:`JobEnded` when the job was cancelled (``stop`` set) or failed; the store says which and why.
    """
    policy = resilience or Resilience.of(settings)
    record = store.get(job_id)
    submitted = record.created if record else time.time()
    stored = store.input(job_id)
    if stored is None:
        raise _end(store, job_id, FAILED, f"job {job_id} has no input in the job store")
    request = optimize_request(job_id, stored[1], opts, settings, policy.checkpoint_s)
    checkpoint: Checkpoint | None = None
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
                        await _record(store.set_status, job_id, RUNNING)
                        if event.iteration:
                            log.info("job %s resumed at iteration %d", job_id, event.iteration)
                    elif isinstance(event, ProgressEvent):
                        preview = base64.b64decode(event.preview) if event.preview else None
                        await _record(store.progress, job_id, event.iteration, event.total, event.loss, event.terms,
                                      preview)
                        if event.checkpoint is not None and event.checkpoint.iteration < event.total:
                            checkpoint = event.checkpoint
                    elif isinstance(event, Finished):
                        final = event
                    elif isinstance(event, Failed) and event.retryable:
                        raise _Lost(f"the replica failed the job: {event.error}")
                    elif isinstance(event, Failed):
                        raise _end(store, job_id, FAILED, event.error)
                    elif not isinstance(event, Beat):
                        raise _Lost(f"unexpected event {event!r}")
            except (_Stopped, JobEnded):
                raise
            except InvalidJob as e:
                raise _end(store, job_id, FAILED, str(e)) from None
            except _StoreFailed as e:
                raise _end(store, job_id, FAILED, f"the job store failed: {e}") from None
            except Exception as e:
                reason = f"{type(e).__name__}: {e}".strip().rstrip(":")
                if taken or isinstance(e, _Lost):
                    lost += 1
                    if lost >= policy.attempts:
                        raise _end(store, job_id, FAILED, f"the optimizer was lost {lost} times while running this "
                                   f"job (last: {reason}); submit it again") from None
                    log.warning("job %s: the optimizer's stream broke (%s); sending it again (%d of %d), %s",
                                job_id, reason, lost + 1, policy.attempts,
                                f"resuming at iteration {checkpoint.iteration}" if checkpoint else "from the start")
                    waiting_since = time.monotonic()
                elif not _busy(e):
                    raise _end(store, job_id, FAILED, f"the optimizer refused the job: {reason}") from None
                elif time.monotonic() - waiting_since > policy.max_wait_s:
                    raise _end(store, job_id, FAILED, f"no optimizer could take the job within "
                               f"{policy.max_wait_s:g} s (last: {reason}); submit it again") from None
                else:
                    log.debug("job %s waits for an optimizer: %s", job_id, reason)
            finally:
                await _close(events, raw)
            if final is not None:  # (rendering is the API's own work: nothing to send again if it fails)
                return await _finish(store, job_id, decoded, opts, final, submitted, started)
            await _wait(backoff * random.uniform(0.5, 1.0), stop)
            backoff = min(backoff * 2, policy.max_backoff_s)
    except _Stopped:
        raise _end(store, job_id, CANCELLED, "cancelled by the user") from None


async def _close(*streams: object) -> None:
    """Close a job's streams now (closing the HTTP response is what tells the replica to stop the job)."""
    for stream in streams:
        if (aclose := getattr(stream, "aclose", None)) is not None:
            with contextlib.suppress(BaseException):
                await aclose()


def _end(store: JobStore, job_id: str, status: str, reason: str) -> JobEnded:
    log.info("job %s ended %s: %s", job_id, status, reason)
    store.set_status(job_id, status, reason)
    return JobEnded(status, reason)


async def _finish(store: JobStore, job_id: str, decoded: DecodedImage, opts: JobOptions, event: Finished,
                  submitted: float, started: float | None) -> dict:
    """Write the ``.cube`` text, render the full-resolution image from it, and store both with the scores."""
    t0 = time.time()
    n = event.lut_size
    comments = [f"prompt: {opts.target_prompt}", f"source prompt: {opts.source_prompt}",
                f"model: {event.model}, steps: {opts.steps}, seed: {opts.seed}, strength: {opts.strength}"]
    cube = lut_to_cube(decode_tensor(event.lut, (1, 3, n, n, n)), strength=opts.strength, size=opts.lut_size,
                       title=opts.target_prompt[:64], comments=comments)
    fmt = output_format(opts.image_format)
    image = await asyncio.to_thread(lambda: encode_image(render(decoded, cube), fmt, decoded.alpha,
                                                         decoded.icc_profile))
    done = time.time()
    started = started or t0 - event.seconds
    result = {
        "cube_size": opts.lut_size, "media_type": MEDIA_TYPES[fmt], "width": decoded.size[0],
        "height": decoded.size[1], "model": event.model, "scores": event.scores.model_dump(),
        "timings": {"queued_s": max(0.0, started - submitted), "optimize_s": max(0.0, t0 - started),
                    "render_s": done - t0, "total_s": done - submitted},
    }
    await asyncio.to_thread(store.finish, job_id, result, {"cube": cube.encode("utf-8"), "image": image})
    t = result["timings"]
    log.info("job %s finished: queued %.2f s, optimize %.2f s, render %.2f s, total %.2f s (%dx%d, %d steps)",
             job_id, t["queued_s"], t["optimize_s"], t["render_s"], t["total_s"], decoded.size[0], decoded.size[1],
             opts.steps)
    return result


class Drivers:
    """The jobs this API process drives, and the cancels that reach them from any process through the store."""

    def __init__(self, store: JobStore, open_stream: OpenStream, settings: Settings, poll_s: float = 0.1):
        self.store = store
        self.open_stream = open_stream
        self.settings = settings
        self.poll_s = poll_s
        self._stops: dict[str, asyncio.Event] = {}

    async def run(self, job_id: str, decoded: DecodedImage, opts: JobOptions) -> dict:
        """Drive one job to its end (see :func:`drive`)."""
        stop = self._stops[job_id] = asyncio.Event()
        try:
            return await drive(self.store, job_id, decoded, opts, self.open_stream, self.settings, stop)
        except JobEnded:
            raise
        except Exception as e:  # a bug or a failing store: the job must still end, with a reason
            log.exception("job %s failed", job_id)
            raise _end(self.store, job_id, FAILED, f"internal error: {type(e).__name__}: {e}") from None
        finally:
            self._stops.pop(job_id, None)

    async def watch_cancels(self) -> None:
        """Forever: stop the jobs driven here whose cancel was requested (on any replica)."""
        while True:
            await asyncio.sleep(self.poll_s)
            if not self._stops:
                continue
            try:
                requested = await asyncio.to_thread(self.store.cancel_requested, list(self._stops))
            except Exception:
                log.exception("reading cancel requests failed")
                continue
            for job_id in requested:
                if (stop := self._stops.get(job_id)) is not None:
                    stop.set()
