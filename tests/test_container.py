"""The Bento as a container (README, Deployment): the CPU image built from nothing by the README's commands, then run
as one service, as split services, and as the Redis scale-out, every service in a container of its own.

podman (Debian's package) with an image store of its own for the session: nothing an earlier run left is used."""

from __future__ import annotations

import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clipdlut.cube import read_cube
from clipdlut.render import pillow_lut
from tests.conftest import gradient_image, page_files, png_bytes, wait
from tests.containers import Container, Podman, podman_missing, readme_block, sh
from tests.live import Proxy, free_port, haproxy_missing

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.container, pytest.mark.skipif(podman_missing() is not None, reason=str(podman_missing()))]
PHOTO = gradient_image(160, 120)
PHOTO_B64 = base64.b64encode(png_bytes(PHOTO)).decode()
FAST = {"CLIPDLUT_PROGRESS_EVERY": "2", "CLIPDLUT_CHECKPOINT_S": "0.5", "CLIPDLUT_WORKING_SIZE": "96",
        "CLIPDLUT_VIEWS": "2"}
OPTIMIZER = ("start-http-server", "--service-name", "clipdlut-optimizer")  # (as Kubernetes and BentoCloud start it)


def first_container(podman: Podman, built, name: str = "clipdlut", **env: str) -> Container:
    """The README's `podman run` line, on a free port (and ``name``, ``env``)."""
    line = next(line for line in readme_block() if line.startswith("podman run"))
    port = free_port()
    extra = "".join(f" -e {k}={v}" for k, v in env.items())
    line = line.replace("-e PORT=3000", f"-e PORT={port}{extra}").replace("--name clipdlut", f"--name {name}")
    sh(line, built, timeout=60)
    container = Container(podman, name, port)
    container.wait_ready()
    return container


def legacy_submit(url: str, steps: int, prompt: str = "冷色调") -> str:
    r = httpx.post(url + "/retouch", json={"image": PHOTO_B64, "target_prompt": prompt, "iteration": steps}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def progress(url: str, task_id: str) -> dict:
    r = httpx.post(url + "/v1/progress", json={"task_id": task_id, "include_preview": True}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def ended(url: str, task_id: str) -> dict | None:
    """The job's progress once it has ended (None while open, or while the router has no answer)."""
    try:
        p = httpx.post(url + "/v1/progress", json={"task_id": task_id}, timeout=30)
    except httpx.HTTPError:
        return None
    return p.json() if p.status_code == 200 and p.json()["status"] not in ("queued", "running") else None


def test_one_container_as_the_image_runs_it(podman, built):
    """Started as its entrypoint starts it (PORT set as platforms set it), as the image's non-root user, loading the
    weights packaged in the image; the original API bit-exact with Pillow; a native task with progress and a preview;
    its job store on a volume: a SIGTERM to PID 1 with jobs in flight stops it within 15 s, and a new container on
    the same volume finishes them and serves every result."""
    first = first_container(podman, built, **FAST)
    assert first.user() == "bentoml"
    assert re.search(r"loaded CLIP tiny from /home/bentoml/bento/models/clipdlut-clip-tiny/\w+/clip_cn_tiny.pt",
                     first.logs()), first.logs()[-2000:]

    assert "/ui/fflate.js" in page_files(lambda path: httpx.get(first.url + path, timeout=30))  # (the page, whole)
    done_before = legacy_submit(first.url, 12, "赛博朋克风格的夜晚城市")
    q = wait(lambda: ended(first.url, done_before), timeout=120)
    assert q["status"] == "finished"
    r = httpx.post(first.url + "/query_task", json={"task_id": done_before, "include_image": True,
                                                     "lut_format": "cube"}, timeout=30).json()
    cube = base64.b64decode(r["lut"]).decode()
    image = Image.open(io.BytesIO(base64.b64decode(r["image"].split(",", 1)[-1])))
    assert PHOTO.filter(pillow_lut(read_cube(cube).table)).tobytes() == image.convert("RGB").tobytes()

    native = httpx.post(first.url + "/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "warm film",
                                                                 "steps": 300, "seed": 1}, timeout=30).json()["task_id"]
    seen = wait(lambda: (p := progress(first.url, native))["preview"] and 0 < p["iteration"] < 300 and p, timeout=60)
    assert seen["preview"].startswith("data:image/png;base64,")
    in_flight = [native, *(legacy_submit(first.url, 300, f"风格 {i}") for i in range(3))]
    wait(lambda: all(progress(first.url, t)["status"] == "running" for t in in_flight), timeout=60)
    took, code = first.stop()
    assert took < 15 and code == 0, (took, code, first.logs()[-2000:])
    assert "released 4 jobs" in first.logs()

    second = first_container(podman, built, name="clipdlut-again", **FAST)
    for task_id in in_flight:
        done = wait(lambda t=task_id: ended(second.url, t), timeout=300)
        assert done["status"] == "finished", (done, second.logs()[-3000:])
    assert second.logs().count("taken over from an API replica that stopped") == 4
    result = httpx.get(second.url + "/v1/retouch/get", params={"task_id": native}, timeout=30).json()
    assert result["steps"] == 300 and result["model"] == "tiny"
    again = httpx.post(second.url + "/query_task", json={"task_id": done_before, "lut_format": "cube"}, timeout=30)
    assert base64.b64decode(again.json()["lut"]).decode() == cube  # (a result from before, kept on the volume)
    second.stop()


def batch_histogram(url: str) -> tuple[float, float]:
    """(optimizer steps, steps that advanced at most 6 jobs) from the optimizer's own metric."""
    text = httpx.get(url + "/metrics", timeout=10).text
    count = float(re.search(r"^clipdlut_optimizer_batch_jobs_count (\S+)$", text, re.M).group(1))
    small = float(re.search(r'^clipdlut_optimizer_batch_jobs_bucket\{le="6.0"\} (\S+)$', text, re.M).group(1))
    return count, small


def test_split_containers_batch_jobs_together_and_a_cancel_leaves_within_a_step(podman, built):
    """The optimizer and the API in containers of their own (the same image), as BentoCloud and Kubernetes run them:
    8 concurrent jobs advance in one batch, and a cancelled job leaves it at the next step."""
    env = {**FAST, "CLIPDLUT_MAX_BATCH_SIZE": "8"}
    optimizer = podman.run(built_image(), "optimizer", *OPTIMIZER, env=env)
    api = podman.run(built_image(), "api", env={**env, "CLIPDLUT_OPTIMIZER_URL": f"http://127.0.0.1:{optimizer.port}"})
    optimizer.wait_ready()
    api.wait_ready()
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda i: legacy_submit(api.url, 40, f"风格 {i}"), range(8)))
    for task_id in jobs:
        assert wait(lambda t=task_id: ended(api.url, t), timeout=240)["status"] == "finished"
    steps, small = batch_histogram(optimizer.url)
    assert steps - small > 0 and steps < 8 * 40  # (steps that advanced 7 or 8 jobs at once)

    long = legacy_submit(api.url, 5000)
    wait(lambda: progress(api.url, long)["iteration"] > 0, timeout=60)
    assert httpx.post(api.url + "/stop_task", json={"task_id": long}, timeout=30).status_code == 200
    wait(lambda: ended(api.url, long), timeout=10)
    line = wait(lambda: next((x for x in optimizer.logs().splitlines() if long in x and "left the batch" in x), None),
                timeout=10)
    assert int(re.search(r"(\d+) step\(s\) after it was cancelled", line).group(1)) <= 1, line
    for container in (api, optimizer):
        container.stop()


def built_image() -> str:
    """The image the README's `make container VARIANT=cpu` tags."""
    return "clipdlut:cpu"


@pytest.mark.skipif(haproxy_missing() is not None, reason=str(haproxy_missing()))
def test_redis_scale_out_in_containers_loses_no_job_when_an_api_and_an_optimizer_container_die(
        podman, built, redis_image, tmp_path):
    """Redis, two API containers and two optimizer containers, each behind the router as the platform would route;
    one API container and one optimizer container SIGKILLed mid-run: every job finishes."""
    redis_port = free_port()
    podman("run", "--detach", "--name=redis", "--volume=redis-data:/data", redis_image, "redis-server", "--port",
           str(redis_port), "--bind", "127.0.0.1", "--dir", "/data", "--appendonly", "yes", "--save", "",
           "--maxmemory-policy", "noeviction")
    env = {**FAST, "CLIPDLUT_WATCHDOG_S": "3", "CLIPDLUT_STORE": f"redis://127.0.0.1:{redis_port}/0"}
    optimizers = [podman.run(built_image(), f"optimizer-{i}", *OPTIMIZER, env=env) for i in range(2)]
    for o in optimizers:
        o.wait_ready()
    (tmp_path / "optimizer-router").mkdir()
    routers = [Proxy(tmp_path / "optimizer-router", [o.url for o in optimizers]).start()]
    try:
        apis = [podman.run(built_image(), f"api-{i}", env={**env, "CLIPDLUT_OPTIMIZER_URL": routers[0].url})
                for i in range(2)]
        for a in apis:
            a.wait_ready()
        (tmp_path / "router").mkdir()
        routers.append(Proxy(tmp_path / "router", [a.url for a in apis]).start())
        url = routers[1].url
        with ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(lambda i: legacy_submit(url, 80, f"风格 {i}"), range(12)))

        def mid_run() -> bool:
            states = [ended(url, t) or httpx.post(url + "/v1/progress", json={"task_id": t}, timeout=30).json()
                      for t in jobs]
            return sum(s["status"] == "running" and 10 <= s["iteration"] <= 60 for s in states) >= 4

        wait(mid_run, timeout=180, every=0.2)
        apis[0].kill()
        optimizers[0].kill()
        for task_id in jobs:
            done = wait(lambda t=task_id: ended(url, t), timeout=400, every=0.25)
            assert done["status"] == "finished" and done["iteration"] == 80, done
        assert "taken over from an API replica that stopped" in apis[1].logs()
    finally:
        for r in routers:
            r.stop()
