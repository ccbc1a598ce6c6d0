"""Clients of their own on real servers: one optimizer (a batch of 4), two API replicas sharing a SQLite file (one
host) and two sharing a Redis server (several hosts), all reading one clients file (as each host's mounted copy of
it would be).

Another client's task is answered exactly as an unknown id on every route that names a task, as listed by the
OpenAPI document (a new route cannot be missed), through every replica; quotas answer 429 naming themselves;
a key added to or removed from the file works or stops within seconds without a restart; /metrics counts each
client's jobs and image passes. A noisy neighbour's backlog does not hold another client's jobs back: the fair
queue gives each client its weighted share of the slots."""

from __future__ import annotations

import base64
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime

import httpx
import pytest

from bench import fairness
from clipdlut import clients
from tests.conftest import gradient_image, png_bytes, wait
from tests.live import RedisServer, Server, host, redis_missing

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))]
SETTINGS = {"CLIPDLUT_PROGRESS_EVERY": "1", "CLIPDLUT_VIEWS": "2", "CLIPDLUT_WORKING_SIZE": "64",
            "CLIPDLUT_MAX_BATCH_SIZE": "4"}
PHOTO_B64 = base64.b64encode(png_bytes(gradient_image(64, 48))).decode()
QUOTAS = {"alice": {}, "bob": {}, "carol": {"max_open_jobs": 1}, "dave": {"jobs_per_hour": 1}, "heavy": {"weight": 2},
          "ops": {"operator": True}}


class Deployment:
    """The servers, the clients file and each client's key."""

    def __init__(self, folder, stack: ExitStack):
        self.file = folder / "clients.toml"
        self.keys = {name: clients.add(self.file, name, **quota) for name, quota in QUOTAS.items()}
        redis = RedisServer(folder / "redis").start()
        stack.callback(redis.stop)
        optimizer = self._start(stack, host(folder / "optimizer", "service:Optimizer", **SETTINGS))
        common = {**SETTINGS, "CLIPDLUT_OPTIMIZER_URL": optimizer.url, "CLIPDLUT_CLIENTS": str(self.file),
                  "CLIPDLUT_LEGACY_CLIENT": "alice"}
        stores = {"sqlite": str(folder / "one-host" / "jobs.db"), "redis": redis.url}
        self.apis = {kind: [self._start(stack, host(folder / f"api-{kind}-{i}", "service:Retouch",
                                                    CLIPDLUT_STORE=store, **common)) for i in range(2)]
                     for kind, store in stores.items()}
        for server in (optimizer, *self.apis["sqlite"], *self.apis["redis"]):
            server.wait_ready()

    @staticmethod
    def _start(stack: ExitStack, server: Server) -> Server:
        stack.callback(server.stop)
        return server.start()

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    with ExitStack() as stack:
        yield Deployment(tmp_path_factory.mktemp("clients"), stack)


def submit(url: str, headers: dict, steps: int = 3, **extra) -> httpx.Response:
    return httpx.post(url + "/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "warm film look",
                                                         "steps": steps, "lut_size": 17, **extra},
                      headers=headers, timeout=30)


def progress(url: str, headers: dict, task_id: str) -> dict:
    r = httpx.post(url + "/v1/progress", json={"task_id": task_id}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def ended(url: str, headers: dict, task_id: str) -> dict:
    return wait(lambda: (p := progress(url, headers, task_id))["status"] not in ("queued", "running") and p,
                timeout=120, every=0.2)


Call = Callable[[httpx.Client, str], httpx.Response]
# every route that names a task, and how to name one in it (the test checks this is every such route)
ROUTES: dict[tuple[str, str], Call] = {
    ("post", "/v1/progress"): lambda c, t: c.post("/v1/progress", json={"task_id": t}),
    ("post", "/v1/cancel"): lambda c, t: c.post("/v1/cancel", json={"task_id": t}),
    ("post", "/v1/lut"): lambda c, t: c.post("/v1/lut", json={"task_id": t, "format": "cube"}),
    ("get", "/v1/retouch/status"): lambda c, t: c.get("/v1/retouch/status", params={"task_id": t}),
    ("get", "/v1/retouch/get"): lambda c, t: c.get("/v1/retouch/get", params={"task_id": t}),
    ("head", "/v1/retouch/status"): lambda c, t: c.head("/v1/retouch/status", params={"task_id": t}),
    ("head", "/v1/retouch/get"): lambda c, t: c.head("/v1/retouch/get", params={"task_id": t}),
    ("put", "/v1/retouch/cancel"): lambda c, t: c.put("/v1/retouch/cancel", params={"task_id": t}),
    ("post", "/v1/retouch/retry"): lambda c, t: c.post("/v1/retouch/retry", params={"task_id": t}),
    ("post", "/v1/retouch/submit"): lambda c, t: c.post("/v1/retouch/submit", json={
        "image": PHOTO_B64, "target_prompt": "更暖一点", "start_from": t, "steps": 2}),
    ("post", "/v1/retouch"): lambda c, t: c.post("/v1/retouch", json={
        "image": PHOTO_B64, "target_prompt": "更暖一点", "start_from": t, "steps": 2}),
    ("post", "/query_task"): lambda c, t: c.post("/query_task", json={"task_id": t, "lut_format": "cube"}),
    ("post", "/stop_task"): lambda c, t: c.post("/stop_task", json={"task_id": t}),
}


def routes_naming_a_task(doc: dict) -> set[tuple[str, str]]:
    """Every operation of the OpenAPI document with a ``task_id`` or ``start_from`` parameter or body field."""
    found = set()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            names = {p["name"] for p in op.get("parameters", [])}
            for content in op.get("requestBody", {}).get("content", {}).values():
                schema = content.get("schema", {})
                if "$ref" in schema:
                    schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
                names |= set(schema.get("properties", {}))
            if names & {"task_id", "start_from"}:
                found.add((method, path))
                if method == "get":  # (a server answers HEAD wherever it answers GET)
                    found.add(("head", path))
    return found


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_another_clients_task_is_answered_as_an_unknown_id_on_every_route_and_replica(deployment, kind):
    first, second = (api.url for api in deployment.apis[kind])
    alice, bob = deployment.headers("alice"), deployment.headers("bob")
    doc = httpx.get(first + "/docs.json", timeout=30).json()
    assert routes_naming_a_task(doc) == set(ROUTES)
    finished = submit(first, alice).json()["task_id"]
    legacy = httpx.post(second + "/retouch", json={"image": PHOTO_B64, "target_prompt": "冷色调", "iteration": 3},
                        timeout=30).json()["task_id"]  # (the original API, no key: the legacy client, alice)
    for task in (finished, legacy):
        assert ended(first, alice, task)["status"] == "finished"
    running = submit(second, alice, steps=2000).json()["task_id"]
    before = wait(lambda: (p := progress(first, alice, running))["iteration"] > 0 and p, timeout=60)
    for url in (first, second):
        with httpx.Client(base_url=url, headers=bob, timeout=60) as as_bob:
            for route, call in ROUTES.items():
                for task in (finished, legacy, running):
                    unknown = uuid.uuid4().hex if len(task) == 32 else str(uuid.uuid4())
                    theirs, nobodys = call(as_bob, task), call(as_bob, unknown)
                    assert theirs.status_code == nobodys.status_code == 404, (route, theirs.text, nobodys.text)
                    assert theirs.text.replace(task, unknown) == nobodys.text, route
    seen = progress(second, alice, running)
    assert seen["status"] == "running" and seen["iteration"] >= before["iteration"]  # (bob's cancels reached nothing)
    assert seen["iteration"] < 2000
    assert httpx.post(first + "/v1/cancel", json={"task_id": running}, headers=alice, timeout=30).status_code == 200
    assert ended(second, alice, running)["status"] == "cancelled"
    _same_time(lambda: httpx.post(first + "/v1/progress", json={"task_id": finished}, headers=bob, timeout=30),
               lambda: httpx.post(first + "/v1/progress", json={"task_id": uuid.uuid4().hex}, headers=bob,
                                  timeout=30))


def _same_time(theirs: Callable[[], httpx.Response], nobodys: Callable[[], httpx.Response], rounds: int = 15) -> None:
    """Another client's id and an unknown one take the same time to answer, within noise (medians of alternate
    calls): nothing more is looked up for one than for the other."""
    times: dict[str, list[float]] = {"theirs": [], "nobodys": []}
    for _ in range(rounds):
        for name, call in (("theirs", theirs), ("nobodys", nobodys)):
            start = time.perf_counter()
            assert call().status_code == 404
            times[name].append(time.perf_counter() - start)
    a, b = statistics.median(times["theirs"]), statistics.median(times["nobodys"])
    assert abs(a - b) < max(0.01, 0.5 * max(a, b)), times


def test_quotas_answer_429_naming_the_quota_on_every_replica(deployment):
    first, second = (api.url for api in deployment.apis["redis"])
    carol, dave = deployment.headers("carol"), deployment.headers("dave")
    long_job = submit(first, carol, steps=2000)
    assert long_job.status_code == 200, long_job.text
    refused = submit(second, carol)
    assert refused.status_code == 429 and "max_open_jobs" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    assert submit(first, carol, image="not a photo").status_code == 429  # (refused before its photo is decoded)
    httpx.post(second + "/v1/cancel", json={"task_id": long_job.json()["task_id"]}, headers=carol, timeout=30)
    ended(first, carol, long_job.json()["task_id"])
    assert submit(second, carol).status_code == 200  # (its one open job ended)
    assert submit(first, dave).status_code == 200
    refused = submit(second, dave)
    assert refused.status_code == 429 and "jobs_per_hour" in refused.json()["error"]
    legacy = httpx.post(first + "/retouch", json={"image": "not a photo", "target_prompt": "冷色调"}, headers=dave,
                        timeout=30)
    assert legacy.status_code == 429 and "jobs_per_hour" in legacy.json()["error"]  # (the original API too)
    assert 3500 <= int(refused.headers["retry-after"]) <= 3600
    assert submit(first, deployment.headers("bob")).status_code == 200  # (others are not held back)


def test_a_key_added_or_removed_works_or_stops_within_seconds_without_a_restart(deployment):
    replicas = [api.url for kind in ("sqlite", "redis") for api in deployment.apis[kind]]
    r = subprocess.run([sys.executable, "-m", "clipdlut", "clients", "add", "erin", "--file", str(deployment.file)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    erin = {"Authorization": f"Bearer {r.stdout.strip()}"}

    def answer(url: str) -> int:
        return httpx.post(url + "/v1/progress", json={"task_id": uuid.uuid4().hex}, headers=erin,
                          timeout=30).status_code

    start = time.monotonic()
    for url in replicas:
        wait(lambda u=url: answer(u) == 404, timeout=10, every=0.2)  # (known: an unknown id, not a 401)
    added_s = time.monotonic() - start
    text = deployment.file.read_text()
    deployment.file.write_text(re.sub(r"\n*\[clients\.erin\][^\[]*", "\n", text))
    for url in replicas:
        wait(lambda u=url: answer(u) == 401, timeout=10, every=0.2)
    assert added_s < 5 and r.stdout.strip() not in deployment.file.read_text()


def test_metrics_count_each_clients_jobs_and_image_passes(deployment):
    url = deployment.apis["sqlite"][0].url
    alice = deployment.headers("alice")
    task = submit(url, alice, steps=4).json()["task_id"]
    assert ended(url, alice, task)["status"] == "finished"
    assert httpx.get(url + "/metrics", headers=alice, timeout=30).status_code == 403  # (every client's figures)
    text = httpx.get(url + "/metrics", headers=deployment.headers("ops"), timeout=30).text

    def value(name: str) -> float:
        m = re.search(rf'^{name}{{[^}}]*client="alice"[^}}]*}} ([0-9.e+]+)$', text, re.M)
        assert m, name
        return float(m.group(1))

    assert value("clipdlut_client_jobs_accepted_total") >= 1
    assert value("clipdlut_client_image_passes_total") >= 4 * 2  # (steps x views x photos)
    assert value("clipdlut_client_queue_wait_seconds_count") >= 1
    assert re.search(r'clipdlut_client_jobs_ended_total{[^}]*client="alice"[^}]*status="finished"', text) or \
        re.search(r'clipdlut_client_jobs_ended_total{[^}]*status="finished"[^}]*client="alice"', text)


A_JOBS, STEPS = 24, 30
IN_FLIGHT_S = 0.05  # (an a job whose turn came just before b's was queued may be taken by the optimizer just after)
PASSES = STEPS * int(SETTINGS["CLIPDLUT_VIEWS"])  # (a job's image passes: one photo)


def noisy_neighbour(deployment, a_url: str, a: str, b_url: str, b: str, b_jobs: int) -> dict:
    """``a`` submits 24 jobs of 30 steps, then ``b`` submits its own; what each client got (bench/fairness.py)."""
    a_ids = [submit(a_url, deployment.headers(a), steps=STEPS).json()["task_id"] for _ in range(A_JOBS)]
    b_ids = [submit(b_url, deployment.headers(b), steps=STEPS).json()["task_id"] for _ in range(b_jobs)]
    for url, name, ids in ((a_url, a, a_ids), (b_url, b, b_ids)):
        for task in ids:
            assert ended(url, deployment.headers(name), task)["status"] == "finished"
    submitted = datetime.fromisoformat(httpx.get(b_url + "/v1/retouch/status", params={"task_id": b_ids[0]},
                                                 headers=deployment.headers(b), timeout=30).json()["created_at"])
    a_spans = fairness.spans(a_url, deployment.keys[a], a_ids)
    b_spans = fairness.spans(b_url, deployment.keys[b], b_ids)
    return {"a": a_spans, "b": b_spans, "b_submitted": submitted.timestamp(),
            **fairness.shares(a_spans, b_spans, submitted.timestamp(), PASSES)}


def starts(run: dict) -> str:
    """Each client's job spans from just before b came, on b's clock (what a failed check shows)."""
    since = run["b_submitted"]
    spans = sorted((round(s - since, 3), round(e - since, 3), n) for n in ("a", "b") for s, e in run[n] if e > since)
    return f"{spans}; {({k: v for k, v in run.items() if k not in ('a', 'b')})}"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_noisy_neighbours_backlog_does_not_hold_another_client_back(deployment, kind):
    """Equal weights. On Redis, one replica submits for a and the other for b."""
    first, second = (api.url for api in deployment.apis[kind])
    run = noisy_neighbour(deployment, first, "alice", second if kind == "redis" else first, "bob", b_jobs=4)
    started_after_b = sorted((start, name) for name in ("a", "b") for start, _ in run[name]
                             if start > run["b_submitted"] + (IN_FLIGHT_S if name == "a" else 0))
    assert started_after_b[0][1] == "b" and run["b_first_after_turnover_s"] < 1.0, starts(run)  # (the next slot)
    assert run["a_finished_by_then"] < A_JOBS / 2  # (all of b's finished before half of a's backlog)
    assert abs(a_slots_between_b(run) - (len(run["b"]) - 1)) <= 1, starts(run)  # (a slot each, in turn)


def test_weights_share_the_slots_two_to_one(deployment):
    first = deployment.apis["sqlite"][0].url
    run = noisy_neighbour(deployment, first, "heavy", first, "bob", b_jobs=8)
    assert abs(a_slots_between_b(run) - 2 * (len(run["b"]) - 1)) <= 1, starts(run)


def a_slots_between_b(run: dict) -> int:
    """The slots a took between b's first start and its last, while both had jobs waiting: with jobs of one size,
    a's weight over b's for each of b's (the queue's own choices, counted; the image passes served in a window of a
    few jobs, bench/fairness.py's measure, move by a job's worth at its edges)."""
    b_starts = sorted(start for start, _ in run["b"])
    return sum(b_starts[0] < start < b_starts[-1] for start, _ in run["a"])
