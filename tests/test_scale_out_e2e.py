"""Several hosts: one Redis, two API replicas and two optimizer replicas, each a server with its own working
folder and no file shared with any other, behind real reverse proxies (HAProxy) as the platform would route.
One API replica is SIGKILLed mid-run: the other takes its jobs over, and every job finishes and is answered."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import redis

from tests.conftest import gradient_image, png_bytes, wait
from tests.live import Proxy, RedisServer, haproxy_missing, host, redis_missing

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(haproxy_missing() is not None, reason=str(haproxy_missing())),
              pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))]
JOBS, STEPS = 12, 48
SETTINGS = {"CLIPDLUT_PROGRESS_EVERY": "2", "CLIPDLUT_VIEWS": "2", "CLIPDLUT_WORKING_SIZE": "96",
            "CLIPDLUT_CHECKPOINT_S": "0.5", "CLIPDLUT_WATCHDOG_S": "3"}
PHOTO_B64 = base64.b64encode(png_bytes(gradient_image(120, 90))).decode()


def submit(url: str, i: int) -> tuple[str, str]:
    """Half the jobs through the original API, half as native tasks: (api, task id)."""
    if i % 2:
        r = httpx.post(url + "/retouch", json={"image": PHOTO_B64, "target_prompt": f"风格 {i}", "iteration": STEPS},
                       timeout=30)
        assert r.status_code == 200, r.text
        return "original", r.json()["task_id"]
    r = httpx.post(url + "/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": f"风格 {i}",
                                                      "steps": STEPS, "lut_size": 17, "seed": i}, timeout=30)
    assert r.status_code == 200, r.text
    return "native", r.json()["task_id"]


def progress(url: str, task_id: str) -> dict | None:
    """A job's progress; None while the router has no answer (a 502/503 in the second after a replica dies, before
    its health check marks it down: a client polls again, as this one does)."""
    try:
        r = httpx.post(url + "/v1/progress", json={"task_id": task_id}, timeout=30)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def answered(send) -> dict:
    """The JSON of a call that answers 200, polled as :func:`progress` is (the router may answer 502 once)."""

    def attempt():
        try:
            r = send()
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    return wait(attempt, timeout=30, every=0.25)


def worker_pids(server) -> set[str]:
    return {str(p.pid) for p in psutil.Process(server.proc.pid).children(recursive=True)}


def test_an_api_replica_killed_mid_run_loses_no_job(tmp_path):
    servers, proxies = [], []
    store = RedisServer(tmp_path / "redis-host").start()
    try:
        optimizers = [host(tmp_path / f"optimizer-{i}", "service:Optimizer", **SETTINGS).start() for i in range(2)]
        servers += optimizers
        (tmp_path / "optimizer-router").mkdir()
        proxies.append(Proxy(tmp_path / "optimizer-router", [s.url for s in optimizers]))
        # (every server starts at once; the optimizers' router once they are ready, so it routes to both)
        apis = [host(tmp_path / f"api-{i}", "service:Retouch", CLIPDLUT_OPTIMIZER_URL=proxies[0].url,
                     CLIPDLUT_STORE=store.url, **SETTINGS).start() for i in range(2)]
        servers += apis
        for s in optimizers:
            s.wait_ready()
        proxies[0].start()
        for s in apis:
            s.wait_ready()
        (tmp_path / "router").mkdir()
        router = Proxy(tmp_path / "router", [s.url for s in apis]).start()
        proxies.append(router)
        db = redis.Redis.from_url(store.url, decode_responses=True)

        with ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(lambda i: submit(router.url, i), range(JOBS)))
        ids = [task_id for _, task_id in jobs]
        victim, survivor = apis
        victim_pids = worker_pids(victim)

        def victims_jobs_mid_run() -> list[str]:
            held = [t for t in ids if (db.hget(f"clipdlut:job:{t}", "owner") or "-").split("-")[1] in victim_pids]
            running = [t for t in held if 4 <= int(db.hget(f"clipdlut:job:{t}", "iteration") or 0) <= STEPS - 16]
            return held if len(running) >= 2 else []

        orphans = wait(victims_jobs_mid_run, timeout=120, every=0.05)
        victim.kill()

        for url in (router.url, survivor.url):  # through the router, and through the survivor itself
            for kind, task_id in jobs:
                done = wait(lambda t=task_id, u=url: (p := progress(u, t)) and p["status"] not in ("queued", "running")
                            and p, timeout=300, every=0.25)
                assert done["status"] == "finished" and done["iteration"] == STEPS, done
                if kind == "original":
                    q = answered(lambda u=url, t=task_id: httpx.post(u + "/query_task", json={
                        "task_id": t, "lut_format": "cube"}, timeout=30))
                    assert q["status"] == "finished" and base64.b64decode(q["lut"]).startswith(b"# prompt: ")
                else:
                    status = answered(lambda u=url, t=task_id: httpx.get(u + "/v1/retouch/status",
                                                                         params={"task_id": t}, timeout=30))
                    result = answered(lambda u=url, t=task_id: httpx.get(u + "/v1/retouch/get",
                                                                         params={"task_id": t}, timeout=30))
                    assert status["status"] == "completed" and result["task_id"] == task_id
                    assert result["cube"].startswith("# prompt: ") and result["steps"] == STEPS
        assert db.zcard("clipdlut:open") == 0 and db.xlen("clipdlut:drive") == 0  # none left open
        open_at_kill = [t for t in orphans if db.hget(f"clipdlut:job:{t}", "takeovers") == "1"]
        assert len(open_at_kill) >= 2  # those the victim was running when it died: taken over, then finished
        assert survivor.log().count("taken over from an API replica that stopped") == len(open_at_kill)

        store.stop()  # the job store goes away: every route that needs it says so at once, and to retry
        for method, path, kw in (("POST", "/v1/progress", {"json": {"task_id": ids[0]}}),
                                 ("GET", "/v1/retouch/status", {"params": {"task_id": ids[0]}}),
                                 ("POST", "/query_task", {"json": {"task_id": ids[1]}}),
                                 ("POST", "/v1/retouch/submit", {"json": {"image": PHOTO_B64,
                                                                          "target_prompt": "冷色"}})):
            r = httpx.request(method, survivor.url + path, timeout=30, **kw)
            assert r.status_code == 503 and r.headers["retry-after"], (path, r.text)
            assert r.json()["error"].startswith("the job store cannot be reached now (ConnectionError)"), r.text
        assert wait(lambda: (r := httpx.get(survivor.url + "/readyz", timeout=5)).status_code == 503 and r.json(),
                    timeout=10)["error"].startswith("the job store cannot be reached")
    finally:
        for s in servers:
            s.stop()
        for p in proxies:
            p.stop()
        store.stop()
