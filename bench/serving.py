"""Serving: continuous batching against lock-step under the same Poisson arrivals, and the service's own
overhead under locust (tiny model, real ``bentoml serve``)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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
    waiting, done = list(range(jobs)), {}
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


def locust_overhead(seconds: int = 30, users: int = 8) -> dict:
    """Submit/status latency and jobs per minute against a real tiny-model server, via the locustfile."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "BENTOML_HOME": home, "CLIPDLUT_STORE": f"{home}/jobs.db", "CLIPDLUT_CLIP_MODEL": "tiny",
               "HF_ENDPOINT": "http://127.0.0.1:9", "BENTOML_DO_NOT_TRACK": "true"}
        port = 3917
        bin_dir = Path(sys.executable).parent
        server = subprocess.Popen([str(bin_dir / "bentoml"), "serve", "service:Retouch", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            _wait_ready(f"http://127.0.0.1:{port}/readyz")
            prefix = f"{home}/locust"
            subprocess.run([str(bin_dir / "locust"), "-f", str(ROOT / "locustfile.py"), "--headless", "-u", str(users),
                            "-r", str(users), "-t", f"{seconds}s", "--host", f"http://127.0.0.1:{port}", "--csv",
                            prefix, "--only-summary"], cwd=ROOT, env=env, check=True, capture_output=True)
            rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    jobs = sum(int(rows[n]["Request Count"]) - int(rows[n]["Failure Count"]) for n in rows if n.endswith("to result"))
    pick = {"submit": "/v1/retouch/submit", "status": "/v1/retouch/status"}
    out = {"seconds": seconds, "users": users, "jobs_per_min": jobs / seconds * 60,
           "failures": sum(int(r["Failure Count"]) for n, r in rows.items() if n != "Aggregated")}
    for key, name in pick.items():
        out[f"{key}_p50_ms"] = float(rows[name]["50%"])
        out[f"{key}_p99_ms"] = float(rows[name]["99%"])
    return out


def _wait_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} never became ready")
