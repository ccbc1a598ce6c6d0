"""A finished job's delivery, on the API: the ``.cube`` text written from the optimizer's exact LUT, each
full-resolution photo rendered from that text and measured, all stored at once with the scores and timings."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

from clipdlut.cube import read_cube
from clipdlut.export import lut_to_cube
from clipdlut.imaging import MEDIA_TYPES, encode_image, output_format
from clipdlut.quality import measure_grade
from clipdlut.render import apply_table
from clipdlut.serving.driven import Driven, Ending, Outcome
from clipdlut.serving.jobs import JobOptions, image_file
from clipdlut.serving.settings import Settings
from clipdlut.serving.validation import decode_upload
from clipdlut.serving.wire import Finished, decode_tensor
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)


def render(photos: list[bytes], opts: JobOptions, event: Finished, settings: Settings
           ) -> tuple[str, list[tuple[bytes, dict]]]:
    """The ``.cube`` text, and each photo graded by it with its summary (blocking: 10 ms to seconds). Photos are
    rendered from the returned text, so a client's Pillow gets these pixels; one decoded photo in memory at a time."""
    n = event.lut_size
    comments = [*opts.describe(),
                f"model: {event.model}, steps: {opts.steps}, seed: {opts.seed}, strength: {opts.strength}"]
    cube = lut_to_cube(decode_tensor(event.lut, (1, 3, n, n, n)), strength=opts.strength, size=opts.lut_size,
                       keep_blacks=opts.keep_blacks, keep_whites=opts.keep_whites, neutral=opts.mode == "bw",
                       title=(opts.target_prompt or "CLIP-DLUT")[:64], comments=comments)
    table = read_cube(cube).normalized()
    fmt = output_format(opts.image_format)
    graded = []
    for data in photos:
        d = decode_upload(data, settings)
        out = apply_table(d.rgb, table)
        graded.append((encode_image(out, fmt, d.alpha, d.icc_profile),
                       {"media_type": MEDIA_TYPES[fmt], "width": d.size[0], "height": d.size[1],
                        "quality": measure_grade(d.rgb, out, table).as_dict()}))
    return cube, graded


async def deliver(job: Driven, photos: list[bytes], opts: JobOptions, event: Finished, submitted: float,
                  started: float | None, settings: Settings) -> Outcome:
    """Render and store the result of a job whose last event came in; the job's outcome (the store's word if it
    ended meanwhile: a late cancel, or another replica finished it)."""
    t0 = time.time()
    cube, graded = await asyncio.to_thread(render, photos, opts, event, settings)
    done = time.time()
    started = started or t0 - event.seconds
    each = [summary for _, summary in graded]
    result: dict[str, Any] = {
        "cube_size": opts.lut_size, **each[0], "photos": each, "model": event.model, "scores": asdict(event.scores),
        "timings": {"queued_s": max(0.0, started - submitted), "optimize_s": max(0.0, t0 - started),
                    "render_s": done - t0, "total_s": done - submitted},
    }
    files = {"cube": cube.encode("utf-8"), **{image_file(i): image for i, (image, _) in enumerate(graded)}}
    if not await job.write("finish", result, files):
        return await job.outcome()
    t = result["timings"]
    log.info("job %s finished: queued %.2f s, optimize %.2f s, render %.2f s, total %.2f s (%d photo(s), first "
             "%dx%d, %d steps)", job.job_id, t["queued_s"], t["optimize_s"], t["render_s"], t["total_s"], len(each),
             each[0]["width"], each[0]["height"], opts.steps)
    return Outcome(Ending.ENDED, JobStatus.FINISHED, result=result)
