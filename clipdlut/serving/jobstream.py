"""The optimizer's side of a job: one request in, one stream of events out, for as long as the job runs.

The job joins the engine's running batch and reports through its stream; when the stream ends early
(the caller disconnected, or cancelled), the job is cancelled and leaves the batch at the next step. A
job that cannot be taken now (batch full) or cannot be run at all (bad request) raises before the first
event, so the HTTP layer can answer 503 or 400 instead of a stream.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import AsyncGenerator

from PIL import Image

from clipdlut.engine import Engine, Report
from clipdlut.optimizer import JobResult, JobSpec
from clipdlut.serving.wire import (
    Accepted,
    Beat,
    Checkpoint,
    Failed,
    Finished,
    OptimizeRequest,
    ProgressEvent,
    decode_tensor,
    encode_event,
    encode_tensor,
)
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)


class InvalidJob(ValueError):
    """The request cannot be run (undecodable working copy, unknown loss term, state that does not fit)."""


def _png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()
    return image.convert("RGB")


def job_spec(request: OptimizeRequest) -> JobSpec:
    """The optimizer's job from a request, or :class:`InvalidJob` naming what is wrong."""
    try:
        start = None
        if request.start is not None:
            m = request.start_size or 0
            start = decode_tensor(request.start, (1, 3, m, m, m))
        photos = [_png(p) for p in request.images]
        spec = JobSpec(request.job_id, photos[0] if len(photos) == 1 else photos, request.target_prompt,
                       request.source_prompt, steps=request.steps, lut_size=request.lut_size, lr=request.lr,
                       seed=request.seed, views=request.views, weights=request.loss_weights(),
                       progress_every=request.progress_every, preview=request.preview,
                       keep_blacks=request.keep_blacks, keep_whites=request.keep_whites,
                       protect_skin=request.protect_skin,
                       resume=request.resume.state(request.lut_size) if request.resume else None,
                       reference=_png(request.reference) if request.reference else None, start=start,
                       mode=request.mode)
        spec.validate()
    except Exception as e:
        raise InvalidJob(f"the job cannot be run: {e}") from None
    return spec


async def stream_job(engine: Engine, request: OptimizeRequest, model: str, beat_s: float = 5.0
                     ) -> AsyncGenerator[str, None]:
    """Run one job in ``engine``'s batch and yield its events as lines of JSON (see :mod:`clipdlut.serving.wire`).

    Raises :class:`InvalidJob` or :class:`clipdlut.engine.EngineFull` before the first event. A
    :class:`Beat` is sent whenever the stream has been quiet for ``beat_s``, so a caller can tell a slow
    step from a lost replica.
    """
    spec = job_spec(request)
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Report | JobResult] = asyncio.Queue()
    def hand_over(item: Report | JobResult) -> None:  # (called on the engine's thread)
        loop.call_soon_threadsafe(items.put_nowait, item)

    engine.submit(spec, hand_over, checkpoint_s=request.checkpoint_s)
    ended = False
    try:
        yield encode_event(Accepted(iteration=spec.resume.iteration if spec.resume else 0, model=model))
        while True:
            try:
                item = await asyncio.wait_for(items.get(), beat_s)
            except TimeoutError:
                yield encode_event(Beat())
                continue
            if isinstance(item, Report):
                p = item.progress
                yield encode_event(ProgressEvent(
                    iteration=p.iteration, total=p.total, loss=p.loss, terms=p.terms,
                    preview=base64.b64encode(item.preview_png).decode() if item.preview_png else None,
                    checkpoint=Checkpoint.of(item.state) if item.state is not None else None))
                continue
            ended = True
            yield encode_event(_last_event(item, model))
            return
    finally:
        if not ended:  # the caller went away (disconnect or cancel): no more steps for this job
            log.info("job %s: its caller went away; cancelling it", spec.job_id)
            engine.cancel(spec.job_id)


def _last_event(result: JobResult, model: str) -> Finished | Failed:
    if result.status == JobStatus.FINISHED and result.lut is not None and result.scores is not None:
        return Finished(iterations=result.iterations, seconds=result.seconds, lut=encode_tensor(result.lut),
                        lut_size=int(result.lut.shape[-1]), loss=result.loss, model=model, scores=result.scores)
    return Failed(iteration=result.iterations, error=result.error or f"the job ended {result.status}",
                  retryable=result.retryable)
