"""Checking what a client sends before anything is accepted: images, prompts, task ids and job options, each
refused with an :class:`~clipdlut.serving.errors.InputError` that says what to fix."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import uuid

from pydantic import ValidationError

from clipdlut import limits, skin
from clipdlut.clients import ANYONE, Client
from clipdlut.cube import CubeError, read_cube
from clipdlut.imaging import DecodedImage, ImageError, ImageTooLarge, decode_image, output_format
from clipdlut.serving.errors import InputError, PayloadTooLarge, ServiceFault, TaskNotFinished, UnknownTask
from clipdlut.serving.jobs import JobOptions, Upload, check_capacity
from clipdlut.serving.schemas import RetouchRequest
from clipdlut.serving.settings import Settings
from clipdlut.serving.stores import JobRecord, JobStore
from clipdlut.status import JobStatus
from clipdlut.table import MAX_STRENGTH, OFFERED_SIZES
from clipdlut.viewing import ConfigError, ViewingError, open_viewing

_OFFERED = ", ".join(map(str, OFFERED_SIZES))
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)


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
    """A prompt cleaned and checked by the one rule every interface applies (:func:`clipdlut.limits.clean_prompt`);
    :class:`InputError` otherwise."""
    try:
        return limits.clean_prompt(text, name, max_chars)
    except limits.LimitError as e:
        raise InputError(str(e)) from None


def check_task_id(task_id: str) -> str:
    """A task id as the service issues them (a UUID, with or without dashes), or :class:`InputError`."""
    try:
        uuid.UUID(task_id)
    except (ValueError, TypeError, AttributeError):
        raise InputError(f"task_id {str(task_id)[:64]!r} is not a task id; use the task_id the submit call returned"
                         ) from None
    return task_id


async def task_of(store: JobStore, task_id: str, client: Client, field: str = "") -> JobRecord:
    """The record of ``client``'s task ``task_id``. Another client's task is answered exactly as an id that does not
    exist (the same :class:`UnknownTask`, after the same one read): nothing tells a caller that an id exists."""
    record = await store.get(check_task_id(task_id))
    if record is None or record.client != client.name:
        where = f"{field}: " if field else ""
        raise UnknownTask(f"{where}no task with id {task_id!r}; task ids come from the submit response")
    return record


def check_strength(strength: float) -> float:
    """``strength`` if it is a blend the service offers, else :class:`InputError`."""
    if not 0.0 <= strength <= MAX_STRENGTH:
        raise InputError(f"strength must be from 0 to {MAX_STRENGTH:g}, got {strength}")
    return strength


def validate_options(opts: JobOptions, settings: Settings) -> JobOptions:
    """Options with prompts cleaned, or :class:`InputError` naming the field to fix."""
    if not 1 <= opts.steps <= settings.max_steps:
        raise InputError(f"steps must be from 1 to {settings.max_steps}, got {opts.steps}")
    if opts.lut_size not in OFFERED_SIZES:
        raise InputError(f"lut_size must be one of {_OFFERED}, got {opts.lut_size}")
    check_strength(opts.strength)
    try:
        output_format(opts.image_format or "png")
    except ValueError as e:
        raise InputError(str(e)) from None
    _check_viewing(opts, settings)
    if opts.protect_skin:
        try:
            skin.check(opts.mode, opts.display)
        except ValueError as e:
            raise InputError(str(e)) from None
    if opts.target_prompt or not opts.reference:  # (a reference photo may give the look alone)
        opts.target_prompt = clean_prompt(opts.target_prompt, "target_prompt", settings.max_prompt_chars)
    opts.source_prompt = clean_prompt(opts.source_prompt, "source_prompt", settings.max_prompt_chars)
    return opts


def _check_viewing(opts: JobOptions, settings: Settings) -> None:
    """Resolve a footage job's names in the OCIO config (defaults filled in), or :class:`InputError` saying what the
    config has."""
    if opts.input_space is None:
        if opts.display or opts.view or opts.lut_kind != "display":
            raise InputError("display, view and lut_kind are for footage: send input_space too")
        return
    try:
        v = open_viewing(opts.input_space, opts.display, opts.view, settings.ocio_config or None)
    except ConfigError as e:
        raise ServiceFault(str(e)) from None
    except ViewingError as e:
        raise InputError(str(e)) from None
    opts.input_space, opts.display, opts.view, opts.ocio_config = v.input_space, v.display, v.view, v.config


def decode_upload(data: bytes, settings: Settings) -> DecodedImage:
    """Decode an uploaded image within the pixel limit, or raise :class:`InputError`/:class:`PayloadTooLarge`."""
    if len(data) > settings.max_body_mb * 1024 * 1024:
        raise PayloadTooLarge(f"the image is {len(data) / 2**20:.1f} MB; the limit is {settings.max_body_mb:g} MB")
    try:
        return decode_image(data, settings.max_pixels)
    except ImageTooLarge as e:
        raise PayloadTooLarge(str(e)) from None
    except ImageError as e:
        raise InputError(str(e)) from None


def decode_photo(text: str, settings: Settings, name: str = "the photo") -> tuple[bytes, DecodedImage]:
    """A base64 photo to grade: its bytes and decoded image, within the limits of a photo to grade
    (:func:`clipdlut.limits.check_gradable`). Megabytes of work: call it on a worker thread."""
    data = b64decode_image(text)
    decoded = decode_upload(data, settings)
    try:
        limits.check_gradable(decoded.size, name)
    except limits.LimitError as e:
        raise InputError(str(e)) from None
    return data, decoded


async def start_cube(start_from: str, store: JobStore, client: Client = ANYONE) -> tuple[bytes, str]:
    """The ``.cube`` text a refining job starts from and how to name it: a finished task of ``client``'s LUT (by its
    id), or the text of a ``.cube`` file; :class:`InputError`, :class:`UnknownTask` or :class:`TaskNotFinished`
    otherwise."""
    text = start_from.strip()
    if "LUT_3D_SIZE" not in text.upper():
        try:
            check_task_id(text)
        except InputError:
            raise InputError("start_from is neither a task id nor the text of a 3D .cube file (no LUT_3D_SIZE line)"
                             ) from None
        record = await task_of(store, text, client, "start_from")
        cube = await store.file(text, "cube") if record.status == JobStatus.FINISHED else None
        if cube is None:
            raise TaskNotFinished(f"start_from: task {text} is {record.status}; refine a finished task")
        if record.options.get("input_space"):
            raise InputError(f"start_from: task {text} graded footage; its LUT maps {record.options['input_space']} "
                             "to a display, not a photo's look")
        return cube, f"task {text}"
    try:
        read_cube(text)
    except CubeError as e:
        raise InputError(f"start_from is neither a task id nor a readable .cube file: {e}") from None
    return text.encode("utf-8"), "a .cube file"


async def upload(request: RetouchRequest, store: JobStore, settings: Settings, client: Client = ANYONE
                 ) -> tuple[Upload, JobOptions]:
    """A native request's photos, reference and starting LUT (``client``'s) decoded and checked, with its
    options."""
    opts = validate_options(request.options(), settings)
    start = None
    if request.start_from is not None:  # (before the photos: the cheaper check)
        if opts.input_space is not None:
            raise InputError("start_from refines a photo's look; footage (input_space) starts from the identity")
        start, opts.start_from = await start_cube(request.start_from, store, client)

    async def decode(text: str, field: str) -> tuple[bytes, DecodedImage]:
        try:
            return await asyncio.to_thread(decode_photo, text, settings)
        except InputError as e:  # (which of the photos to fix)
            raise type(e)(f"{field}: {e}") from None

    named = ["image"] if request.images is None else [f"images[{i}]" for i in range(len(request.images))]
    photos = await asyncio.gather(*(decode(text, field) for text, field in zip(request.photos, named)))
    reference = None
    if request.reference_image is not None:
        reference = (await decode(request.reference_image, "reference_image"))[1]
    return Upload(list(photos), reference, start), opts


async def submission(body: bytes, store: JobStore, settings: Settings, client: Client = ANYONE
                     ) -> tuple[Upload, JobOptions]:
    """A native task's body checked before BentoML takes it (BentoML itself accepts anything): its upload and
    options; :class:`InputError` naming the field to fix, or ``QueueFull``."""
    try:
        parsed = RetouchRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{where}: {first['msg']}" if where else str(first["msg"]).removeprefix("Value error, ")
                         ) from None
    await check_capacity(store, settings, client)
    return await upload(parsed, store, settings, client)
