"""The job store goes away under load, and comes back: readiness follows it (the chaos probe found API replicas
answering ready for most of a Redis outage, flapping, and logging a traceback per flip).

Real servers: `bentoml serve` replicas, Debian's redis-server (SIGKILLed, then started again on its AOF), a SQLite
file locked by another process. Clients keep submitting and polling throughout, and `/readyz` of every replica is
probed every 0.1 s."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import gradient_image, on, png_bytes, wait, wait_ready
from tests.live import RedisServer, Server, host, redis_missing

pytestmark = pytest.mark.e2e
SETTINGS = {"CLIPDLUT_PROGRESS_EVERY": "2", "CLIPDLUT_VIEWS": "2", "CLIPDLUT_WORKING_SIZE": "96"}
PHOTO_B64 = base64.b64encode(png_bytes(gradient_image(120, 90))).decode()
OUTAGE_S = 8.0
# a replica notices within a ping's interval and timeout (1 s + 2 s; a route's failed call at once), on a busy host
NOTICED_S = 3.5
DOWN, UP = "not ready: the job store cannot be reached", "the job store answers again"


class Probes:
    """``/readyz`` of each server every 0.1 s, and clients submitting jobs and polling them, in threads."""

    def __init__(self, servers: list[Server]):
        self.servers = servers
        self.answers: dict[str, list[tuple[float, int]]] = {s.url: [] for s in servers}
        self.accepted: list[tuple[str, str]] = []  # (server url, task id) of every job a server took
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._probe, args=(s.url,)) for s in servers]
        self._threads += [threading.Thread(target=self._client, args=(i,)) for i in range(3)]

    def __enter__(self) -> Probes:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _probe(self, url: str) -> None:
        while not self._stop.is_set():
            try:
                status = httpx.get(url + "/readyz", timeout=2).status_code
            except httpx.HTTPError:
                status = 0
            self.answers[url].append((time.monotonic(), status))
            time.sleep(0.1)

    def _client(self, i: int) -> None:
        """Submit a short job, poll it a few times; again (errors are what an outage gives: carry on)."""
        while not self._stop.is_set():
            url = self.servers[i % len(self.servers)].url
            i += 1
            try:
                r = httpx.post(url + "/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "冷色调",
                                                                  "steps": 6, "lut_size": 17}, timeout=40)
                if r.status_code == 200:
                    self.accepted.append((url, r.json()["task_id"]))
                    for _ in range(5):
                        httpx.post(url + "/v1/progress", json={"task_id": r.json()["task_id"]}, timeout=40)
                        time.sleep(0.1)
            except httpx.HTTPError:
                time.sleep(0.1)

    def during(self, url: str, start: float, end: float) -> list[int]:
        return [status for t, status in self.answers[url] if start <= t <= end]


def check_outage(probes: Probes, cut: float, mended: float) -> None:
    """While the store was out of reach every probe answered 503, from the moment each replica noticed until the
    store was back; none answered 200 in between (no flapping); each is ready again afterwards."""
    for server in probes.servers:
        noticed = probes.during(server.url, cut + NOTICED_S, mended)
        assert noticed and set(noticed) == {503}, (server.url, noticed)
        after_cut = probes.during(server.url, cut, mended)
        first_503 = after_cut.index(503)
        assert 200 not in after_cut[first_503:], after_cut  # (not ready until the store answers again)
        wait_ready(on(server.url, timeout=5), timeout=20)


def check_logs(servers: list[Server]) -> None:
    """One warning when the outage began and one line when it ended, on each replica."""
    for server in servers:
        log = server.log()
        assert log.count(DOWN) == 1 and log.count(UP) == 1, [line for line in log.splitlines() if "job store" in line]


def check_jobs_finish(probes: Probes) -> None:
    """Every job a replica accepted finishes (those accepted before the outage were driven through it)."""
    assert len(probes.accepted) >= 3
    for url, task_id in probes.accepted:
        done = wait(lambda u=url, t=task_id: (r := httpx.post(u + "/v1/progress", json={"task_id": t}, timeout=10)
                                              ).status_code == 200 and r.json()["status"] not in ("queued", "running")
                    and r.json(), timeout=120, every=0.25)
        assert done["status"] == "finished", done


def outage(probes: Probes, cut: Callable[[], None], mend: Callable[[], None]) -> tuple[float, float]:
    time.sleep(3)  # (load before the outage)
    cut()
    began = time.monotonic()
    time.sleep(OUTAGE_S)
    mend()
    ended = time.monotonic()
    time.sleep(3)
    return began, ended


@pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))
def test_redis_killed_under_load_makes_every_replica_not_ready_until_it_answers_again(tmp_path):
    with ExitStack() as stack:
        store = RedisServer(tmp_path / "redis-host").start()
        stack.callback(store.stop)
        optimizer = host(tmp_path / "optimizer", "service:Optimizer", **SETTINGS).start()
        stack.callback(optimizer.stop)
        apis = [host(tmp_path / f"api-{i}", "service:Retouch", CLIPDLUT_OPTIMIZER_URL=optimizer.url,
                     CLIPDLUT_STORE=store.url, **SETTINGS).start() for i in range(2)]
        for api in apis:
            stack.callback(api.stop)
        for server in (optimizer, *apis):
            server.wait_ready()
        with Probes(apis) as probes:
            cut, mended = outage(probes, store.stop, store.start)  # (SIGKILL; then the same port, its AOF)
        check_outage(probes, cut, mended)
        check_logs(apis)
        check_jobs_finish(probes)


def test_a_sqlite_store_locked_by_another_process_makes_the_api_not_ready_until_it_is_free(tmp_path):
    api = Server(tmp_path / "home", SETTINGS).start()
    locker: list[subprocess.Popen] = []

    def lock() -> None:  # (another process holds the file's write lock: a stuck writer, a backup)
        locker.append(subprocess.Popen([sys.executable, "-c", "import sqlite3, time\n"
                                        f"c = sqlite3.connect({str(tmp_path / 'home' / 'jobs.db')!r}, "
                                        "isolation_level=None, timeout=60)\n"
                                        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(600)"],
                                       stdout=subprocess.PIPE, text=True))
        assert locker[0].stdout.readline().strip() == "locked"

    def unlock() -> None:
        locker[0].kill()
        locker[0].wait()

    try:
        api.wait_ready()
        with Probes([api]) as probes:
            cut, mended = outage(probes, lock, unlock)
        check_outage(probes, cut, mended)
        check_logs([api])
        check_jobs_finish(probes)
    finally:
        if locker and locker[0].poll() is None:
            unlock()
        api.stop()
