"""What the Redis job store adds to the contract (tests/test_store.py): structures an operator recognises,
retention by key expiry, nothing left behind by an ended job, and jobs that survive a Redis restart (AOF)."""

from __future__ import annotations

import pytest
import redis

from clipdlut.serving.stores import Quota
from clipdlut.serving.stores.redis import RedisJobStore
from tests.live import RedisServer, redis_missing

pytestmark = [pytest.mark.unit, pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))]


@pytest.fixture
def server(tmp_path):
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop()


async def test_keys_are_plain_redis_structures_and_an_ended_job_expires(server):
    store = RedisJobStore(server.url, retention_s=600)
    db = redis.Redis.from_url(server.url, decode_responses=True)
    await store.create("j", {"steps": 3}, b"original", b"working", owner="api-a", client="alice")
    await store.progress("j", 1, 3, 0.5, {}, b"preview", b"state")
    assert {k: db.type(k) for k in db.keys("*")} == {"clipdlut:job:j": "hash", "clipdlut:data:j": "hash",
                                                    "clipdlut:open": "zset", "clipdlut:drive": "stream",
                                                    "clipdlut:open:alice": "zset", "clipdlut:submitted:alice": "zset"}
    assert 3590 < db.ttl("clipdlut:submitted:alice") <= 3600  # (an hour's submissions, then gone)
    assert db.hget("clipdlut:job:j", "status") == "running" and db.zrange("clipdlut:open", 0, -1) == ["j"]
    (pending,) = db.xpending_range("clipdlut:drive", "drivers", "-", "+", 10)
    assert pending["consumer"] == "api-a" and pending["times_delivered"] == 1
    assert db.ttl("clipdlut:job:j") == -1  # an open job never expires
    await store.finish("j", {"model": "tiny"}, {"cube": b"LUT"})
    assert db.zcard("clipdlut:open") == db.zcard("clipdlut:open:alice") == 0 and db.xlen("clipdlut:drive") == 0
    assert db.xpending("clipdlut:drive", "drivers")["pending"] == 0
    assert sorted(db.hkeys("clipdlut:data:j")) == ["file:cube", "preview"]  # inputs and state let go
    assert 590 < db.ttl("clipdlut:job:j") <= 600 and 590 < db.ttl("clipdlut:data:j") <= 600
    await store.close()


async def test_jobs_survive_a_restart_of_redis(tmp_path):
    first = RedisServer(tmp_path / "redis").start()
    store = RedisJobStore(first.url)
    await store.create("open", {"steps": 3}, b"o", b"w", owner="api-a")
    await store.create("done", {"steps": 3}, b"o", b"w", owner="api-a")
    await store.finish("done", {"k": 1}, {"cube": b"LUT"})
    await store.close()
    redis.Redis.from_url(first.url).shutdown()  # (a clean stop flushes the append-only file)
    first.proc.wait(timeout=10)
    second = RedisServer(tmp_path / "redis")
    second.port, second.url = first.port, first.url
    second.start()
    try:
        store = RedisJobStore(second.url)
        assert (await store.get("open")).status == "queued" and await store.input("open") == (b"o", b"w")
        assert await store.file("done", "cube") == b"LUT"
        assert await store.take_over("api-b", idle_s=0, limit=5) == [("open", 1)]
        await store.close()
    finally:
        second.stop()


async def test_a_job_ended_without_this_versions_bookkeeping_holds_no_quota_and_no_turn(server):
    """A job ended by a replica of an older version (its status written, the client's sets left as they were) counts
    against no quota and never stands at the head of the fair queue."""
    store = RedisJobStore(server.url)
    db = redis.Redis.from_url(server.url, decode_responses=True)
    quota = Quota(max_open=1)
    assert await store.create("old", {"steps": 3}, b"s", b"w", owner="api-a", client="alice", quota=quota)
    await store.queue("old", "alice")
    await store.create("b", {"steps": 3}, b"s", b"w", owner="api-a", client="bob")
    await store.queue("b", "bob")
    db.hset("clipdlut:job:old", "status", "cancelled")  # (as an older replica ends a job)
    assert await store.head() == "b" and db.zcard("clipdlut:fair:waiting:alice") == 0
    assert await store.create("new", {"steps": 3}, b"s", b"w", owner="api-a", client="alice", quota=quota)
    await store.close()
