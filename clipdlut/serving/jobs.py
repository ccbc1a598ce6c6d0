"""A retouch job from the API's side: its options, admission, and its result as the API answers it.

The API service keeps the original bytes and a small working copy in its job store;
:mod:`clipdlut.serving.driver` sends the working copy to the optimizer; :mod:`clipdlut.serving.delivery` renders
the result.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from dataclasses import asdict, dataclass
from typing import cast

import numpy as np
import torch

from clipdlut.clients import ANYONE, Client
from clipdlut.cube import read_cube
from clipdlut.export import describe_look, lut_to_cube, safe_look
from clipdlut.formats import FORMATS, LutFormatName, convert
from clipdlut.hald import write_strip
from clipdlut.imaging import DecodedImage, encode_image, working_copy
from clipdlut.lut import to_table
from clipdlut.options import DEFAULT_LUT_SIZE, DEFAULT_SOURCE_PROMPT, DEFAULT_STEPS
from clipdlut.serving import usage
from clipdlut.serving.bundle import pack
from clipdlut.serving.errors import InputError, JobEnded, QueueFull, QuotaReached, StoreUnavailable, describe
from clipdlut.serving.settings import Settings
from clipdlut.serving.stores import Admission, JobRecord, JobStore, Quota, Refusal
from clipdlut.status import JobStatus
from clipdlut.table import MAX_STRENGTH, OFFERED_SIZES
from clipdlut.viewing import BUILTIN_CONFIG, LutKind, Viewing, displayed

log = logging.getLogger(__name__)
LUT_FILE = "lut"  # a finished job's optimized LUT as the optimizer returned it (float32, before any blend)
_OFFERED = ", ".join(map(str, OFFERED_SIZES))


async def check_capacity(store: JobStore, settings: Settings, client: Client = ANYONE) -> None:
    """Raise :class:`QueueFull` or :class:`QuotaReached` when no new job of ``client`` can be taken now: before its
    photos are decoded (:func:`accept` checks again, as the store inserts it)."""
    admission = await store.admission(settings.max_open_jobs, client.name, _quota(client))
    if not admission:
        raise _refusal(admission, client, settings)


@dataclass(kw_only=True)
class JobOptions:
    """What a user chooses for a job; stored with it and read back by the optimizer."""

    target_prompt: str
    source_prompt: str = DEFAULT_SOURCE_PROMPT
    steps: int = DEFAULT_STEPS
    lut_size: int = DEFAULT_LUT_SIZE
    strength: float = 1.0
    seed: int = 0
    image_format: str | None = "png"  # None: each photo's own (a JPEG stays a JPEG: DecodedImage.own_format)
    keep_blacks: bool = False
    keep_whites: bool = False
    protect_skin: bool = False
    mode: str = "color"
    photos: int = 1  # a series: one LUT for several photos
    reference: bool = False  # a reference photo gives the look (with or without a prompt)
    start_from: str | None = None  # refining: the task whose LUT the job starts from ("a .cube file" if uploaded)
    # footage (clipdlut/viewing.py): its colour space, display and view as resolved in the OCIO config; the LUT kind
    input_space: str | None = None
    display: str | None = None
    view: str | None = None
    ocio_config: str | None = None
    lut_kind: str = "display"

    def viewing(self) -> Viewing | None:
        """How the job's photos are viewed (None: photos, sRGB in and out)."""
        if self.input_space is None:
            return None
        return Viewing(self.input_space, self.display or "", self.view or "", self.ocio_config or BUILTIN_CONFIG)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> list[str]:
        """What the job was asked, for the comments of its ``.cube``."""
        return describe_look(self.target_prompt, self.source_prompt, reference=self.reference,
                             start_from=self.start_from, photos=self.photos, mode=self.mode)

    def cube(self, lut: torch.Tensor, model: str, strength: float | None = None, kind: LutKind | None = None) -> str:
        """The ``.cube`` text of the job's optimized ``lut`` at ``strength`` (the job's own when None), blended and
        made safe with the job's pins, for its footage as ``kind`` says (its own kind when None; ``"look"`` for a
        photo's LUT is the same as ``"display"``). ``kind="display"`` at strength 0 is footage's "before"."""
        strength = self.strength if strength is None else strength
        comments = [*self.describe(), f"model: {model}, steps: {self.steps}, seed: {self.seed}, strength: {strength}"]
        return lut_to_cube(lut, strength=strength, **self._pins(strength), viewing=self.viewing(),
                           kind=kind or cast(LutKind, self.lut_kind), title=(self.target_prompt or "CLIP-DLUT")[:64],
                           comments=comments)

    def look_table(self, lut: torch.Tensor) -> np.ndarray:
        """The look alone, on the display's encoding (a photo's: its returned table), where skin is measured."""
        return to_table(safe_look(lut, strength=self.strength, **self._pins(self.strength)))

    def _pins(self, strength: float) -> dict:
        """How the job's LUT is made safe and sized, as :func:`clipdlut.export.lut_to_cube` takes it."""
        return {"size": self.lut_size, "keep_blacks": self.keep_blacks, "keep_whites": self.keep_whites,
                "neutral": self.mode == "bw" and strength > 0, "protect_skin": self.protect_skin}


@dataclass
class Upload:
    """What a client sent for one job, checked: each photo's bytes and decoded image, the reference photo, and the
    ``.cube`` text of the LUT to start from."""

    photos: list[tuple[bytes, DecodedImage]]
    reference: DecodedImage | None = None
    start_cube: bytes | None = None

    @property
    def decoded(self) -> list[DecodedImage]:
        return [d for _, d in self.photos]


def photo_file(i: int) -> str:
    """The name of photo ``i`` of a job in its stored inputs."""
    return f"photo-{i}"


def image_file(i: int) -> str:
    """The name of graded photo ``i`` among a finished job's files."""
    return "image" if i == 0 else f"image-{i}"


REFERENCE_FILE, START_FILE = "reference", "start.cube"  # in a job's stored working inputs


async def accept(store: JobStore, job_id: str, upload: Upload, opts: JobOptions, settings: Settings,
                 owner: str, client: Client = ANYONE) -> None:
    """Record a new job of ``client`` leased to API replica ``owner`` with its original bytes and its working inputs
    (small copies of the photos and the reference, the LUT to start from), or raise :class:`QueueFull` (the
    service's bound) or :class:`QuotaReached` (the client's)."""
    def working() -> bytes:
        viewing = opts.viewing()  # (the optimizer grades what the display shows: the small copy, rendered)
        files = {photo_file(i): encode_image(displayed(working_copy(d.rgb, settings.working_size), viewing))
                 for i, d in enumerate(upload.decoded)}
        if upload.reference is not None:
            files[REFERENCE_FILE] = encode_image(working_copy(upload.reference.rgb, settings.working_size))
        if upload.start_cube is not None:
            files[START_FILE] = upload.start_cube
        return pack(files)

    source = pack({photo_file(i): data for i, (data, _) in enumerate(upload.photos)})
    admission = await store.create(job_id, opts.as_dict(), source, await asyncio.to_thread(working), owner=owner,
                                   max_open=settings.max_open_jobs, client=client.name, quota=_quota(client))
    if not admission:
        raise _refusal(admission, client, settings)
    usage.accepted(client.name)
    if settings.fair_share:
        await _join_fair_queue(store, job_id, client)


async def _join_fair_queue(store: JobStore, job_id: str, client: Client) -> None:
    """Queue an accepted job for an optimizer slot at once: BentoML starts its task only after the answer is sent,
    and a slot that frees before its driver first asks is already its client's turn. A store that fails here
    costs nothing lasting: the driver queues the job at its first turn."""
    try:
        await store.queue(job_id, client.name, client.weight)
    except StoreUnavailable as e:
        log.info("job %s joins the fair queue when its driver starts: %s", job_id, describe(e))


def _quota(client: Client) -> Quota:
    return Quota(client.max_open_jobs, client.jobs_per_hour)


def _refusal(admission: Admission, client: Client, settings: Settings) -> QueueFull | QuotaReached:
    """The 429 for a job the store refused, naming the bound."""
    if admission.refused == Refusal.CLIENT_OPEN:
        return QuotaReached(f"client {client.name} has {client.max_open_jobs} jobs queued or running, its quota "
                            f"(max_open_jobs); retry when one ends (in {settings.retry_after_s} s or so)",
                            settings.retry_after_s)
    if admission.refused == Refusal.CLIENT_HOURLY:
        wait = admission.retry_after_s or 0.0
        return QuotaReached(f"client {client.name} submitted {client.jobs_per_hour} jobs in the last hour, its quota "
                            f"(jobs_per_hour); retry in {max(1, math.ceil(wait))} s", wait)
    return QueueFull(settings.max_open_jobs, settings.retry_after_s)


async def stored_result(store: JobStore, job_id: str) -> dict | None:
    """A finished job's result as the native task returns it (None until it has finished)."""
    record = await store.get(job_id)
    if record is None or record.status != JobStatus.FINISHED or record.result is None:
        return None
    res, o = record.result, record.options
    photos = res.get("photos") or [{k: res.get(k) for k in ("media_type", "width", "height", "quality")}]
    cube = await store.file(job_id, "cube")
    images = [await store.file(job_id, image_file(i)) for i in range(len(photos))]
    if cube is None or any(image is None for image in images):
        return None
    encoded = await asyncio.to_thread(lambda: [base64.b64encode(image or b"").decode() for image in images])
    graded = [{**photo, "image": image} for photo, image in zip(photos, encoded)]
    return {"task_id": job_id, "cube": cube.decode("utf-8"), **graded[0],
            "images": graded if o.get("photos", 1) > 1 else [], "mode": o.get("mode", "color"),
            "input_space": o.get("input_space"), "lut_kind": o.get("lut_kind", "display"), "skin": res.get("skin"),
            "lut_size": o["lut_size"], "strength": o["strength"], "steps": o["steps"], "seed": o["seed"],
            "model": res["model"], "scores": res["scores"], "timings": res["timings"]}


async def lut_file(store: JobStore, job_id: str, size: int | None = None, fmt: str = "cube",
                   strength: float | None = None) -> tuple[bytes, str]:
    """A finished job's LUT in any of :data:`clipdlut.formats.FORMATS` (a ``.cube`` of any offered size, the
    formats OpenColorIO writes, a HaldCLUT PNG), or the original system's N x N^2 PNG strip: (bytes, media
    type). With ``strength``, the job's optimized LUT at that strength, blended and made safe exactly as the
    job's own ``.cube`` was (at the job's own strength: that ``.cube``, to the last byte)."""
    record = await store.get(job_id)
    cube = await store.file(job_id, "cube") if record and record.status == JobStatus.FINISHED else None
    if record is None or cube is None:
        raise JobEnded(record.status if record else JobStatus.FAILED, f"task {job_id} has no finished LUT")
    if fmt not in FORMATS and fmt != "strip":
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if size is not None and size not in OFFERED_SIZES:
        raise InputError(f"size must be one of {_OFFERED}, got {size}")
    if strength is not None:
        cube = await _reblended(store, record, strength)
    if fmt == "cube" and size is None:
        return cube, FORMATS["cube"].media_type
    if fmt == "strip":
        return await asyncio.to_thread(lambda: write_strip(read_cube(cube).table)), "image/png"
    # (tens of ms of CPU, a second for 65 nodes in OCIO's text formats: not on the event loop)
    name = cast(LutFormatName, fmt)
    protect = bool(record.options.get("protect_skin"))
    return await asyncio.to_thread(convert, cube, name, size, protect), FORMATS[name].media_type


async def _reblended(store: JobStore, record: JobRecord, strength: float) -> bytes:
    """A finished job's ``.cube`` at another strength, from its optimized LUT (:meth:`JobOptions.cube`)."""
    if not 0.0 <= strength <= MAX_STRENGTH:
        raise InputError(f"strength must be from 0 to {MAX_STRENGTH:g}, got {strength}")
    raw = await store.file(record.job_id, LUT_FILE)
    if raw is None or record.result is None or "lut_nodes" not in record.result:
        raise InputError(f"task {record.job_id} was finished by an older version that kept only its .cube: ask "
                         "without strength")
    n, model, opts = int(record.result["lut_nodes"]), str(record.result["model"]), JobOptions(**record.options)

    def write() -> bytes:
        lut = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(1, 3, n, n, n))
        return opts.cube(lut, model, strength).encode("utf-8")

    return await asyncio.to_thread(write)
