"""The real ``bentoml serve`` with the tiny model, in both topologies: one host (``bentoml serve service:Retouch``
starts both services), and split (each service served alone on a host of its own, sharing no file, the API
pointed at the optimizer with ``CLIPDLUT_OPTIMIZER_URL``)."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time

import bentoml
import httpx
import pytest
from PIL import Image

from clipdlut.cube import read_cube
from clipdlut.render import pillow_lut
from tests.conftest import gradient_image, png_bytes, wait
from tests.live import optimizer_in_flight, serving, split
from tests.test_service import BAD_INPUTS

pytestmark = pytest.mark.e2e
PHOTO = gradient_image(200, 150)
PHOTO_B64 = base64.b64encode(png_bytes(PHOTO)).decode()


SETTINGS = {"CLIPDLUT_MAX_PIXELS": "1000000", "CLIPDLUT_MAX_BODY_MB": "2", "CLIPDLUT_PROGRESS_EVERY": "2",
            "CLIPDLUT_MAX_BATCH_SIZE": "8"}


class Deployment:
    """Where the API answers, and the server whose /metrics and log are the optimizer's."""

    def __init__(self, api, optimizer):
        self.url, self.api, self.optimizer = api.url, api, optimizer


@pytest.fixture(scope="module", params=["one host", "split"])
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    if request.param == "one host":
        with serving(folder, **SETTINGS) as s:
            yield Deployment(s, s)
    else:
        with split(folder, **SETTINGS) as (api, optimizer):
            yield Deployment(api, optimizer)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def query(http, task_id, **kw):
    r = http.post("/query_task", json={"task_id": task_id, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def legacy_submit(http, steps, prompt="冷色调"):
    r = http.post("/retouch", json={"image": "data:image/png;base64," + PHOTO_B64, "target_prompt": prompt,
                                    "iteration": steps})
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def optimizer_metrics(server) -> str:
    return httpx.get(server.optimizer.url + "/metrics", timeout=10).text


def batch_histogram(server) -> tuple[float, float]:
    """(steps observed, steps that advanced a single job) from the optimizer's metric on its ``/metrics``."""
    text = optimizer_metrics(server)
    count = float(re.search(r"^clipdlut_optimizer_batch_jobs_count (\S+)$", text, re.M).group(1))
    alone = float(re.search(r'^clipdlut_optimizer_batch_jobs_bucket\{le="1.0"\} (\S+)$', text, re.M).group(1))
    return count, alone


def test_original_api_flow_is_bit_exact_with_pillow(http):
    assert http.get("/").status_code == 200
    task_id = legacy_submit(http, 16, "赛博朋克风格的夜晚城市")
    done = wait(lambda: (q := query(http, task_id))["status"] not in ("pending", "processing") and q, every=0.2)
    assert done["status"] == "finished" and done["current_iteration"] == done["overall_iteration"] == 16
    q = query(http, task_id, include_image=True, lut_format="cube")
    cube = base64.b64decode(q["lut"]).decode()
    image = Image.open(io.BytesIO(base64.b64decode(q["image"].split(",", 1)[-1])))
    assert image.size == PHOTO.size
    assert PHOTO.filter(pillow_lut(read_cube(cube).table)).tobytes() == image.convert("RGB").tobytes()


def test_native_task_flow_with_bentoml_client(server):
    async def flow():
        async with bentoml.AsyncHTTPClient(server.url, server_ready_timeout=30) as client:
            task = await client.retouch.submit({"image": PHOTO_B64, "target_prompt": "warm golden hour film look",
                                                "steps": 30, "lut_size": 17, "seed": 3})
            seen, previews = set(), set()
            while (status := await task.get_status()).value == "in_progress":
                p = await client.progress(task_id=task.id, include_preview=True)
                seen.add(p["iteration"])
                if p["preview"]:
                    previews.add(p["preview"])
                await asyncio.sleep(0.05)
            assert status.value == "completed"
            result = await task.get()
            final = await client.progress(task_id=task.id)
            return seen, previews, result, final

    seen, previews, result, final = asyncio.run(flow())
    assert final["status"] == "finished" and final["iteration"] == final["total"] == 30
    assert len(seen) >= 2  # progress was visible while it ran
    assert previews and all(p.startswith("data:image/png;base64,") for p in previews)
    assert read_cube(result["cube"]).size == 17 and result["model"] == "tiny"
    graded = Image.open(io.BytesIO(base64.b64decode(result["image"])))
    assert graded.size == PHOTO.size
    assert PHOTO.filter(pillow_lut(read_cube(result["cube"]).table)).tobytes() == graded.convert("RGB").tobytes()


def test_stop_and_native_cancel_while_another_job_completes(http, server):
    stopped, cancelled = legacy_submit(http, 5000), None
    r = http.post("/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "冷色调", "steps": 5000})
    cancelled = r.json()["task_id"]
    survivor = legacy_submit(http, 40, "暖色")
    for task_id in (stopped, cancelled):
        wait(lambda t=task_id: http.post("/v1/progress", json={"task_id": t}).json()["iteration"] > 0)

    t0 = time.monotonic()
    assert http.post("/stop_task", json={"task_id": stopped}).json() == {"status": "ok", "task_id": stopped}
    wait(lambda: query(http, stopped)["status"] == "stopped", timeout=5, every=0.02)
    assert time.monotonic() - t0 < 1.0

    t0 = time.monotonic()
    assert http.put("/v1/retouch/cancel", params={"task_id": cancelled}).status_code == 200
    wait(lambda: http.get("/v1/retouch/status", params={"task_id": cancelled}).json()["status"] == "canceled",
         timeout=5, every=0.02)
    wait(lambda: http.post("/v1/progress", json={"task_id": cancelled}).json()["status"] == "cancelled",
         timeout=5, every=0.02)
    assert time.monotonic() - t0 < 1.0

    at_stop = {t: http.post("/v1/progress", json={"task_id": t}).json()["iteration"] for t in (stopped, cancelled)}
    done = wait(lambda: (q := query(http, survivor))["status"] not in ("pending", "processing") and q, every=0.2)
    assert done["status"] == "finished" and done["current_iteration"] == 40
    for t, iteration in at_stop.items():  # no GPU time after the stop
        assert http.post("/v1/progress", json={"task_id": t}).json()["iteration"] == iteration
    for t in (stopped, cancelled):  # the optimizer's own word: each left its batch within one step
        line = wait(lambda t=t: next((x for x in server.optimizer.log().splitlines() if t in x and "left the batch"
                                      in x), None), timeout=5)
        assert int(re.search(r"(\d+) step\(s\) after it was cancelled", line).group(1)) <= 1, line


def test_concurrent_jobs_share_optimizer_steps(http, server):
    count0, alone0 = batch_histogram(server)

    async def submit_all():
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/retouch", json={"image": PHOTO_B64, "target_prompt": f"风格 {i}",
                                                                 "iteration": 30}) for i in range(8)))
            return [r.json()["task_id"] for r in rs]

    ids = asyncio.run(submit_all())
    for task_id in ids:
        assert wait(lambda t=task_id: (s := query(http, t)["status"]) not in ("pending", "processing") and s,
                    every=0.2) == "finished"
    count, alone = batch_histogram(server)
    steps, shared = count - count0, (count - count0) - (alone - alone0)
    assert steps < 8 * 30  # fewer optimizer steps than one job at a time would need
    assert shared > 0  # steps that advanced more than one job


def in_flight(server) -> float:
    return optimizer_in_flight(server.optimizer.url)


def test_in_flight_requests_on_the_optimizer_equal_running_jobs(http, server):
    """An autoscaler counting in-flight requests per replica sees exactly the running jobs."""
    assert in_flight(server) == 0
    ids = [legacy_submit(http, 5000, f"风格 {i}") for i in range(3)]
    for task_id in ids:
        wait(lambda t=task_id: query(http, t)["current_iteration"] > 0)
    assert in_flight(server) == 3
    http.post("/stop_task", json={"task_id": ids[0]})
    wait(lambda: in_flight(server) == 2, timeout=5)
    for task_id in ids[1:]:
        http.post("/stop_task", json={"task_id": task_id})
    wait(lambda: in_flight(server) == 0, timeout=5)


@pytest.mark.parametrize("path,body,status,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_4xx(http, path, body, status, message):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.text


def test_healthy_after_bad_input(http):
    assert http.post("/retouch", content=b"x" * (4 * 2**20), headers={"content-type": "application/json"}
                     ).status_code == 413
    assert http.post("/v1/retouch/submit", content=b"{not json").status_code == 400
    assert http.get("/readyz").status_code == 200
    task_id = legacy_submit(http, 6)
    assert wait(lambda: (s := query(http, task_id)["status"]) not in ("pending", "processing") and s,
                every=0.2) == "finished"


def test_client_errors_leave_one_line_and_no_payload_in_the_log(server):
    """After the hostile and malformed requests above: no traceback for a client's mistake, and no fragment of
    an upload anywhere in the API's log."""
    text = server.api.log()
    assert "client error on /retouch [POST]" in text  # (the bad inputs did reach BentoML's validation)
    assert "input_value" not in text and "Traceback" not in text
    assert not re.search(r"[A-Za-z0-9+/=]{100,}", text)  # no base64 run


def test_missing_weights_give_503_with_the_reason(tmp_path):
    weights = tmp_path / "weights"
    expected = str(weights / "clip_cn_vit-b-16.pt")

    with serving(tmp_path, ready=False, CLIPDLUT_CLIP_MODEL="ViT-B-16", CLIPDLUT_WEIGHTS_DIR=str(weights)) as s:
        def explained():
            try:
                r = httpx.get(s.url + "/readyz", timeout=2)
            except httpx.HTTPError:
                return None
            return r if expected in r.text else None

        r = wait(explained, timeout=120, every=0.5)
        assert r.status_code == 503 and "cannot be downloaded" in r.json()["error"]
        assert wait(lambda: expected in s.log(), timeout=10)
