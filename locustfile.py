"""Load test users for every public API: ``make load`` (or the locust command in the README).

Each job user submits, polls to the end like a real client, and reports the whole job as one
``JOB`` request, so locust's table shows end-to-end task latency next to the HTTP calls. Every job's end is a ``JOB``
row: one that a call failed (an error status, a router's HTML page, a timeout, a refused submission) is a failed
row named by that call and its cause, in locust's failure table.
Settings: ``LOAD_STEPS`` optimizer steps per job (default 20), ``LOAD_IMAGE_SIDE`` (default 512).
"""

from __future__ import annotations

import base64
import io
import os
import time

import numpy as np
import requests
from locust import HttpUser, between, task
from PIL import Image

STEPS = int(os.environ.get("LOAD_STEPS", "20"))
SIDE = int(os.environ.get("LOAD_IMAGE_SIDE", "512"))
KEY = os.environ.get("LOAD_KEY", "")  # a client's key, for a service that needs one (README, Clients)
PROMPTS = ["赛博朋克风格的夜晚城市", "warm golden hour film look", "冷色调的清晨", "复古胶片", "高对比黑白"]
POLL_S = 0.5
JOB_TIMEOUT_S = 600
TIMEOUT_S = 60  # one call's limit


def _photo(side: int) -> str:
    y, x = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


PHOTO = _photo(SIDE)


class CallFailed(Exception):
    """A call of a job that did not answer as the API promises: the job ends there, failed, and its ``JOB`` row
    names the call and the cause (never a task id: locust groups failures by their message)."""


def answer(response, call: str) -> dict:
    """The JSON object a call answered with; :class:`CallFailed` for anything else (no answer, a timeout, an error
    status, a router's HTML page, JSON without what the API promises)."""
    if response.status_code == 0:  # (locust's client: no HTTP answer at all)
        cause = "timed out" if isinstance(response.error, requests.Timeout) else "no answer (connection failed)"
        raise CallFailed(f"{call}: {cause}")
    html = "html" in response.headers.get("content-type", "")
    if not response.ok:
        raise CallFailed(f"{call}: HTTP {response.status_code}" + (" (an HTML page: a router's error)" if html else ""))
    try:
        body = response.json()
    except ValueError:
        raise CallFailed(f"{call}: HTTP {response.status_code} but not JSON" + (" (an HTML page)" if html else "")
                         ) from None
    if not isinstance(body, dict):
        raise CallFailed(f"{call}: HTTP {response.status_code} but not a JSON object")
    return body


def field(body: dict, name: str, call: str) -> str:
    if name not in body:
        raise CallFailed(f"{call}: the answer has no {name!r}")
    return body[name]


def _keyed(user: HttpUser) -> None:
    """Every call of this user sends ``LOAD_KEY``, when it is set."""
    if KEY:
        user.client.headers["Authorization"] = f"Bearer {KEY}"


class _JobUser(HttpUser):
    """Submits a job, polls it to its end like a real client, fetches the result, and reports one ``JOB`` per job,
    however it ended: every job's end is counted (a failed call of any step ends the job as a failure)."""

    abstract = True
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        _keyed(self)
    job_name = ""
    running = ("",)  # statuses that mean "poll again"
    succeeded = ""

    def submit(self, prompt: str) -> str:
        """A new job's task id."""
        raise NotImplementedError

    def status(self, task_id: str) -> str:
        raise NotImplementedError

    def fetch(self, task_id: str) -> None:
        raise NotImplementedError

    def follow(self, started: float) -> None:
        """Submit one job and follow it to its end; :class:`CallFailed` at the first thing that goes wrong."""
        task_id = self.submit(PROMPTS[int(started * 1000) % len(PROMPTS)])
        while (status := self.status(task_id)) in self.running:
            if time.time() - started > JOB_TIMEOUT_S:
                raise CallFailed(f"timed out: still {status} after {JOB_TIMEOUT_S} s")
            time.sleep(POLL_S)
        if status != self.succeeded:
            raise CallFailed(f"the job ended {status}")
        self.fetch(task_id)

    @task
    def retouch(self) -> None:
        started, error = time.time(), None
        try:
            self.follow(started)
        except CallFailed as e:
            error = e
        self.environment.events.request.fire(request_type="JOB", name=self.job_name,
                                             response_time=(time.time() - started) * 1000, response_length=0,
                                             exception=error, context={})


class NativeTaskUser(_JobUser):
    """The native BentoML task API: submit, watch status and progress, fetch the result."""

    weight = 3
    job_name = "native retouch, submit to result"
    running = ("in_progress",)
    succeeded = "completed"

    def submit(self, prompt: str) -> str:
        r = self.client.post("/v1/retouch/submit", json={"image": PHOTO, "target_prompt": prompt, "steps": STEPS,
                                                          "lut_size": 17}, timeout=TIMEOUT_S)
        return field(answer(r, "submit"), "task_id", "submit")

    def status(self, task_id: str) -> str:
        r = self.client.get("/v1/retouch/status", params={"task_id": task_id}, name="/v1/retouch/status",
                            timeout=TIMEOUT_S)
        status = field(answer(r, "status poll"), "status", "status poll")
        answer(self.client.post("/v1/progress", json={"task_id": task_id}, timeout=TIMEOUT_S), "progress poll")
        return status

    def fetch(self, task_id: str) -> None:
        r = self.client.get("/v1/retouch/get", params={"task_id": task_id}, name="/v1/retouch/get",
                            timeout=TIMEOUT_S)
        field(answer(r, "result"), "cube", "result")


class OriginalApiUser(_JobUser):
    """The original system's client: /retouch, /query_task until finished, then the LUT and image."""

    weight = 2
    job_name = "original retouch, submit to result"
    running = ("pending", "processing")
    succeeded = "finished"

    def submit(self, prompt: str) -> str:
        r = self.client.post("/retouch", json={"image": PHOTO, "target_prompt": prompt, "iteration": STEPS},
                             timeout=TIMEOUT_S)
        return field(answer(r, "submit"), "task_id", "submit")

    def status(self, task_id: str) -> str:
        r = self.client.post("/query_task", json={"task_id": task_id}, timeout=TIMEOUT_S)
        return field(answer(r, "status poll"), "status", "status poll")

    def fetch(self, task_id: str) -> None:
        r = self.client.post("/query_task", json={"task_id": task_id, "include_image": True, "lut_format": "cube"},
                             name="/query_task (result)", timeout=TIMEOUT_S)
        if not field(answer(r, "result"), "lut", "result"):
            raise CallFailed("result: no LUT in a finished task's answer")


class ClipUser(HttpUser):
    """The batchable CLIP endpoints: text and image embeddings, zero-shot concepts."""

    weight = 1
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        _keyed(self)

    @task(2)
    def embed_text(self) -> None:
        self.client.post("/v1/embed_text", json={"prompts": PROMPTS[:3]})

    @task(1)
    def embed_image(self) -> None:
        self.client.post("/v1/embed_image", json={"image": PHOTO})

    @task(1)
    def classify(self) -> None:
        self.client.post("/v1/classify", json={"image": PHOTO, "concepts": ["白天", "夜晚", "黄昏"]})
