"""A retouch job from the API's side: validate the client's input, accept the job, answer with its result.

The API service keeps the original bytes and a small working copy in its job store; :mod:`clipdlut.driver`
sends the working copy to the optimizer and renders the result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import unicodedata
import uuid
from dataclasses import asdict, dataclass

from clipdlut.cube import read_cube, write_cube
from clipdlut.hald import hald_level_for, write_hald
from clipdlut.imaging import DecodedImage, decode_image, encode_image, output_format, working_copy
from clipdlut.lut import OFFERED_SIZES, resample, to_table
from clipdlut.lut import from_table as table_to_lut
from clipdlut.optimizer import DEFAULT_SOURCE_PROMPT, DEFAULT_STEPS
from clipdlut.settings import Settings
from clipdlut.status import JobStatus
from clipdlut.store import JobStore

log = logging.getLogger(__name__)
_OFFERED = ", ".join(map(str, OFFERED_SIZES))
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)


class InputError(ValueError):
    """Bad input from a client: answered with a 4xx and this message."""

    status_code = 400


class PayloadTooLarge(InputError):
    status_code = 413


class QueueFull(InputError):
    """Too many open jobs: try again later (429 with ``Retry-After``)."""

    status_code = 429

    def __init__(self, max_open: int, retry_after_s: int):
        self.headers = {"Retry-After": str(retry_after_s)}
        super().__init__(f"the service has {max_open} jobs queued or running, its limit; "
                         f"retry in {retry_after_s} s")


async def check_capacity(store: JobStore, settings: Settings) -> None:
    """Raise :class:`QueueFull` when no new job can be taken now."""
    if await store.open_jobs() >= settings.max_open_jobs:
        raise QueueFull(settings.max_open_jobs, settings.retry_after_s)


class JobEnded(RuntimeError):
    """The job ended without a result (stopped or failed)."""

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(message)


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


def b64decode_image(text: str) -> bytes:
    """Bytes of a base64 image or ``data:image/...;base64,`` URL; raises :class:`InputError`."""
    text = text.strip()
    m = _DATA_URL.match(text)
    if m:
        media = (m.group(1) or "").lower()
        if media and not media.startswith("image/"):
            raise InputError(f"the data URL holds {media}, not an image; "
                             "send data:image/png;base64,... or plain base64")
        text = text[m.end():]
    elif text.startswith("data:"):
        raise InputError("a data URL must be base64-encoded: data:image/png;base64,...")
    text = re.sub(r"\s+", "", text)
    if not text:
        raise InputError("the image is empty")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the image is not valid base64 (characters A-Z a-z 0-9 + / =)") from None


def clean_prompt(text: str, name: str, max_chars: int) -> str:
    """A prompt with control characters removed and whitespace collapsed; raises if empty or too long."""
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    cleaned = " ".join(cleaned.split())
    if not cleaned:
        raise InputError(f"{name} is empty; describe the look in words, e.g. 温暖的金色黄昏")
    if len(cleaned) > max_chars:
        raise InputError(f"{name} has {len(cleaned)} characters; the limit is {max_chars}")
    if not any(ch.isalnum() for ch in cleaned):
        raise InputError(f"{name} has no words (only symbols or emoji); describe the look in words")
    return cleaned


def check_task_id(task_id: str) -> str:
    """A task id as the service issues them (a UUID, with or without dashes), or :class:`InputError`."""
    try:
        uuid.UUID(task_id)
    except (ValueError, TypeError, AttributeError):
        raise InputError(f"task_id {str(task_id)[:64]!r} is not a task id; use the task_id the submit call returned"
                         ) from None
    return task_id


def validate_options(opts: JobOptions, settings: Settings) -> JobOptions:
    """Options with prompts cleaned, or :class:`InputError` naming the field to fix."""
    if not 1 <= opts.steps <= settings.max_steps:
        raise InputError(f"steps must be from 1 to {settings.max_steps}, got {opts.steps}")
    if opts.lut_size not in OFFERED_SIZES:
        raise InputError(f"lut_size must be one of {_OFFERED}, got {opts.lut_size}")
    if not 0.0 <= opts.strength <= 2.0:
        raise InputError(f"strength must be from 0 to 2, got {opts.strength}")
    try:
        output_format(opts.image_format)
    except ValueError as e:
        raise InputError(str(e)) from None
    opts.target_prompt = clean_prompt(opts.target_prompt, "target_prompt", settings.max_prompt_chars)
    opts.source_prompt = clean_prompt(opts.source_prompt, "source_prompt", settings.max_prompt_chars)
    return opts


def decode_upload(data: bytes, settings: Settings) -> DecodedImage:
    """Decode an uploaded image within the pixel limit, or raise :class:`InputError`/:class:`PayloadTooLarge`."""
    from clipdlut.imaging import ImageError, ImageTooLarge

    if len(data) > settings.max_body_mb * 1024 * 1024:
        raise PayloadTooLarge(f"the image is {len(data) / 2**20:.1f} MB; the limit is {settings.max_body_mb:g} MB")
    try:
        return decode_image(data, settings.max_pixels)
    except ImageTooLarge as e:
        raise PayloadTooLarge(str(e)) from None
    except ImageError as e:
        raise InputError(str(e)) from None


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
    """A finished job's LUT as a ``.cube`` of another size or as a HaldCLUT PNG: (bytes, media type)."""
    record = await store.get(job_id)
    cube = await store.file(job_id, "cube") if record and record.status == JobStatus.FINISHED else None
    if cube is None:
        raise JobEnded(record.status if record else JobStatus.FAILED, f"task {job_id} has no finished LUT")
    if fmt not in ("cube", "hald"):
        raise InputError(f"format must be cube or hald, got {fmt!r}")
    if size is not None and size not in OFFERED_SIZES:
        raise InputError(f"size must be one of {_OFFERED}, got {size}")
    parsed = read_cube(cube)
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
