"""Every accepted job ends, results survive restarts, and a full queue says when to come back.

Real ``bentoml serve`` processes with the tiny model and a 3 s watchdog bound.
"""

from __future__ import annotations

import base64
import re
import time

import httpx
import psutil
import pytest

from tests.conftest import gradient_image, png_bytes, wait
from tests.live import Server, serving

pytestmark = pytest.mark.e2e
PHOTO_B64 = base64.b64encode(png_bytes(gradient_image(120, 90))).decode()
BOUND_S = 3.0
FAST = {"CLIPDLUT_WATCHDOG_S": str(BOUND_S), "CLIPDLUT_PROGRESS_EVERY": "1"}
SMALL = {"CLIPDLUT_WORKING_SIZE": "96", "CLIPDLUT_VIEWS": "2"}  # cheap steps: these tests are about ends, not looks


def submit(url: str, steps: int) -> str:
    r = httpx.post(url + "/retouch", json={"image": PHOTO_B64, "target_prompt": "暖色", "iteration": steps},
                   timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def query(url: str, task_id: str, **kw) -> dict:
    return httpx.post(url + "/query_task", json={"task_id": task_id, **kw}, timeout=30).json()


def ended(url: str, task_id: str) -> dict | None:
    q = query(url, task_id)
    return q if q["status"] not in ("pending", "processing") else None


def optimizer_worker(server: Server) -> psutil.Process:
    """The optimizer's worker process of a one-host ``bentoml serve``."""
    (worker,) = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                 if "clipdlut-optimizer" in " ".join(p.cmdline())]
    return worker


def test_a_killed_optimizer_loses_no_job(tmp_path):
    """BentoML restarts the optimizer's worker; the job's stream broke, so the API sends it again and it resumes
    from its last checkpoint and finishes."""
    with serving(tmp_path, CLIPDLUT_CHECKPOINT_S="0", **FAST, **SMALL) as s:
        task_id = submit(s.url, 200)
        wait(lambda: query(s.url, task_id)["current_iteration"] >= 20)
        killed = optimizer_worker(s)
        killed.kill()
        done = wait(lambda: ended(s.url, task_id), timeout=120)
        assert done["status"] == "finished" and done["current_iteration"] == 200
        assert optimizer_worker(s).pid != killed.pid
        assert re.search(rf"job {task_id} resumed at iteration [1-9]\d*", s.log())
        again = submit(s.url, 8)
        assert wait(lambda: ended(s.url, again), timeout=120)["status"] == "finished"


def test_restart_keeps_results(tmp_path):
    server = Server(tmp_path, FAST).start()
    try:
        server.wait_ready()
        finished = submit(server.url, 6)
        native = httpx.post(server.url + "/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "冷色",
                                                                      "steps": 6}, timeout=30).json()["task_id"]
        assert wait(lambda: ended(server.url, finished))["status"] == "finished"
        wait(lambda: httpx.get(server.url + "/v1/retouch/status", params={"task_id": native}).json()["status"]
             == "completed")
        before = query(server.url, finished, lut_format="cube", include_image=True)
    finally:
        server.stop()

    with serving(tmp_path, **FAST) as s:
        assert query(s.url, finished, lut_format="cube", include_image=True) == before
        assert httpx.get(s.url + "/v1/retouch/status", params={"task_id": native}).json()["status"] == "completed"
        result = httpx.get(s.url + "/v1/retouch/get", params={"task_id": native}).json()
        assert result["cube"].startswith("# prompt: 冷色") and result["task_id"] == native


STEPS = 60


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_jobs_running_and_queued_at_a_restart_finish_after_it(tmp_path, signal_name):
    """4 jobs in the optimizer's batch and 4 waiting for room when ``bentoml serve`` stops (cleanly, or killed
    with everything it started); started again on the same store, it takes them over and all 8 finish."""
    settings = {**FAST, "CLIPDLUT_MAX_BATCH_SIZE": "4", "CLIPDLUT_CHECKPOINT_S": "0.5", "CLIPDLUT_PROGRESS_EVERY": "5",
                **SMALL}
    server = Server(tmp_path, settings).start()
    try:
        server.wait_ready()
        legacy = [submit(server.url, STEPS) for _ in range(4)]
        native = [httpx.post(server.url + "/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "冷色",
                                                                       "steps": STEPS, "seed": i}, timeout=30
                             ).json()["task_id"] for i in range(4)]
        jobs = legacy + native

        def running_and_queued() -> bool:
            states = [httpx.post(server.url + "/v1/progress", json={"task_id": t}).json() for t in jobs]
            running = [p for p in states if p["status"] == "running" and 0 < p["iteration"] < STEPS // 2]
            return len(running) == 4 and sum(p["status"] == "queued" for p in states) == 4

        wait(running_and_queued, every=0.02)
        if signal_name == "SIGKILL":
            server.kill()
        else:  # with 4 native tasks in flight (each a request as long as its job): handed on, not waited for
            t0 = time.monotonic()
            server.stop()
            assert time.monotonic() - t0 < 15, "SIGTERM did not stop the server within its grace period"
    finally:
        server.stop()
    assert "released 8 jobs" in server.log() or signal_name == "SIGKILL"

    with serving(tmp_path, **settings) as s:
        for task_id in legacy:
            done = wait(lambda t=task_id: ended(s.url, t), timeout=240)
            assert done["status"] == "finished" and done["current_iteration"] == STEPS, done
        for task_id in native:
            wait(lambda t=task_id: httpx.get(s.url + "/v1/retouch/status", params={"task_id": t}).json()["status"]
                 != "in_progress", timeout=240)
            result = httpx.get(s.url + "/v1/retouch/get", params={"task_id": task_id}, timeout=30)
            assert result.status_code == 200 and result.json()["steps"] == STEPS, result.text
        assert len(re.findall(r"taken over from an API replica that stopped", s.log())) == 8


def test_full_queue_gets_429_with_retry_after_then_recovers(tmp_path):
    with serving(tmp_path, CLIPDLUT_MAX_OPEN_JOBS="2", CLIPDLUT_RETRY_AFTER_S="4", **FAST) as s:
        long = [submit(s.url, 5000), submit(s.url, 5000)]
        r = httpx.post(s.url + "/retouch", json={"image": PHOTO_B64, "target_prompt": "x", "iteration": 5})
        assert r.status_code == 429 and r.headers["retry-after"] == "4" and "limit" in r.json()["error"]
        r = httpx.post(s.url + "/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "x", "steps": 5})
        assert r.status_code == 429 and r.headers["retry-after"] == "4"
        for task_id in long:
            httpx.post(s.url + "/stop_task", json={"task_id": task_id})
        for task_id in long:
            assert wait(lambda t=task_id: ended(s.url, t))["status"] == "stopped"
        after = submit(s.url, 5)
        assert wait(lambda: ended(s.url, after), timeout=60)["status"] == "finished"
        assert httpx.get(s.url + "/readyz").status_code == 200
