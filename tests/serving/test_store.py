"""The job store contract (clipdlut/serving/stores/), one suite run on every implementation: SQLite and Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from clipdlut.serving.errors import StoreUnavailable
from clipdlut.serving.stores import JobStore, Quota, Refusal, open_store
from clipdlut.status import JobStatus
from tests.live import RedisServer, redis_missing

pytestmark = pytest.mark.unit
KINDS = ["sqlite", "redis"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if reason := redis_missing():
        pytest.skip(reason)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def location(request, tmp_path):
    """Where a fresh, empty store of each kind lives."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    import redis

    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushall()
    return url


@pytest.fixture
async def store(location, clock):
    s = open_store(location, clock=clock)
    yield s
    await s.close()


@pytest.fixture
def later(location, clock):
    """Let time pass: the store's clock moves at once; Redis measures a lease's idle time and a key's expiry on
    the server's own clock, so on Redis the test waits it out."""

    async def later(seconds: float) -> None:
        clock.advance(seconds)
        if not location.endswith(".db"):
            await asyncio.sleep(seconds)

    return later


def stores(location: str, n: int, clock, retention_s: float = 86_400.0) -> list[JobStore]:
    """``n`` clients of one store, each with connections of its own (as separate replicas have)."""
    return [open_store(location, retention_s, clock=clock) for _ in range(n)]


pytestmark = [pytestmark, pytest.mark.parametrize("location", KINDS, indirect=True)]


async def test_a_job_from_start_to_finish(store):
    assert await store.create("j1", {"steps": 10, "target_prompt": "x"}, b"src", b"work", owner="api-a")
    r = await store.get("j1")
    assert (r.status, r.total, r.options["target_prompt"], r.owner, r.takeovers, r.done) == (JobStatus.QUEUED, 10, "x",
                                                                                               "api-a", 0, False)
    assert await store.input("j1") == (b"src", b"work")
    await store.progress("j1", 5, 10, 0.5, {"directional": 0.4}, b"png", b"state5")
    r = await store.get("j1")
    assert (r.status, r.iteration, r.loss, r.terms) == (JobStatus.RUNNING, 5, 0.5, {"directional": 0.4})
    assert await store.preview("j1") == b"png" and await store.checkpoint("j1") == b"state5"
    await store.progress("j1", 6, 10, 0.4, {}, None, None)
    assert await store.preview("j1") == b"png" and await store.checkpoint("j1") == b"state5"  # the last kept
    assert await store.finish("j1", {"model": "tiny"}, {"cube": b"TITLE", "image": b"img"})
    r = await store.get("j1")
    assert r.status == JobStatus.FINISHED and r.result == {"model": "tiny"} and r.done and r.owner is None
    assert await store.file("j1", "cube") == b"TITLE" and await store.file("j1", "nope") is None
    assert await store.preview("j1") == b"png"
    # an ended job lets go of what only a running job needs
    assert await store.input("j1") is None and await store.checkpoint("j1") is None
    assert await store.get("missing") is None and await store.input("missing") is None
    assert await store.file("missing", "cube") is None and await store.preview("missing") is None


async def test_cancel_flags_and_ended_jobs_never_change(store):
    for job in "abc":
        await store.create(job, {"steps": 1}, b"s", b"w", owner="api-a")
    assert await store.request_cancel("a")
    assert await store.cancel_requested(["a", "b", "zzz"]) == {"a"} and await store.cancel_requested([]) == set()
    assert await store.set_status("a", JobStatus.CANCELLED, "cancelled by the user")
    assert not await store.set_status("a", JobStatus.RUNNING)  # a late writer cannot revive it
    await store.progress("a", 1, 1, 0.1, {})
    assert not await store.finish("a", {}, {"cube": b"late"})
    r = await store.get("a")
    assert (r.status, r.iteration, r.error) == (JobStatus.CANCELLED, 0, "cancelled by the user")
    assert await store.file("a", "cube") is None and not await store.request_cancel("a")
    assert await store.set_status("b", JobStatus.FAILED, "boom")
    assert (await store.get("b")).error == "boom"
    assert await store.set_status("c", JobStatus.RUNNING) and (await store.get("c")).status == JobStatus.RUNNING
    assert await store.open_jobs() == 1


async def test_writes_of_a_replica_that_lost_the_lease_are_refused(store, later):
    assert await store.create("j", {"steps": 3}, b"s", b"w", owner="api-a")
    assert await store.create("j", {"steps": 3}, b"s", b"w", owner="api-a")  # a retried call: the same job
    with pytest.raises(Exception, match="exists"):
        await store.create("j", {"steps": 3}, b"s", b"w", owner="api-b")
    assert await store.progress("j", 1, 3, 0.5, {}, None, b"state1", owner="api-a")
    await later(0.3)
    assert await store.take_over("api-b", idle_s=0.2, limit=1) == [("j", 1)]
    assert not await store.progress("j", 2, 3, 0.4, {}, None, b"late", owner="api-a")
    assert not await store.set_status("j", JobStatus.FAILED, "late", owner="api-a")
    assert not await store.finish("j", {}, {"cube": b"late"}, owner="api-a")
    r = await store.get("j")
    assert (r.status, r.iteration, r.error) == (JobStatus.RUNNING, 1, None) and await store.checkpoint("j") == b"state1"
    assert await store.progress("j", 2, 3, 0.4, {}, None, b"state2", owner="api-b")
    assert await store.finish("j", {"by": "b"}, {"cube": b"LUT"}, owner="api-b")
    assert (await store.get("j")).result == {"by": "b"} and await store.file("j", "cube") == b"LUT"


async def test_admission_never_overshoots_with_fifty_concurrent_clients(location, clock):
    clients = stores(location, 50, clock)
    created = await asyncio.gather(*(c.create(f"job{i}", {"steps": 1}, b"s" * 1000, b"w", owner=f"api-{i % 3}",
                                              max_open=20) for i, c in enumerate(clients)))
    assert sum(map(bool, created)) == 20 and await clients[0].open_jobs() == 20
    refused = [i for i, ok in enumerate(created) if not ok]
    assert await clients[0].get(f"job{refused[0]}") is None
    first = next(i for i, ok in enumerate(created) if ok)
    await clients[1].finish(f"job{first}", {}, {})
    assert await clients[2].create("one-more", {"steps": 1}, b"s", b"w", owner="api-0", max_open=20)
    assert not await clients[2].create("too-many", {"steps": 1}, b"s", b"w", owner="api-0", max_open=20)
    await asyncio.gather(*(c.close() for c in clients))


async def test_a_job_belongs_to_its_client_and_each_clients_open_jobs_are_bounded_on_their_own(location, clock):
    a, b = stores(location, 2, clock)  # (two replicas)
    quota = Quota(max_open=2)
    assert await a.create("a1", {"steps": 1}, b"s", b"w", owner="api-a", client="alice", quota=quota)
    assert await b.create("a2", {"steps": 1}, b"s", b"w", owner="api-b", client="alice", quota=quota)
    refused = await b.create("a3", {"steps": 1}, b"s", b"w", owner="api-b", client="alice", quota=quota)
    assert not refused and refused.refused == Refusal.CLIENT_OPEN and await a.get("a3") is None
    assert await a.create("b1", {"steps": 1}, b"s", b"w", owner="api-a", client="bob", quota=quota)  # (bob's own)
    assert (await b.get("a1")).client == "alice" and (await a.get("b1")).client == "bob"
    await b.set_status("a1", JobStatus.CANCELLED, "by the user")
    assert await a.create("a3", {"steps": 1}, b"s", b"w", owner="api-a", client="alice", quota=quota)
    full = await a.create("b2", {"steps": 1}, b"s", b"w", owner="api-a", max_open=3, client="bob", quota=quota)
    assert full.refused == Refusal.SERVICE_FULL  # (3 open: the service is full, whoever asks)
    await asyncio.gather(a.close(), b.close())


async def test_a_clients_jobs_per_hour_count_every_submission_of_the_last_hour(store, clock):
    quota = Quota(per_hour=3)
    for i in range(3):
        assert await store.create(f"j{i}", {"steps": 1}, b"s", b"w", owner="api", client="alice", quota=quota)
        await store.finish(f"j{i}", {}, {})  # (ended jobs still count)
        clock.advance(600)
    refused = await store.create("j3", {"steps": 1}, b"s", b"w", owner="api", client="alice", quota=quota)
    assert refused.refused == Refusal.CLIENT_HOURLY and refused.retry_after_s == pytest.approx(1800)
    assert await store.create("b0", {"steps": 1}, b"s", b"w", owner="api", client="bob", quota=quota)
    clock.advance(1800)  # the first leaves the hour
    assert await store.create("j3", {"steps": 1}, b"s", b"w", owner="api", client="alice", quota=quota)
    assert not await store.create("j4", {"steps": 1}, b"s", b"w", owner="api", client="alice", quota=quota)


async def test_a_lease_is_renewed_by_its_owner_and_taken_over_when_it_is_not(store, later):
    await store.create("j", {"steps": 1}, b"s", b"w", owner="api-a")
    assert await store.renew("api-a", ["j", "missing"]) == {"j"}
    assert await store.renew("api-b", ["j"]) == set()  # not its lease
    assert await store.take_over("api-b", idle_s=60, limit=10) == []  # renewed just now
    await later(0.3)
    assert await store.take_over("api-b", idle_s=0.2, limit=10) == [("j", 1)]
    assert await store.renew("api-a", ["j"]) == set()  # the old driver learns it lost the job
    assert await store.renew("api-b", ["j"]) == {"j"} and (await store.get("j")).owner == "api-b"
    assert await store.take_over("api-c", idle_s=0.2, limit=10) == []
    assert await store.release("api-b") == 1  # a clean shutdown: no need to wait out the lease
    assert await store.take_over("api-c", idle_s=60, limit=10) == [("j", 1)]  # (and a handover is no takeover)
    r = await store.get("j")
    assert (r.owner, r.takeovers) == ("api-c", 1)
    await later(0.3)
    assert await store.take_over("api-d", idle_s=0.2, limit=10) == [("j", 2)]  # api-c stopped without a word
    assert await store.renew("api-d", ["j"]) == {"j"}
    await store.finish("j", {}, {})
    assert await store.renew("api-d", ["j"]) == set()  # an ended job has no lease
    await later(0.3)
    assert await store.take_over("api-d", idle_s=0.1, limit=10) == []


async def test_each_stale_job_is_taken_over_by_exactly_one_replica(location, clock, later):
    clients = stores(location, 8, clock)
    for i in range(30):
        await clients[0].create(f"j{i}", {"steps": 1}, b"s", b"w", owner="api-dead")
    await clients[0].set_status("j0", JobStatus.FINISHED)
    await later(0.3)
    taken = await asyncio.gather(*(c.take_over(f"api-{k}", idle_s=0.2, limit=5) for k, c in enumerate(clients)))
    ids = [job for batch in taken for job, _ in batch]
    assert sorted(ids) == sorted(f"j{i}" for i in range(1, 30)) and all(n == 1 for b in taken for _, n in b)
    assert all(len(batch) <= 5 for batch in taken)
    for k, batch in enumerate(taken):
        assert await clients[k].renew(f"api-{k}", [job for job, _ in batch]) == {job for job, _ in batch}
    await asyncio.gather(*(c.close() for c in clients))


async def test_ended_jobs_and_their_files_go_after_the_retention_time(location, clock, later):
    (store,) = stores(location, 1, clock, retention_s=1)
    for job in ("old", "cancelled", "open"):
        await store.create(job, {"steps": 1}, b"s", b"w", owner="api-a")
    await store.finish("old", {"k": 1}, {"cube": b"c", "image": b"i"})
    await store.set_status("cancelled", JobStatus.CANCELLED)
    await store.purge()
    assert (await store.get("old")).status == JobStatus.FINISHED  # not yet
    await later(2.1)
    await store.purge()
    assert await store.get("old") is None and await store.file("old", "cube") is None
    assert await store.get("cancelled") is None and await store.preview("old") is None
    assert (await store.get("open")).status == JobStatus.QUEUED and await store.input("open") == (b"s", b"w")
    await store.close()



class _Reach:
    """A store of one kind that can be put out of reach and back: SQLite locked by another process (as a stuck writer
    or a backup would hold it), Redis killed and started again on its port (empty: it kept nothing on disk yet)."""

    def __init__(self, kind: str, folder):
        self.server = RedisServer(folder).start() if kind == "redis" else None
        self.url = self.server.url if self.server else str(folder / "jobs.db")
        self.locker: subprocess.Popen | None = None

    def cut(self) -> None:
        if self.server:
            return self.server.stop()
        self.locker = subprocess.Popen([sys.executable, "-c", "import sqlite3, time\n"
                                        f"c = sqlite3.connect({self.url!r}, isolation_level=None)\n"
                                        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(60)"],
                                       stdout=subprocess.PIPE, text=True)
        assert self.locker.stdout.readline().strip() == "locked"

    def mend(self) -> None:
        if self.server:
            self.server.start()
        elif self.locker:
            self.locker.kill()
            self.locker.wait()

    def close(self) -> None:
        if self.server:
            self.server.stop()
        elif self.locker:
            self.mend()


async def test_ping_fails_fast_on_a_store_out_of_reach_and_every_failure_is_heard(location, tmp_path):
    """What readiness rests on: a ping passes while the store can take writes, fails within seconds when it cannot,
    and each call that cannot reach the store is told to the store's ``on_unavailable``."""
    reach = _Reach("redis" if location.startswith("redis://") else "sqlite", tmp_path)
    heard: list[BaseException] = []
    s = open_store(reach.url, on_unavailable=heard.append)
    try:
        await s.ping()
        reach.cut()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.ping()
        assert time.monotonic() - started < 3
        assert len(heard) == 1
        reach.mend()
        deadline = time.monotonic() + 10
        while True:  # (a client reconnects to a restarted Redis on its next call)
            try:
                await s.ping()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store never answered again"
                await asyncio.sleep(0.1)
    finally:
        await s.close()
        reach.close()


async def _queued(store, clock, client: str, n: int, weight: float = 1.0, steps: int = 30) -> list[str]:
    ids = []
    for i in range(n):
        job = f"{client}-{i}-{clock.now}"
        await store.create(job, {"steps": steps}, b"s", b"w", owner="api", client=client)
        clock.advance(0.001)
        await store.queue(job, client, weight)
        ids.append(job)
    return ids


async def _admit(store, turns: int, cost: float = 120.0) -> list[str]:
    """The clients of the next ``turns`` jobs the fair queue lets start, each charged ``cost`` passes."""
    order = []
    for _ in range(turns):
        job = await store.head()
        client = (await store.get(job)).client
        await store.charge(client, cost, started=job)
        order.append(client)
    return order


async def test_the_fair_queue_is_first_come_within_a_client_and_a_client_alone_gets_every_turn(store, clock):
    jobs = await _queued(store, clock, "alice", 4)
    await store.queue(jobs[0], "alice")  # (again: it keeps its place)
    assert await store.head() == jobs[0]
    for job in jobs:
        assert await store.head() == job
        await store.charge("alice", 120, started=job)
    assert await store.head() is None


async def test_a_newcomer_gets_the_next_turn_and_then_turns_alternate(store, clock):
    await _queued(store, clock, "a", 24)
    assert await _admit(store, 4) == ["a"] * 4  # (a alone: the whole batch)
    await _queued(store, clock, "b", 4)
    assert await _admit(store, 8) == ["b", "a", "b", "a", "b", "a", "b", "a"]
    assert await _admit(store, 3) == ["a"] * 3  # (b has nothing waiting)


async def test_weights_share_the_turns_two_to_one(store, clock):
    await _queued(store, clock, "heavy", 40, weight=2)
    await _queued(store, clock, "light", 40, weight=1)
    order = await _admit(store, 30)
    assert order.count("heavy") == 20 and order.count("light") == 10
    assert all(order[i:i + 3].count("heavy") == 2 for i in range(0, 30, 3))  # (interleaved, not in runs)


async def test_an_idle_client_banks_no_credit_and_an_ended_job_leaves_the_queue(store, clock):
    await _queued(store, clock, "a", 10)
    await _admit(store, 6)  # a is served alone for a while
    b = await _queued(store, clock, "b", 6)
    assert await _admit(store, 4) == ["b", "a", "b", "a"]  # (b starts level with a: it cannot take six in a row)
    await store.set_status(b[2], JobStatus.CANCELLED, "by the user")
    await store.finish(b[3], {}, {})
    assert await _admit(store, 2) == ["b", "a"] and (await store.get(await store.head())).client == "b"
    await store.charge("a", -360)  # (given back: passes a job that ended early was never served)
    assert (await store.get(await store.head())).client == "a"


async def test_admission_answers_as_create_would_without_adding_a_job(store, clock):
    quota = Quota(max_open=1, per_hour=2)
    assert await store.admission(2, "alice", quota) and await store.open_jobs() == 0
    assert await store.create("a1", {"steps": 1}, b"s", b"w", owner="api", client="alice", quota=quota)
    assert (await store.admission(2, "alice", quota)).refused == Refusal.CLIENT_OPEN
    assert await store.admission(2, "bob", quota)  # (bob's own bounds)
    await store.finish("a1", {}, {})
    clock.advance(60)
    assert await store.create("a2", {"steps": 1}, b"s", b"w", owner="api", client="alice", quota=quota)
    await store.create("b1", {"steps": 1}, b"s", b"w", owner="api", client="bob")
    assert (await store.admission(2, "carol")).refused == Refusal.SERVICE_FULL
    await store.finish("a2", {}, {})
    hourly = await store.admission(2, "alice", quota)
    assert hourly.refused == Refusal.CLIENT_HOURLY and hourly.retry_after_s == pytest.approx(3600 - 60)
