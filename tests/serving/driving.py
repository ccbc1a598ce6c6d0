"""Jobs driven against the real optimizer stream in-process, with the faults a network brings (shared by the tests
of one job's driver and of a replica's drivers)."""

from __future__ import annotations

import asyncio
import uuid

from clipdlut.clients import Client
from clipdlut.cube import read_cube
from clipdlut.engine import Engine
from clipdlut.serving.driver import Resilience, drive
from clipdlut.serving.drivers import Drivers
from clipdlut.serving.jobs import JobOptions, Upload, accept
from clipdlut.serving.jobstream import stream_job
from clipdlut.serving.settings import Settings
from clipdlut.serving.validation import decode_upload
from clipdlut.serving.wire import Failed, encode_event
from tests.conftest import gradient_image, png_bytes

SETTINGS = Settings(views=1, progress_every=2, working_size=64)
FAST = Resilience(attempts=3, max_wait_s=30, stall_s=10, checkpoint_s=0, backoff_s=0.01, max_backoff_s=0.05)
PHOTO = png_bytes(gradient_image(80, 60))


async def new_job(store, steps=12, prompt="暖色", owner="api-a", client="", settings=SETTINGS
                  ) -> tuple[str, object, JobOptions]:
    job_id = uuid.uuid4().hex
    decoded = decode_upload(PHOTO, settings)
    opts = JobOptions(target_prompt=prompt, steps=steps, lut_size=17, seed=5)
    await accept(store, job_id, Upload([(PHOTO, decoded)]), opts, settings, owner=owner, client=Client(client))
    return job_id, [PHOTO], opts


class Optimizer:
    """The optimizer's ``optimize`` in-process, with faults on demand: the first ``breaks`` calls lose their
    stream after ``after`` events (the replica closes the job, as on a disconnect, and the caller sees a reset)."""

    def __init__(self, engine: Engine, breaks: int = 0, after: int = 3, replica_fails: bool = False):
        self.engine, self.breaks, self.after, self.replica_fails = engine, breaks, after, replica_fails
        self.tries = 0
        self.calls: list[int | None] = []  # the iteration each call the optimizer took resumed from
        self.taken: list[str] = []  # the job of each call the optimizer took, in order

    async def optimize(self, request):
        self.tries += 1
        events = stream_job(self.engine, request, "tiny")
        broken = False
        try:
            n = 0
            async for line in events:
                n += 1
                if n == 1:
                    self.calls.append(request.resume.iteration if request.resume else None)
                    self.taken.append(request.job_id)
                    broken = len(self.calls) <= self.breaks
                if broken and n > self.after and self.replica_fails:  # e.g. CUDA out of memory in a big batch
                    yield encode_event(Failed(iteration=0, error="optimizer error: out of memory", retryable=True))
                    return
                if broken and n > self.after:
                    raise ConnectionResetError("connection reset by peer")
                yield line
        finally:
            await events.aclose()


async def run(store, job, optimizer, stop=None, policy=FAST):
    job_id, photos, opts = job
    return await drive(store, job_id, photos, opts, optimizer.optimize, SETTINGS, stop or asyncio.Event(), policy)


def replica(store, engine, settings=SETTINGS, instance="api-a", **faults) -> Drivers:
    """An API replica's drivers, sending jobs to the optimizer in-process, its loops quick."""
    return Drivers(store, Optimizer(engine, **faults).optimize, settings, instance=instance, poll_s=0.02,
                   lease_s=0.05)




async def cube_table(store, job_id):
    return read_cube(await store.file(job_id, "cube")).table
