"""A retouch job from the API's side: its options, admission, and its result as the API answers it.

The API service keeps the original bytes and a small working copy in its job store;
:mod:`clipdlut.serving.driver` sends the working copy to the optimizer and renders the result.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import asdict, dataclass

from clipdlut.cube import read_cube, write_cube
from clipdlut.hald import hald_level_for, write_hald, write_strip
from clipdlut.imaging import DecodedImage, encode_image, working_copy
from clipdlut.lut import from_table as table_to_lut
from clipdlut.lut import resample, to_table
from clipdlut.optimizer import DEFAULT_SOURCE_PROMPT, DEFAULT_STEPS
from clipdlut.serving.errors import InputError, JobEnded, QueueFull
from clipdlut.serving.settings import Settings
from clipdlut.serving.store import JobStore
from clipdlut.status import JobStatus
from clipdlut.table import OFFERED_SIZES

log = logging.getLogger(__name__)
_OFFERED = ", ".join(map(str, OFFERED_SIZES))


async def check_capacity(store: JobStore, settings: Settings) -> None:
    """Raise :class:`QueueFull` when no new job can be taken now."""
    if await store.open_jobs() >= settings.max_open_jobs:
        raise QueueFull(settings.max_open_jobs, settings.retry_after_s)


@dataclass
class JobOptions:
    """What a user chooses for a job; stored with it and read back by the optimizer."""

    target_prompt: str
    source_prompt: str = DEFAULT_SOURCE_PROMPT
    steps: int = DEFAULT_STEPS
    lut_size: int = 33
    strength: float = 1.0
    seed: int = 0
    image_format: str = "png"
    keep_blacks: bool = False
    keep_whites: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


async def accept(store: JobStore, job_id: str, data: bytes, decoded: DecodedImage, opts: JobOptions,
                 settings: Settings, owner: str) -> None:
    """Record a new job leased to API replica ``owner`` with its original bytes and its working copy, or
    raise :class:`QueueFull`."""
    working = await asyncio.to_thread(lambda: encode_image(working_copy(decoded.rgb, settings.working_size)))
    if not await store.create(job_id, opts.as_dict(), data, working, owner=owner, max_open=settings.max_open_jobs):
        raise QueueFull(settings.max_open_jobs, settings.retry_after_s)


async def stored_result(store: JobStore, job_id: str) -> dict | None:
    """A finished job's result as the native task returns it (None until it has finished)."""
    record = await store.get(job_id)
    if record is None or record.status != JobStatus.FINISHED or record.result is None:
        return None
    res, o = record.result, record.options
    cube, image = await store.file(job_id, "cube"), await store.file(job_id, "image")
    if cube is None or image is None:
        return None
    return {"task_id": job_id, "cube": cube.decode("utf-8"), "image": base64.b64encode(image).decode(),
            "media_type": res["media_type"], "width": res["width"], "height": res["height"],
            "lut_size": o["lut_size"], "strength": o["strength"], "steps": o["steps"], "seed": o["seed"],
            "model": res["model"], "scores": res["scores"], "quality": res.get("quality"),
            "timings": res["timings"]}


async def lut_file(store: JobStore, job_id: str, size: int | None = None, fmt: str = "cube"
                   ) -> tuple[bytes, str]:
    """A finished job's LUT as a ``.cube`` of another size, a HaldCLUT PNG, or the original system's N x N^2 PNG
    strip: (bytes, media type)."""
    record = await store.get(job_id)
    cube = await store.file(job_id, "cube") if record and record.status == JobStatus.FINISHED else None
    if cube is None:
        raise JobEnded(record.status if record else JobStatus.FAILED, f"task {job_id} has no finished LUT")
    if fmt not in ("cube", "hald", "strip"):
        raise InputError(f"format must be cube or hald, got {fmt!r}")
    if size is not None and size not in OFFERED_SIZES:
        raise InputError(f"size must be one of {_OFFERED}, got {size}")
    parsed = read_cube(cube)
    if fmt == "strip":
        return write_strip(parsed.table), "image/png"
    lut = table_to_lut(parsed.normalized())
    if fmt == "hald":
        side = hald_level_for(parsed.size) ** 2
        return write_hald(to_table(resample(lut, side))), "image/png"
    if size is None or size == parsed.size:
        return cube, "text/plain"
    comments = [line[2:] for line in cube.decode("utf-8").splitlines() if line.startswith("# ")]
    text = write_cube(to_table(resample(lut, size)), title=parsed.title or "CLIP-DLUT",
                      comments=comments + [f"resampled from {parsed.size} to {size} nodes"])
    return text.encode("utf-8"), "text/plain"
