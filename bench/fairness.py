"""``python -m bench.fairness [--quick]``: the fair queue's own cost, and a noisy neighbour on a real server.

- Queue cost: the job store calls one admission makes (the job queued, the head read twice, the charge), on SQLite
  and on Redis, with 1 and with 50 clients waiting (4 jobs each): p50 and p99 of their sum.
- Noisy neighbour: one tiny-model server, a batch of 4; client a submits 24 jobs of 30 steps, then b submits 4.
  With the fair queue, and with first come (``CLIPDLUT_FAIR_SHARE=0``) as the baseline in the same run: b's wait
  for its first slot, when b's last job ended and how many of a's had by then, and Jain's index of the image passes
  served while both had jobs waiting. (A ``--quick`` run measures the queue's cost only: the e2e tests run the
  neighbours.)
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from bench.serving import _Redis, _Server, _wait_ready
from clipdlut import clients
from clipdlut.serving.stores import JobStore, open_store

STEPS, VIEWS, A_JOBS = 30, 2, 24
SERVER = {"CLIPDLUT_MAX_BATCH_SIZE": "4", "CLIPDLUT_VIEWS": str(VIEWS), "CLIPDLUT_WORKING_SIZE": "64",
          "CLIPDLUT_PROGRESS_EVERY": "5"}


async def _admissions(store: JobStore, waiting_clients: int, rounds: int, per_client: int = 4) -> list[float]:
    """Seconds of each admission's store calls, with ``waiting_clients`` clients keeping ``per_client`` jobs queued."""
    async def join(client: str) -> None:
        job = uuid.uuid4().hex
        await store.create(job, {"steps": STEPS}, b"", b"", owner="bench", client=client)
        await store.queue(job, client)

    for c in range(waiting_clients):
        for _ in range(per_client):
            await join(f"client-{c}")
    times: list[float] = []
    for _ in range(rounds):
        job = uuid.uuid4().hex
        client = f"client-{len(times) % waiting_clients}"
        await store.create(job, {"steps": STEPS}, b"", b"", owner="bench", client=client)  # (the submission)
        start = time.perf_counter()
        await store.queue(job, client)
        head = await store.head()
        assert head is not None and await store.head() == head  # (the head's own check before it goes)
        record = await store.get(head)  # (the driver knows it: here it is looked up, outside the timing)
        spent = time.perf_counter() - start
        start = time.perf_counter()
        await store.charge(record.client if record else "", STEPS * VIEWS, started=head)
        times.append(spent + time.perf_counter() - start)
    return times


def queue_cost(rounds: int) -> list[dict]:
    """p50 and p99 of one admission on each store, with 1 and 50 clients waiting."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fair-") as tmp:
        redis = _Redis(Path(tmp) / "redis")
        try:
            for kind in ("sqlite", "redis"):
                for waiting in (1, 50):
                    location = str(Path(tmp) / f"{waiting}.db") if kind == "sqlite" else redis.url
                    ms = np.array(asyncio.run(_row(location, waiting, rounds))) * 1000
                    rows.append({"store": kind, "waiting_clients": waiting, "admissions": rounds,
                                 "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})
        finally:
            redis.stop()
    return rows


async def _row(location: str, waiting: int, rounds: int) -> list[float]:
    """One row on a fresh store (a Redis database emptied first)."""
    if location.startswith("redis://"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(location)
        await client.flushdb()
        await client.aclose()
    store = open_store(location)
    try:
        return await _admissions(store, waiting, rounds)
    finally:
        await store.close()


def spans(url: str, key: str, ids: list[str]) -> list[tuple[float, float]]:
    """When each finished job held an optimizer slot: (start, end) on the API's clock."""
    out = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for task in ids:
            created = c.get("/v1/retouch/status", params={"task_id": task}).json()["created_at"]
            timings = c.get("/v1/retouch/get", params={"task_id": task}).json()["timings"]
            start = datetime.fromisoformat(created).timestamp() + timings["queued_s"]
            out.append((start, start + timings["optimize_s"]))
    return out


def served(jobs: list[tuple[float, float]], since: float, until: float, passes: float) -> float:
    """Image passes served between ``since`` and ``until``: each job's ``passes``, spread evenly over its run."""
    return sum(passes * max(0.0, min(end, until) - max(start, since)) / max(end - start, 1e-9)
               for start, end in jobs)


def shares(a: list[tuple[float, float]], b: list[tuple[float, float]], b_submitted: float, passes: float,
           weights: tuple[float, float] = (1, 1)) -> dict:
    """What each client got while both had jobs waiting (from the first slot that freed after b came, when the
    queue first had a choice, to b's last start), over its weight; Jain's index of those; b's wait for its first
    slot, and that slot turnover."""
    turnover = min((end for start, end in a if start < b_submitted < end), default=b_submitted)
    last = max(start for start, _ in b)
    x = served(a, turnover, last, passes) / weights[0], served(b, turnover, last, passes) / weights[1]
    first_b = min(start for start, _ in b)
    return {"a_share": x[0], "b_share": x[1], "jain": sum(x) ** 2 / (2 * (x[0] ** 2 + x[1] ** 2) or 1),
            "b_first_wait_s": first_b - b_submitted, "b_first_after_turnover_s": first_b - turnover,
            "b_last_end_s": max(end for _, end in b) - b_submitted,
            "a_finished_by_then": sum(end <= max(e for _, e in b) for _, end in a)}


def neighbours(url: str, keys: dict[str, str], b_jobs: int = 4) -> dict:
    """a's 24 jobs, then b's; each client's job spans and when b submitted."""
    photo = _photo()

    def submit(name: str) -> str:
        r = httpx.post(url + "/v1/retouch/submit", json={"image": photo, "target_prompt": f"{name}'s look",
                                                          "steps": STEPS, "lut_size": 17},
                       headers={"Authorization": f"Bearer {keys[name]}"}, timeout=60)
        r.raise_for_status()
        return r.json()["task_id"]

    ids = {"a": [submit("a") for _ in range(A_JOBS)]}
    b_submitted = time.time()
    ids["b"] = [submit("b") for _ in range(b_jobs)]
    deadline = time.monotonic() + 600
    with httpx.Client(base_url=url, timeout=60) as c:
        for name, tasks in ids.items():
            for task in tasks:
                while c.get("/v1/retouch/status", params={"task_id": task},
                            headers={"Authorization": f"Bearer {keys[name]}"}).json()["status"] != "completed":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the noisy neighbour's jobs did not finish in 10 minutes")
                    time.sleep(0.2)
    return {"a": spans(url, keys["a"], ids["a"]), "b": spans(url, keys["b"], ids["b"]), "b_submitted": b_submitted}


def _photo() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((64, 48)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def noisy_neighbour() -> list[dict]:
    """The same neighbours with the fair queue and with first come, each on a server of its own."""
    rows = []
    for fair in (False, True):
        with tempfile.TemporaryDirectory(prefix="bench-neighbours-") as tmp:
            file = Path(tmp) / "clients.toml"
            keys = {name: clients.add(file, name) for name in ("a", "b")}
            server = _Server("service:Retouch", Path(tmp) / "home", CLIPDLUT_CLIENTS=str(file),
                             CLIPDLUT_FAIR_SHARE=str(fair).lower(), **SERVER)
            try:
                _wait_ready(server.url)
                run = neighbours(server.url, keys)
            finally:
                server.stop()
        rows.append({"mode": "fair queue" if fair else "first come",
                     **shares(run["a"], run["b"], run["b_submitted"], STEPS * VIEWS)})
    return rows


def run(command: str, quick: bool = False) -> dict:
    """The section, as measured by ``command``: the queue's cost, and (a full run) the noisy neighbour against its
    first-come baseline."""
    section: dict = {"command": command, "measured": time.strftime("%Y-%m-%d %H:%M"),
                     "queue_cost": queue_cost(50 if quick else 500)}
    section["noisy_neighbour"] = {"skipped": "a --quick run leaves it out"} if quick else {
        "a_jobs": A_JOBS, "b_jobs": 4, "steps": STEPS, "views": VIEWS, "batch": 4, "runs": noisy_neighbour()}
    return section


def lines(f: dict) -> list[str]:
    """The section in ``bench/results.md``."""
    out = ["", f"Fair share (`{f['command']}`, {f['measured']}). The fair queue's own cost: one admission's "
           "job-store calls (the job queued, the head read twice, the charge), with clients waiting 4 jobs each:", "",
           "| job store | clients waiting | admission p50 | admission p99 |", "| --- | --- | --- | --- |"]
    out += [f"| {r['store']} | {r['waiting_clients']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |"
            for r in f["queue_cost"]]
    nn = f["noisy_neighbour"]
    if "runs" not in nn:
        return out + ["", f"Noisy neighbour: {nn['skipped']}."]
    first, fair = (next(r for r in nn["runs"] if r["mode"] == m) for m in ("first come", "fair queue"))
    out += ["", f"Noisy neighbour (tiny model, one host, a batch of {nn['batch']}): a submits {nn['a_jobs']} jobs of "
            f"{nn['steps']} steps, then b submits {nn['b_jobs']}. Jain's index is of the image passes served while "
            "both had jobs waiting (1.0: equal shares).", "",
            "| queue | b's wait for a slot | b's first slot after the first that freed | b's last result | a's jobs "
            "done by then | Jain's index |", "| --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['mode']} | {r['b_first_wait_s']:.1f} s | {r['b_first_after_turnover_s']:.2f} s | "
            f"{r['b_last_end_s']:.1f} s | {r['a_finished_by_then']} of {nn['a_jobs']} | {r['jain']:.2f} |"
            for r in (first, fair)]
    out += ["", f"b's last result came {first['b_last_end_s'] / fair['b_last_end_s']:.1f}x sooner with the fair "
            "queue than first come."]
    return out


def main() -> None:
    from bench.__main__ import one_section

    one_section("fairness", __doc__, "the queue's cost only, 50 admissions a row", run, lines)


if __name__ == "__main__":
    main()
