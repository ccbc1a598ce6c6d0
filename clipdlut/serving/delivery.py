"""A finished job's delivery, on the API: the ``.cube`` text written from the optimizer's exact LUT, each
full-resolution photo rendered from that text and measured, all stored at once with the scores and timings."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from clipdlut import skin
from clipdlut.cube import read_cube
from clipdlut.imaging import MEDIA_TYPES, encode_image, output_format
from clipdlut.quality import Quality, measure_grade
from clipdlut.render import apply_table
from clipdlut.serving import usage
from clipdlut.serving.driven import Driven, Ending, Outcome
from clipdlut.serving.jobs import LUT_FILE, JobOptions, image_file
from clipdlut.serving.settings import Settings
from clipdlut.serving.validation import decode_upload
from clipdlut.serving.wire import Finished, decode_tensor
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)
DISPLAY_LUT_NOTE = ("a display LUT: its steep places and dips are OpenColorIO's technical transform's (ACES 2.0 "
                    "compressing colours beyond a camera's gamut), kept exact; the look before it is safe")


@dataclass
class _Tables:
    """What a job's result is rendered with: the returned ``.cube`` text, the table its photos are graded by (the
    returned LUT; for a footage `look` LUT its `display` twin: photos are shown as the display shows them), the
    table their "before" is (footage: the plain technical conversion, the `display` LUT at strength 0), the
    returned table (its safety figures are the result's), and the look on the display's encoding (the returned
    table for photos: its skin figures are the result's)."""

    cube: str
    graded_by: np.ndarray
    before: np.ndarray | None
    figures: np.ndarray
    look: np.ndarray


def _tables(opts: JobOptions, lut: torch.Tensor, model: str) -> _Tables:
    def table(cube: str) -> np.ndarray:
        return read_cube(cube).normalized()

    cube = opts.cube(lut, model)
    returned = table(cube)
    if opts.input_space is None:
        return _Tables(cube, returned, None, returned, returned)
    graded_by = table(opts.cube(lut, model, kind="display")) if opts.lut_kind == "look" else returned
    return _Tables(cube, graded_by, table(opts.cube(lut, model, 0.0, "display")), returned,
                   opts.look_table(lut))


def _figures(quality: Quality, opts: JobOptions) -> Quality:
    """A footage `display` LUT's figures say where its steep places come from."""
    if opts.input_space is None or opts.lut_kind != "display" or quality.safe:
        return quality
    return dataclasses.replace(quality, note="; ".join(filter(None, [quality.note, DISPLAY_LUT_NOTE])))


def render(photos: list[bytes], opts: JobOptions, lut: torch.Tensor, model: str, settings: Settings
           ) -> tuple[str, list[tuple[bytes, dict]], dict]:
    """The ``.cube`` text, each photo graded by it with its summary, and the skin figures (blocking: 10 ms to
    seconds). Photos are rendered from the returned text, so a client's Pillow gets these pixels; one decoded photo
    in memory at a time."""
    tables = _tables(opts, lut, model)
    graded = []
    for data in photos:
        d = decode_upload(data, settings)
        fmt = output_format(opts.image_format or d.own_format)  # (by default each photo keeps its own format)
        out = apply_table(d.rgb, tables.graded_by)
        before = d.rgb if tables.before is None else apply_table(d.rgb, tables.before)
        graded.append((encode_image(out, fmt, **d.kept()),
                       {"media_type": MEDIA_TYPES[fmt], "width": d.size[0], "height": d.size[1],
                        "quality": _figures(measure_grade(before, out, tables.figures), opts).as_dict()}))
    return tables.cube, graded, {"protected": opts.protect_skin, **skin.figures(tables.look).as_dict()}


async def deliver(job: Driven, photos: list[bytes], opts: JobOptions, event: Finished, submitted: float,
                  started: float | None, settings: Settings) -> Outcome:
    """Render and store the result of a job whose last event came in; the job's outcome (the store's word if it
    ended meanwhile: a late cancel, or another replica finished it)."""
    t0 = time.time()
    n = event.lut_size
    lut = decode_tensor(event.lut, (1, 3, n, n, n))
    cube, graded, skin_figures = await asyncio.to_thread(render, photos, opts, lut, event.model, settings)
    done = time.time()
    started = started or t0 - event.seconds
    each = [summary for _, summary in graded]
    result: dict[str, Any] = {
        "cube_size": opts.lut_size, **each[0], "photos": each, "model": event.model, "scores": asdict(event.scores),
        "skin": skin_figures, "lut_nodes": n,
        "timings": {"queued_s": max(0.0, started - submitted), "optimize_s": max(0.0, t0 - started),
                    "render_s": done - t0, "total_s": done - submitted},
    }
    files = {"cube": cube.encode("utf-8"), LUT_FILE: base64.b64decode(event.lut),
             **{image_file(i): image for i, (image, _) in enumerate(graded)}}
    if not await job.write("finish", result, files):
        return await job.outcome()
    usage.ended(job.client, JobStatus.FINISHED)
    t = result["timings"]
    log.info("job %s finished: queued %.2f s, optimize %.2f s, render %.2f s, total %.2f s (%d photo(s), first "
             "%dx%d, %d steps)", job.job_id, t["queued_s"], t["optimize_s"], t["render_s"], t["total_s"], len(each),
             each[0]["width"], each[0]["height"], opts.steps)
    return Outcome(Ending.ENDED, JobStatus.FINISHED, result=result)
