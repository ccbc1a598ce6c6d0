"""CLIP-DLUT on BentoML: an API service (CPU) in front of an optimizer service (GPU).

``bentoml serve service:Retouch`` starts both. HTTP shapes and wiring only: the work is in ``clipdlut``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import signal
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import cast

import bentoml
import prometheus_client
import torch
from bentoml.exceptions import BadInput, ServiceUnavailable
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.staticfiles import StaticFiles

from clipdlut import formats, limits, viewing
from clipdlut.clients import ANYONE, Client, Registry
from clipdlut.engine import Engine, EngineFull
from clipdlut.formats import LutFormatName
from clipdlut.guidance import Guide
from clipdlut.models import load_model
from clipdlut.serving import bentoml_internals, concepts, container, jobs, logs, memory, modelstore, remote, validation
from clipdlut.serving.apply import apply_upload
from clipdlut.serving.drivers import Drivers, HandedOver, new_instance
from clipdlut.serving.errors import (
    InputError,
    JobEnded,
    ServiceFault,
    ShuttingDown,
    TaskNotFinished,
    answers_errors,
)
from clipdlut.serving.http import (
    Answered,
    Authenticate,
    BodyLimit,
    ClearErrors,
    FormCheck,
    JsonBodies,
    Landing,
    ReadyReason,
    TaskGate,
    client_of,
)
from clipdlut.serving.jobs import JobOptions
from clipdlut.serving.jobstream import InvalidJob, stream_job
from clipdlut.serving.readiness import Readiness
from clipdlut.serving.schemas import (
    CancelResponse,
    Concepts,
    ConceptScores,
    Footage,
    ImageFormat,
    LegacyQueryRequest,
    LegacyRetouchRequest,
    LegacyStopRequest,
    LegacyStopResponse,
    LegacyTask,
    Limits,
    LutFormatInfo,
    LutSize,
    ProgressResponse,
    RetouchRequest,
    RetouchResult,
)
from clipdlut.serving.settings import load_settings
from clipdlut.serving.stores import JobStore, open_store
from clipdlut.serving.wire import OptimizeRequest, OptimizerHealth
from clipdlut.status import JobStatus
from clipdlut.table import MAX_STRENGTH, OFFERED_SIZES
from clipdlut.tensors import to_tensor

log = logging.getLogger("clipdlut")
log.setLevel(logging.INFO)  # job outcomes and lost streams reach the server log (BentoML sets the root to WARNING)
logs.install()  # a client's mistake is one INFO line, without traceback or payload
bentoml_internals.install()  # request timers that end with their request (BentoML's outlive it by an hour)
memory.limit_arenas()  # two malloc arenas for the worker threads: memory bounded by the jobs in flight
S = load_settings()
TASK_ROUTE = "/v1/retouch"
APPLY_ROUTE = "/v1/apply"
MULTIPART_ROUTES = (APPLY_ROUTE,)  # every other route with a body takes JSON
BATCH_JOBS = prometheus_client.Histogram(
    "clipdlut_optimizer_batch_jobs", "jobs advanced together by one optimizer step",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))
# The container image (README, Deployment): CLIPDLUT_IMAGE_VARIANT (gpu, cpu) and CLIPDLUT_BASE_IMAGE at build time
IMAGE = container.image(S.image_variant, S.base_image)
READINESS = Readiness()  # this API process's view of its store and optimizer, kept current by start_background
CLIENTS = Registry(Path(S.clients) if S.clients else None, S.api_key)  # who may call (README, Clients)
if S.legacy_client and (not S.clients or CLIENTS.named(S.legacy_client) is None):  # (a client of its own)
    raise ValueError(f"CLIPDLUT_LEGACY_CLIENT={S.legacy_client} names no client of CLIPDLUT_CLIENTS")


@bentoml.service(
    name="clipdlut-optimizer",
    resources={"gpu": 1, "gpu_type": S.gpu_type},
    workers=1,
    # an autoscaler reads in-flight requests per replica: one streamed call per running job, so concurrency
    # is what one batch holds (BentoML's rule for continuous batching)
    traffic={"timeout": S.job_timeout_s, "concurrency": S.max_batch_size},
    # callers keep one connection pool: BentoML's default renews it every 100 calls, cutting open job streams
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class Optimizer:
    """Owns the CLIP model; runs every job in one continuously refilled batch. Keeps no state between calls."""

    weights = modelstore.reference(S.clip_model)  # packaged into the Bento when imported into the store

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.guide: Guide | None = None
        self.reason = f"loading the CLIP model {S.clip_model}"
        threading.Thread(target=self._load, name="clipdlut-load", daemon=True).start()

    def _load(self) -> None:
        try:
            checkpoint = modelstore.stored_checkpoint(type(self).weights)
            self.guide = Guide(load_model(str(checkpoint or S.clip_model), device=S.device or None))
            self.engine = Engine(self.guide, capacity=S.max_batch_size, on_step=BATCH_JOBS.observe,
                                 job_timeout_s=S.job_timeout_s)
        except Exception as e:
            self.reason = f"the CLIP model could not be loaded: {e}"
            log.error(self.reason)

    def __is_ready__(self) -> bool:
        return self.engine is not None

    @bentoml.on_shutdown
    def stop_engine(self) -> None:
        """End the jobs still running here (retryable: their callers send them to another replica)."""
        if self.engine is not None:
            self.engine.stop()

    async def _guide(self) -> Guide:
        """The loaded model; waits while it loads, so calls sent early wait instead of failing."""
        while self.guide is None and self.engine is None and self.reason.startswith("loading"):
            await asyncio.sleep(0.1)
        if self.guide is None:
            raise ServiceUnavailable(self.reason)
        return self.guide

    @bentoml.api
    async def health(self) -> OptimizerHealth:
        """Whether this replica can take jobs (and why not), with its running jobs and capacity."""
        if self.engine is None or self.guide is None:
            return OptimizerHealth(ready=False, reason=self.reason)
        return OptimizerHealth(ready=True, model=self.guide.name, running=self.engine.running,
                               capacity=self.engine.capacity)

    @bentoml.api
    async def optimize(self, job: OptimizeRequest) -> AsyncGenerator[str, None]:
        """Run one job in the running batch; streams its events (newline-delimited JSON, clipdlut.serving.wire)
        until it ends. 503 when the batch is full or the model not loaded, 400 when the job cannot run.
        Disconnect to cancel: the job leaves the batch at the next step."""
        if self.engine is None or self.guide is None:
            raise ServiceUnavailable(self.reason)
        async with contextlib.aclosing(stream_job(self.engine, job, self.guide.name, S.stream_beat_s)) as events:
            try:
                first = await anext(events)  # before the response starts, so these become HTTP statuses
            except EngineFull as e:
                raise ServiceUnavailable(str(e)) from None
            except InvalidJob as e:
                raise BadInput(str(e)) from None
            yield first
            async for line in events:
                yield line

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    async def embed_text(self, prompts: list[str]) -> list[list[float]]:
        """Unit-norm, template-averaged text embeddings."""
        guide = await self._guide()
        return (await asyncio.to_thread(guide.encode_text, prompts)).cpu().tolist()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    async def embed_image(self, images: list[str]) -> list[list[float]]:
        """Unit-norm image embeddings of base64 PNG images."""
        guide = await self._guide()

        def run() -> list[list[float]]:
            pixels = torch.cat([guide.preprocess(to_tensor(concepts.open_png(b)).unsqueeze(0).to(guide.device))
                                for b in images])
            with torch.no_grad():
                return guide.encode_pixels(pixels).cpu().tolist()

        return await asyncio.to_thread(run)


@bentoml.service(name="clipdlut", image=IMAGE, traffic={"timeout": S.job_timeout_s + 120},
                 envs=[{"name": "CLIPDLUT_CLIP_MODEL", "value": S.clip_model}, *container.TLS_ENVS,
                       *container.MEMORY_ENVS])
class Retouch:
    """The public API: native tasks, the original system's API, LUT application and CLIP utilities."""

    # one setting splits the deployment: an optimizer served elsewhere, or one started with the API
    optimizer = bentoml.depends(url=S.optimizer_url, on=Optimizer) if S.optimizer_url else bentoml.depends(Optimizer)

    def __init__(self) -> None:
        self.store = _store()
        self.drivers = Drivers(self.store, lambda request: remote.stream(self.optimizer, "optimize", job=request), S,
                               instance=_instance(), weight_of=lambda name: (CLIENTS.named(name) or ANYONE).weight)
        self._background: set[asyncio.Task] = set()

    @bentoml.on_startup
    async def start_background(self) -> None:
        """Keep readiness current; let cancels reach the jobs this process drives; keep its leases and take over
        the jobs of replicas that stopped."""
        self._spawn(READINESS.follow_store(self.store.ping))
        if S.ready_needs_optimizer:
            self._spawn(READINESS.follow(lambda: self.optimizer.health()))  # (endpoints exist after startup)
        else:  # jobs wait for an optimizer (BentoCloud's external queue wakes one); probing would keep it awake
            READINESS.update(OptimizerHealth(ready=True))
        self._spawn(self.drivers.watch())
        self._spawn(memory.trim_every())
        self.drivers.shutdown_on(signal.SIGTERM)

    @bentoml.on_shutdown
    async def stop_background(self) -> None:
        """Hand this process's jobs on (a restarted or another replica drives them on at once)."""
        await self.drivers.shutdown()
        for task in list(self._background):
            task.cancel()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- shared job machinery -------------------------------------------------------------------

    async def _accept(self, job_id: str, upload: jobs.Upload, opts: JobOptions, client: Client
                      ) -> tuple[list[bytes], JobOptions]:
        """Record a checked upload as ``client``'s job; what driving it needs (the photos' bytes: the decoded
        photos are let go, and decoded again to render the result)."""
        await jobs.accept(self.store, job_id, upload, opts, S, owner=_instance(), client=client)
        return [data for data, _ in upload.photos], opts

    async def _record(self, task_id: str, ctx: bentoml.Context):
        """The caller's task (another client's is answered as an unknown id)."""
        return await validation.task_of(self.store, task_id, client_of(ctx.request.scope))

    # -- native task API ---------------------------------------------------------------------------

    @bentoml.task(route=TASK_ROUTE)
    @answers_errors
    async def retouch(self, request: RetouchRequest, /, ctx: bentoml.Context) -> RetouchResult:
        """Grade a photo, or a series with one LUT, toward a prompt and/or a reference photo (from scratch or refining
        a LUT; colour or black and white); returns the .cube, the full-resolution images and scores."""
        # a task was recorded at submit (TaskGate); a plain POST to the route runs it synchronously under a new id
        job_id = getattr(ctx.request.state, "task_id", None)
        try:
            if job_id is not None:
                await self.drivers.run_stored(job_id)
            else:
                job_id, client = uuid.uuid4().hex, client_of(ctx.request.scope)
                await jobs.check_capacity(self.store, S, client)  # (before the photos are decoded)
                upload = await validation.upload(request, self.store, S, client)
                await self.drivers.run(job_id, *await self._accept(job_id, *upload, client))
        except HandedOver:  # (this process is stopping; the job is not)
            raise ShuttingDown(f"this server is shutting down; task {job_id} goes on on another replica: follow it "
                               "with /v1/progress") from None
        except JobEnded as e:  # an expected outcome: 409 with the job's status and reason (no 500, no traceback)
            raise TaskNotFinished(f"task {job_id} ended {e.status}: {e}") from None
        if (result := await jobs.stored_result(self.store, job_id)) is None:
            raise TaskNotFinished(f"task {job_id} has no result")
        return RetouchResult(**result)

    @bentoml.api(route="/v1/progress")
    @answers_errors
    async def progress(self, ctx: bentoml.Context, task_id: str, include_preview: bool = False) -> ProgressResponse:
        """Iteration, loss and (optionally) a small preview of a task's current grade."""
        r = await self._record(task_id, ctx)
        preview = None
        if include_preview and (png := await self.store.preview(task_id)):
            preview = "data:image/png;base64," + base64.b64encode(png).decode()
        return ProgressResponse(task_id=task_id, status=r.status, iteration=r.iteration, total=r.total,
                                loss=r.loss, terms=r.terms, error=r.error, preview=preview)

    @bentoml.api(route="/v1/cancel")
    @answers_errors
    async def cancel(self, ctx: bentoml.Context, task_id: str) -> CancelResponse:
        """Stop a task: it ends `cancelled` at the optimizer's next step and uses no more GPU time."""
        r = await self._record(task_id, ctx)
        if await self.store.request_cancel(task_id):
            return CancelResponse(task_id=task_id, status="cancelling")
        return CancelResponse(task_id=task_id, status=r.status)

    @bentoml.api(route=APPLY_ROUTE)
    @answers_errors
    async def apply(self, ctx: bentoml.Context, image: Path, lut: Path, strength: float = 1.0,
                    image_format: ImageFormat | None = None) -> Path:
        """Apply a .cube file or HaldCLUT PNG to an uploaded image (multipart), with a strength; the image comes
        back in its own format (a JPEG stays a JPEG, with its EXIF and ICC profile) unless `image_format` says."""
        data, fmt = await asyncio.to_thread(apply_upload, image.read_bytes(), lut.read_bytes(), strength,
                                            image_format, S)
        out = Path(ctx.temp_dir) / f"graded.{'jpg' if fmt == 'jpeg' else fmt}"
        out.write_bytes(data)
        return out

    @bentoml.api(route="/v1/lut")
    @answers_errors
    async def lut(self, ctx: bentoml.Context, task_id: str, size: LutSize | None = None,
                  format: LutFormatName = "cube",
                  strength: float | None = None) -> Path:
        """A finished task's LUT as a file for any grading application: .cube (any offered size, resampled
        exactly), Resolve .cube, .3dl (Flame or Lustre), .csp, .spi3d, CLF, or a HaldCLUT PNG (its own size);
        with `strength`, the look at that strength (blended and made safe as the task's own .cube)."""
        record = await self._record(task_id, ctx)
        try:
            data, _ = await jobs.lut_file(self.store, task_id, size, format, strength)
        except JobEnded as e:
            raise TaskNotFinished(str(e)) from None
        stem = formats.look_name(record.options.get("target_prompt", ""), f"clipdlut-{task_id[:8]}")
        strength_tag = "" if strength is None else f"-{round(strength * 100)}pct"
        out = Path(ctx.temp_dir) / formats.file_name(stem + strength_tag, format, size)
        out.write_bytes(data)
        return out

    @bentoml.api(route="/v1/limits")
    async def limits(self) -> Limits:
        """What a job may ask of this service (the page reads its limits here)."""
        return Limits(max_prompt_chars=S.max_prompt_chars, max_photos=limits.MAX_PHOTOS, max_steps=S.max_steps,
                      lut_sizes=list(OFFERED_SIZES), max_strength=MAX_STRENGTH, min_side=limits.MIN_SIDE,
                      max_aspect=limits.MAX_ASPECT, max_pixels=S.max_pixels, max_body_mb=S.max_body_mb,
                      lut_formats=[LutFormatInfo(name=name, suffix=f.suffix, where=f.where, precision=f.precision)
                                   for name, f in formats.FORMATS.items()])

    @bentoml.api(route="/v1/footage")
    @answers_errors
    async def footage(self) -> Footage:
        """The input spaces, displays and views a footage job may name (the page's lists come from here)."""
        try:
            found = await asyncio.to_thread(viewing.choices, S.ocio_config or None)
        except viewing.ConfigError as e:
            raise ServiceFault(str(e)) from None
        return Footage(**found, lut_kinds=dict(viewing.LUT_KINDS))

    # -- CLIP utilities --------------------------------------------------------------------------

    @bentoml.api(route="/v1/embed_text")
    @answers_errors
    async def embed_text(self, prompts: list[str]) -> list[list[float]]:
        """Chinese-CLIP text embeddings (unit norm) of up to 64 prompts."""
        if not 1 <= len(prompts) <= 64:
            raise InputError("send 1 to 64 prompts")
        cleaned = [self._prompt(p) for p in prompts]
        return list(await remote.call(self.optimizer, "embed_text", cleaned))

    @bentoml.api(route="/v1/embed_image")
    @answers_errors
    async def embed_image(self, image: str) -> list[float]:
        """The Chinese-CLIP embedding (unit norm) of one image (base64 or data URL)."""
        small = await asyncio.to_thread(concepts.small_png, image, S)  # (decode and encode: not on the event loop)
        (vec,) = await remote.call(self.optimizer, "embed_image", [small])
        return list(vec)

    @bentoml.api(route="/v1/classify")
    @answers_errors
    async def classify(self, request: Concepts, /) -> ConceptScores:
        """Zero-shot: how well each concept prompt describes the image."""
        prompts = [self._prompt(c) for c in request.concepts]
        small = await asyncio.to_thread(concepts.small_png, request.image, S)
        img, txt = await asyncio.gather(remote.call(self.optimizer, "embed_image", [small]),
                                        remote.call(self.optimizer, "embed_text", prompts))
        return concepts.zero_shot(request.concepts, txt, img[0])

    def _prompt(self, text: str) -> str:
        return validation.clean_prompt(text, "prompt", S.max_prompt_chars)

    # -- the original system's API (README, "The original system's API") --------------------------

    @bentoml.api(route="/retouch")
    @answers_errors
    async def legacy_retouch(self, request: LegacyRetouchRequest, /, ctx: bentoml.Context) -> LegacyTask:
        """Original API: start a task; poll it with /query_task."""
        job_id, client = str(uuid.uuid4()), client_of(ctx.request.scope)
        opts = validation.validate_options(request.options(), S)
        await jobs.check_capacity(self.store, S, client)  # (before the photo is decoded)
        upload = jobs.Upload([await asyncio.to_thread(validation.decode_photo, request.image, S)])
        photos, opts = await self._accept(job_id, upload, opts, client)

        async def run() -> None:
            with contextlib.suppress(JobEnded, HandedOver):  # (its end is in the store, where /query_task reads it)
                await self.drivers.run(job_id, photos, opts)

        self._spawn(run())
        return LegacyTask(task_id=job_id, status=JobStatus.QUEUED.original, current_iteration=0,
                          overall_iteration=opts.steps)

    @bentoml.api(route="/query_task")
    @answers_errors
    async def legacy_query(self, request: LegacyQueryRequest, /, ctx: bentoml.Context) -> LegacyTask:
        """Original API: status, and when finished the LUT (cube or PNG strip) and the result image."""
        r = await self._record(request.task_id, ctx)
        lut = image = None
        if r.status == JobStatus.FINISHED:
            if request.lut_format is not None:
                fmt = "strip" if request.lut_format == "png" else "cube"  # (the original's names)
                lut_data, _ = await jobs.lut_file(self.store, r.job_id, fmt=fmt)
                lut = base64.b64encode(lut_data).decode()
            if request.include_image and (graded := await self.store.file(r.job_id, "image")) is not None:
                image = "data:image/png;base64," + base64.b64encode(graded).decode()
        elif request.include_image and r.status == JobStatus.RUNNING and (png := await self.store.preview(r.job_id)):
            image = "data:image/png;base64," + base64.b64encode(png).decode()
        return LegacyTask(task_id=r.job_id, status=r.status.original, current_iteration=r.iteration,
                          overall_iteration=r.options.get("steps", r.total), lut=lut, image=image)

    @bentoml.api(route="/stop_task")
    @answers_errors
    async def legacy_stop(self, request: LegacyStopRequest, /, ctx: bentoml.Context) -> LegacyStopResponse:
        """Original API: stop a task; it ends `stopped`."""
        await self._record(request.task_id, ctx)
        await self.store.request_cancel(request.task_id)
        return LegacyStopResponse(task_id=request.task_id)


async def _validate_submission(request: Request) -> Callable[[str], Awaitable[None]]:
    """Check a native task body before BentoML accepts it (BentoML itself would accept anything); what records
    it in the job store under its task id."""
    client = client_of(request.scope)
    upload, opts = await validation.submission(await request.body(), _store(), S, client)
    return lambda task_id: jobs.accept(_store(), task_id, upload, opts, S, owner=_instance(), client=client)


@functools.cache
def _store() -> JobStore:
    """This process's job store client (the service and its middleware share it)."""
    return open_store(S.store, S.retention_s, on_unavailable=READINESS.store_failed)


@functools.cache
def _instance() -> str:
    """This API process's name in the job store's leases."""
    return new_instance()


WEB = Path(__file__).parent / "clipdlut" / "serving" / "web"  # the page: static files, no build step, no CDN
bentoml.mount_asgi_app(StaticFiles(directory=WEB, html=True), path="/ui")(Retouch)
SERVED = cast("bentoml.Service[Retouch]", Retouch)  # (what @bentoml.service made of the class: mypy keeps the class)
# Middlewares, outermost first (the first added sees a request first): CORS, an answer for anything that raises,
# then who may call and how much they may send, before anything reads a body or answers from the store.
if S.cors_origins:  # (outside everything: its headers go on every answer, a 500 included)
    SERVED.add_asgi_middleware(CORSMiddleware, allow_origins=[o.strip() for o in S.cors_origins.split(",")],
                                allow_methods=["GET", "POST", "PUT"], allow_headers=["Authorization", "Content-Type"])
SERVED.add_asgi_middleware(Answered)
SERVED.add_asgi_middleware(Authenticate, registry=CLIENTS, legacy_client=S.legacy_client)
SERVED.add_asgi_middleware(BodyLimit, max_bytes=int(S.max_body_mb * 2**20 * 1.4) + 65536)
SERVED.add_asgi_middleware(ReadyReason, readiness=READINESS)
SERVED.add_asgi_middleware(Landing)
SERVED.add_asgi_middleware(ClearErrors)
SERVED.add_asgi_middleware(JsonBodies, multipart_routes=MULTIPART_ROUTES)
SERVED.add_asgi_middleware(FormCheck, routes=MULTIPART_ROUTES)
SERVED.add_asgi_middleware(TaskGate, route=TASK_ROUTE, store=_store, validate=_validate_submission,
                            result=lambda task_id: jobs.stored_result(_store(), task_id))
