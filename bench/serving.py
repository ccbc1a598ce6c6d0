"""Serving: continuous batching against lock-step under the same Poisson arrivals, the service's own overhead
under locust on one host and split across two, on the SQLite and the Redis job store (tiny model, real
``bentoml serve``, Debian's ``redis-server``), and the optimizer's cold start (a scale from zero)."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.steps import PROMPTS
from clipdlut.guidance import Guide
from clipdlut.optimizer import BatchedOptimizer, JobSpec

ROOT = Path(__file__).resolve().parent.parent
MIN_STEPS, MAX_STEPS = 20, 60
MEAN_STEPS = (MIN_STEPS + MAX_STEPS) / 2
VIEWS, LUT_SIZE = 2, 17  # the simulated jobs' settings (small, so that a run takes a minute or two)


def _arrivals(n: int, rate_per_s: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1 / rate_per_s, n)), rng.integers(MIN_STEPS, MAX_STEPS + 1, n)


def simulate(guide: Guide, working: Image.Image, continuous: bool, jobs: int, rate_per_s: float, max_batch: int,
             seed: int = 0) -> dict:
    """Run ``jobs`` jobs arriving at ``rate_per_s`` (Poisson, 20-60 steps each) through one optimizer; each
    job's latency (arrival to result) and the time from the first arrival to the last result.

    Continuous: an arrival joins the running batch at the next step. Lock-step: a batch runs until all
    of its jobs are done, then takes whoever has arrived meanwhile.
    """
    times, steps = _arrivals(jobs, rate_per_s, seed)
    opt = BatchedOptimizer(guide)
    waiting: list[int] = list(range(jobs))
    done: dict[int, float] = {}
    start = time.perf_counter()
    while len(done) < jobs:
        now = time.perf_counter() - start
        may_admit = continuous or len(opt) == 0
        arrived = [i for i in waiting if times[i] <= now]
        if may_admit and arrived:
            take = arrived[: max_batch - len(opt)]
            for i in take:
                waiting.remove(i)
            opt.add([JobSpec(str(i), working, PROMPTS[i % len(PROMPTS)], steps=int(steps[i]), lut_size=LUT_SIZE,
                             views=VIEWS, seed=i, progress_every=10**6) for i in take])
        if len(opt) == 0:
            time.sleep(max(0.0, min(times[i] for i in waiting) - now) if waiting else 0)
            continue
        for r in opt.step():
            done[int(r.job_id)] = time.perf_counter() - start
    return {"mode": "continuous" if continuous else "lock-step", "seed": seed,
            "latencies_s": [done[i] - times[i] for i in range(jobs)], "makespan_s": max(done.values()) - times[0]}


def summarize(runs: list[dict]) -> dict:
    """p50/p95 latency over the jobs of all ``runs`` (one mode, several seeds) and jobs per minute."""
    latency = np.concatenate([r["latencies_s"] for r in runs])
    return {"mode": runs[0]["mode"], "jobs": len(latency), "seeds": [r["seed"] for r in runs],
            "p50_latency_s": float(np.percentile(latency, 50)), "p95_latency_s": float(np.percentile(latency, 95)),
            "throughput_jobs_per_min": float(len(latency) / sum(r["makespan_s"] for r in runs) * 60)}


class _Server:
    """``bentoml serve TARGET`` in a home of its own (its own BentoML home, job store and TMPDIR: a host of its own)."""

    def __init__(self, target: str, home: Path, **env: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "BENTOML_HOME": str(home), "CLIPDLUT_STORE": str(home / "jobs.db"),
                    "TMPDIR": str(home / "tmp"), "CLIPDLUT_CLIP_MODEL": "tiny", "HF_ENDPOINT": "http://127.0.0.1:9",
                    "BENTOML_DO_NOT_TRACK": "true", **env}
        self.log = home / "serve.log"
        self.started = time.perf_counter()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", target, "--port",
                                          str(self.port)], cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=60)

    def kill_optimizer(self) -> None:
        """SIGKILL the optimizer's worker process (BentoML starts a new one), as a crash would."""
        import psutil

        workers = [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                   if "clipdlut-optimizer" in " ".join(p.cmdline())]
        if not workers:
            raise RuntimeError("no optimizer worker to kill")
        for p in workers:
            p.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Redis:
    """Debian's ``redis-server`` on a free port, persisting to ``folder`` as the README asks (AOF, noeviction)."""

    def __init__(self, folder: Path):
        import shutil
        import socket

        folder.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                                      "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "yes",
                                      "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def locust_overhead(topology: str = "one host", store: str = "sqlite", seconds: int = 30, users: int = 8,
                    steps: int = 20) -> dict:
    """Submit/status latency and jobs per minute against real tiny-model servers, via the locustfile: ``one host``
    (``bentoml serve service:Retouch`` starts both services) or ``split`` (the optimizer served alone, the API
    pointed at it by URL, each with a home of its own); the job store a SQLite file or a Redis server. Each job
    runs ``steps`` optimizer steps (the locustfile's ``LOAD_STEPS``)."""
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as servers:  # (each stopped, whatever fails)
        env = {}
        if store == "redis":
            redis = _Redis(Path(folder) / "redis")
            servers.callback(redis.stop)
            env["CLIPDLUT_STORE"] = redis.url
        if topology == "split":
            optimizer = _Server("service:Optimizer", Path(folder) / "optimizer")
            servers.callback(optimizer.stop)
            api = _Server("service:Retouch", Path(folder) / "api", CLIPDLUT_OPTIMIZER_URL=optimizer.url, **env)
        else:
            api = _Server("service:Retouch", Path(folder) / "api", **env)
        servers.callback(api.stop)
        _wait_ready(f"{api.url}/readyz")  # (split: the API is ready once its optimizer is, both started at once)
        prefix = f"{folder}/locust"
        subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "locustfile.py"),
                        "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", api.url,
                        "--csv", prefix, "--only-summary"], cwd=ROOT, env={**api.env, "LOAD_STEPS": str(steps)},
                       check=True, capture_output=True)
        rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    jobs = sum(int(rows[n]["Request Count"]) - int(rows[n]["Failure Count"]) for n in rows if n.endswith("to result"))
    pick = {"submit": "/v1/retouch/submit", "status": "/v1/retouch/status"}
    out = {"topology": topology, "store": store, "seconds": seconds, "users": users, "steps": steps,
           "jobs_per_min": jobs / seconds * 60,
           "failures": sum(int(r["Failure Count"]) for n, r in rows.items() if n != "Aggregated")}
    for key, name in pick.items():
        out[f"{key}_p50_ms"] = float(rows[name]["50%"])
        out[f"{key}_p99_ms"] = float(rows[name]["99%"])
    return out


def cold_start(model: str, label: str, steps: int = 3) -> dict:
    """A scale-from-zero: the optimizer service started alone with ``model`` (``tiny`` or a checkpoint file), and a
    job sent at the moment of the start and sent again until a replica takes it, as a queue in front of a replica
    scaling up from zero would. Seconds from the process start to ready, and to that job's last event."""
    with tempfile.TemporaryDirectory() as folder:
        server = _Server("service:Optimizer", Path(folder), CLIPDLUT_CLIP_MODEL=model)
        try:
            ready_at, finished_at = first_job(server.url, steps)
        finally:
            server.stop()
    return {"model": label, "steps": steps, "to_ready_s": ready_at - server.started,
            "to_first_job_s": finished_at - server.started}


def first_job(url: str, steps: int = 3) -> tuple[float, float]:
    """When (``time.perf_counter``) the optimizer at ``url`` answered ready, and when a job sent to it from now on,
    again until taken, ended."""
    import asyncio
    import base64
    import io

    import httpx

    from bench.render import photo
    from clipdlut.imaging import working_copy
    from clipdlut.serving.wire import Failed, Finished, OptimizeRequest, read_events

    buf = io.BytesIO()
    working_copy(photo(640, 480)).save(buf, format="PNG")
    job = OptimizeRequest(job_id="cold-start", images=[base64.b64encode(buf.getvalue()).decode()],
                          target_prompt=PROMPTS[0], steps=steps, progress_every=steps)

    async def ready(client: httpx.AsyncClient) -> float:
        while True:
            try:
                if (await client.get("/readyz", timeout=2)).status_code == 200:
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)

    async def finished(client: httpx.AsyncClient) -> float:
        while True:
            try:
                async with client.stream("POST", "/optimize", json={"job": job.model_dump(mode="json")}) as r:
                    if r.status_code == 200:
                        async for event in read_events(r.aiter_text()):
                            if isinstance(event, Finished):
                                return time.perf_counter()
                            if isinstance(event, Failed):
                                raise RuntimeError(f"the cold-start job failed: {event.error}")
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)

    async def both() -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600, connect=2)) as client:
            return await asyncio.wait_for(asyncio.gather(ready(client), finished(client)), 900)

    return asyncio.run(both())


def soak(seconds: int = 180, users: int = 12, steps: int = 20) -> dict:
    """The locust users for ``seconds`` against a one-host tiny-model server, its optimizer SIGKILLed halfway, and
    ``/readyz`` probed every 0.25 s throughout: what happened to every accepted job (from the job store), how
    fast readiness answered, and how many calls between the services dropped."""
    import re
    import sqlite3
    import threading

    import httpx

    with tempfile.TemporaryDirectory() as folder:
        server = _Server("service:Retouch", Path(folder) / "api")
        probes: list[tuple[float, float, int]] = []  # (when, seconds, status)
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=5) as client:
                while not done.wait(0.25):
                    t0 = time.perf_counter()
                    try:
                        status = client.get(server.url + "/readyz").status_code
                    except httpx.HTTPError:
                        status = 0
                    probes.append((t0, time.perf_counter() - t0, status))

        try:
            _wait_ready(f"{server.url}/readyz")
            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            load = subprocess.Popen([str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "locustfile.py"),
                                     "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
                                     "--host", server.url, "--only-summary"], cwd=ROOT,
                                    env={**server.env, "LOAD_STEPS": str(steps)},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(seconds / 2)
            killed = time.perf_counter()
            server.kill_optimizer()
            load.wait(timeout=seconds + 120)
            db = Path(server.env["CLIPDLUT_STORE"])
            deadline = time.monotonic() + 180  # the jobs locust left running end on their own
            while time.monotonic() < deadline and _open_jobs(db):
                time.sleep(1)
            done.set()
            prober.join()
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT status, COALESCE(error, '') FROM jobs").fetchall()
            log = server.log.read_text(errors="replace")
        finally:
            done.set()
            server.stop()
    latency = np.array([t for _, t, _ in probes]) * 1000
    calm = np.array([t for when, t, _ in probes if when < killed]) * 1000  # (before the kill: no fault at all)
    failed: dict[str, int] = {}
    for status, error in rows:
        if status == "failed":
            failed[error[:80]] = failed.get(error[:80], 0) + 1
    return {"seconds": seconds, "users": users, "steps": steps, "accepted": len(rows),
            "finished": sum(s == "finished" for s, _ in rows), "cancelled": sum(s == "cancelled" for s, _ in rows),
            "failed": failed, "lost": sum(s in ("queued", "running") for s, _ in rows),
            "ready_probes": len(probes), "ready_p50_ms": float(np.percentile(latency, 50)),
            "ready_p99_ms": float(np.percentile(latency, 99)), "ready_max_ms": float(latency.max()),
            "ready_p99_before_kill_ms": float(np.percentile(calm, 99)), "probes_before_kill": len(calm),
            "not_ready_probes": sum(s != 200 for *_, s in probes),
            "streams_resent": len(re.findall(r"stream broke", log)),
            "calls_dropped": len(re.findall(r"call to the optimizer's \w+ dropped", log))}


def _open_jobs(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]


def write_random_checkpoint(name: str, folder: Path) -> Path:
    """A checkpoint of architecture ``name`` with seeded random weights, saved as the released files are (fp16)."""
    from clipdlut.models import MODELS, load_random

    model = load_random(name, "cpu").model
    path = folder / MODELS[name][1]
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path


def _wait_ready(url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} never became ready")
