"""Load test users for every public API: ``make load`` (or the locust command in the README).

Each job user submits, polls to the end like a real client, and reports the whole job as one
``JOB`` request, so locust's table shows end-to-end task latency next to the HTTP calls.
Settings: ``LOAD_STEPS`` optimizer steps per job (default 20), ``LOAD_IMAGE_SIDE`` (default 512).
"""

from __future__ import annotations

import base64
import io
import os
import time

import numpy as np
from locust import HttpUser, between, task
from PIL import Image

STEPS = int(os.environ.get("LOAD_STEPS", "20"))
SIDE = int(os.environ.get("LOAD_IMAGE_SIDE", "512"))
PROMPTS = ["赛博朋克风格的夜晚城市", "warm golden hour film look", "冷色调的清晨", "复古胶片", "高对比黑白"]
POLL_S = 0.5
JOB_TIMEOUT_S = 600


def _photo(side: int) -> str:
    y, x = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


PHOTO = _photo(SIDE)


class _JobUser(HttpUser):
    """Submits a job, polls it to its end like a real client, fetches the result, reports one ``JOB``."""

    abstract = True
    wait_time = between(0.5, 2.0)
    job_name = ""
    running = ("",)  # statuses that mean "poll again"
    succeeded = ""

    def submit(self, prompt: str):
        raise NotImplementedError

    def status(self, task_id: str) -> str:
        raise NotImplementedError

    def fetch(self, task_id: str) -> None:
        raise NotImplementedError

    @task
    def retouch(self) -> None:
        started = time.time()
        r = self.submit(PROMPTS[int(started * 1000) % len(PROMPTS)])
        if r.status_code != 200:
            return
        task_id, error = r.json()["task_id"], None
        while True:
            time.sleep(POLL_S)
            status = self.status(task_id)
            if status not in self.running:
                break
            if time.time() - started > JOB_TIMEOUT_S:
                error = TimeoutError(f"task {task_id} still {status} after {JOB_TIMEOUT_S} s")
                break
        if error is None and status != self.succeeded:
            error = RuntimeError(f"task {task_id} ended {status}")
        if error is None:
            self.fetch(task_id)
        self.environment.events.request.fire(request_type="JOB", name=self.job_name,
                                             response_time=(time.time() - started) * 1000, response_length=0,
                                             exception=error, context={})


class NativeTaskUser(_JobUser):
    """The native BentoML task API: submit, watch status and progress, fetch the result."""

    weight = 3
    job_name = "native retouch, submit to result"
    running = ("in_progress",)
    succeeded = "completed"

    def submit(self, prompt: str):
        return self.client.post("/v1/retouch/submit", json={"image": PHOTO, "target_prompt": prompt, "steps": STEPS,
                                                            "lut_size": 17})

    def status(self, task_id: str) -> str:
        status = self.client.get("/v1/retouch/status", params={"task_id": task_id},
                                 name="/v1/retouch/status").json()["status"]
        self.client.post("/v1/progress", json={"task_id": task_id})
        return status

    def fetch(self, task_id: str) -> None:
        self.client.get("/v1/retouch/get", params={"task_id": task_id}, name="/v1/retouch/get")


class OriginalApiUser(_JobUser):
    """The original system's client: /retouch, /query_task until finished, then the LUT and image."""

    weight = 2
    job_name = "original retouch, submit to result"
    running = ("pending", "processing")
    succeeded = "finished"

    def submit(self, prompt: str):
        return self.client.post("/retouch", json={"image": PHOTO, "target_prompt": prompt, "iteration": STEPS})

    def status(self, task_id: str) -> str:
        return self.client.post("/query_task", json={"task_id": task_id}).json()["status"]

    def fetch(self, task_id: str) -> None:
        self.client.post("/query_task", json={"task_id": task_id, "include_image": True, "lut_format": "cube"},
                         name="/query_task (result)")


class ClipUser(HttpUser):
    """The batchable CLIP endpoints: text and image embeddings, zero-shot concepts."""

    weight = 1
    wait_time = between(0.2, 1.0)

    @task(2)
    def embed_text(self) -> None:
        self.client.post("/v1/embed_text", json={"prompts": PROMPTS[:3]})

    @task(1)
    def embed_image(self) -> None:
        self.client.post("/v1/embed_image", json={"image": PHOTO})

    @task(1)
    def classify(self) -> None:
        self.client.post("/v1/classify", json={"image": PHOTO, "concepts": ["白天", "夜晚", "黄昏"]})
