""":class:`~clipdlut.serving.stores.contract.JobStore` on a Redis server, shared by API replicas on several hosts.

Keys (``clipdlut:`` by default), in structures a Redis operator recognises:

- ``clipdlut:job:<id>``: a hash of the job's small fields (status, progress, options, result summary, owner);
- ``clipdlut:data:<id>``: a hash of its bytes (``source``, ``working``, ``checkpoint`` while open; ``preview``;
  ``file:cube`` and ``file:image`` once finished);
- ``clipdlut:open``: a sorted set of the open jobs by creation time (admission counts it), and
  ``clipdlut:open:<client>`` the same for each client (its quota of open jobs);
- ``clipdlut:submitted:<client>``: a sorted set of a client's jobs submitted in the last hour, by time (its
  quota of jobs per hour);
- the fair queue: ``clipdlut:fair:waiting:<client>``, a sorted set of the client's jobs waiting for an optimizer
  slot, by when they were submitted; ``clipdlut:fair:clients``, the set of clients with jobs waiting;
  ``clipdlut:fair:served`` and ``clipdlut:fair:weight``, hashes of each client's weighted service and weight;
  ``clipdlut:fair:vtime``, the service's virtual time;
- ``clipdlut:drive``: a stream with one entry per open job and the consumer group ``drivers``, in which each
  API replica is a consumer. The replica that accepts a job holds its entry as pending; renewing the lease
  re-claims the entry (resetting its idle time); a live replica takes over entries idle past the watchdog
  bound with ``XAUTOCLAIM``; a replica that stops cleanly sets its entries' idle time past any bound, so they are
  taken at once. This is the at-least-once pattern of Celery's late acknowledgements, with Redis keeping the
  books; the job's hash counts its takeovers (a clean handover does not count).

Every write that reads before it writes is one Lua script, so it is atomic; an ended job's keys expire after
the retention time (Redis deletes them; :meth:`RedisJobStore.purge` has nothing to do). Needs a standalone
Redis (or Sentinel) of version 6.2 or later; the scripts touch keys they compute, which Redis Cluster forbids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions

from clipdlut.serving.stores.contract import HOUR_S, Admission, JobRecord, Quota, Refusal
from clipdlut.status import JobStatus

GROUP = b"drivers"
_RELEASED_IDLE_MS = 10**10  # the idle time a released lease is given: older than any watchdog bound
_STATUS_OPEN = "local open = {queued = true, running = true}\n"

# KEYS: open, job, data, stream, the client's open, the client's submitted. ARGV: id, max_open, now, options, total,
# source, working, owner, group, client, its max_open, its per_hour, the hour's length (s), '1' to check only (no job
# added: the id is ''). Returns {code, retry}: 1 created (or, checking, would be), 0 the service full, 2 the client's
# open jobs, 3 its jobs per hour (retry: when one leaves the hour)
_CREATE = _STATUS_OPEN + """
if redis.call('EXISTS', KEYS[2]) == 1 then  -- a call retried after its answer was lost succeeded the first time
  if redis.call('HGET', KEYS[2], 'owner') == ARGV[8] then return {1, 0} end
  return redis.error_reply('job ' .. ARGV[1] .. ' exists')
end
local now, hour = tonumber(ARGV[3]), tonumber(ARGV[13])
local max, client_max, per_hour = tonumber(ARGV[2]), tonumber(ARGV[11]), tonumber(ARGV[12])
if max >= 0 and redis.call('ZCARD', KEYS[1]) >= max then return {0, 0} end
if client_max >= 0 and redis.call('ZCARD', KEYS[5]) >= client_max then
  -- (before refusing: drop jobs no ending removed, as a replica of an older version ends them)
  local prefix = string.sub(KEYS[2], 1, #KEYS[2] - #ARGV[1])
  for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
    if not open[redis.call('HGET', prefix .. id, 'status') or ''] then redis.call('ZREM', KEYS[5], id) end
  end
  if redis.call('ZCARD', KEYS[5]) >= client_max then return {2, 0} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - hour)
if per_hour >= 0 and redis.call('ZCARD', KEYS[6]) >= per_hour then
  local oldest = redis.call('ZREVRANGE', KEYS[6], per_hour - 1, per_hour - 1, 'WITHSCORES')
  return {3, tostring(tonumber(oldest[2]) + hour - now)}
end
if ARGV[14] == '1' then return {1, 0} end
redis.pcall('XGROUP', 'CREATE', KEYS[4], ARGV[9], '$', 'MKSTREAM')  -- (an error when it exists)
local entry = redis.call('XADD', KEYS[4], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'queued', 'created', ARGV[3], 'updated', ARGV[3], 'iteration', 0,
           'total', ARGV[5], 'terms', '{}', 'cancel', 0, 'options', ARGV[4], 'owner', ARGV[8], 'takeovers', 0,
           'entry', entry, 'client', ARGV[10])
redis.call('HSET', KEYS[3], 'source', ARGV[6], 'working', ARGV[7])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[6], math.ceil(hour))
-- the accepting replica holds the entry as pending, as if it had read it (no other replica ever reads it new)
redis.call('XCLAIM', KEYS[4], ARGV[9], ARGV[8], 0, entry, 'FORCE', 'JUSTID')
return {1, 0}
"""

# KEYS: job, data, open, stream. ARGV: id, status, error, now, retention_s, group, owner ('' = any), result,
# the fair queue's waiting prefix, files...
_SET_STATUS = _STATUS_OPEN + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not open[status] then return 0 end
if ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[7] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
if open[ARGV[2]] then return 1 end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[8]) end
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[2], 'file:' .. ARGV[i], ARGV[i + 1]) end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  redis.call('XACK', KEYS[4], ARGV[6], entry)
  redis.call('XDEL', KEYS[4], entry)
end
redis.call('HDEL', KEYS[1], 'owner', 'entry')
redis.call('HDEL', KEYS[2], 'source', 'working', 'checkpoint')
redis.call('ZREM', KEYS[3], ARGV[1])
local client = redis.call('HGET', KEYS[1], 'client') or ''
redis.call('ZREM', KEYS[3] .. ':' .. client, ARGV[1])
redis.call('ZREM', ARGV[9] .. client, ARGV[1])  -- (an ended job leaves the fair queue)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""

# KEYS: job, data. ARGV: iteration, total, loss, terms, now, preview, checkpoint, owner ('' = any)
_PROGRESS = _STATUS_OPEN + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not open[status] then return 0 end
if ARGV[8] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[8] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'iteration', ARGV[1], 'total', ARGV[2], 'loss', ARGV[3],
           'terms', ARGV[4], 'updated', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'preview', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'checkpoint', ARGV[7]) end
return 1
"""

# KEYS: job. ARGV: now
_CANCEL = _STATUS_OPEN + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not open[status] then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1, 'updated', ARGV[1])
return 1
"""

# KEYS: stream. ARGV: group, owner, prefix, idle_ms (for a release; '' to renew), ids...
_RENEW = """
local held = {}
for i = 5, #ARGV do
  local entry = redis.call('HGET', ARGV[3] .. 'job:' .. ARGV[i], 'entry')
  if entry then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
    if pending[1] and pending[1][2] == ARGV[2] then
      if ARGV[4] == '' then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
      else
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'IDLE', ARGV[4], 'JUSTID')
        redis.call('HSET', ARGV[3] .. 'job:' .. ARGV[i], 'released', 1)
      end
      table.insert(held, ARGV[i])
    end
  end
end
return held
"""

# KEYS: stream. ARGV: group, owner, idle_ms, limit, prefix
_TAKE_OVER = """
local taken, cursor = {}, '0-0'
local limit = tonumber(ARGV[4])
repeat
  local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', limit - #taken / 2)
  cursor = res[1]
  for _, e in ipairs(res[2]) do
    local key = e and e[2] and (ARGV[5] .. 'job:' .. e[2][2])
    if key and redis.call('EXISTS', key) == 1 then
      local released = redis.call('HGET', key, 'released')
      local takeovers = redis.call('HINCRBY', key, 'takeovers', released and 0 or 1)
      redis.call('HDEL', key, 'released')
      redis.call('HSET', key, 'owner', ARGV[2])
      table.insert(taken, e[2][2])
      table.insert(taken, takeovers)
    elseif e then  -- a job whose keys are gone: nothing to drive
      redis.call('XACK', KEYS[1], ARGV[1], e[1])
      redis.call('XDEL', KEYS[1], e[1])
    end
  end
until cursor == '0-0' or #taken / 2 >= limit
return taken
"""


# KEYS: the client's waiting, fair:clients, fair:served, fair:weight, fair:vtime, job. ARGV: id, client, weight.
# (A job's score is when it was submitted: first come, first served.)
_QUEUE = _STATUS_OPEN + """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local status = redis.call('HGET', KEYS[6], 'status')
if not status or not open[status] then return 0 end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
if redis.call('ZCARD', KEYS[1]) == 0 then  -- (idle until now: it starts at the virtual time, no earlier)
  local vtime = redis.call('GET', KEYS[5]) or '0'
  if tonumber(vtime) > tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0') then
    redis.call('HSET', KEYS[3], ARGV[2], vtime)
  end
end
redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[6], 'created'), ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: fair:clients, fair:served. ARGV: the waiting prefix, the job prefix
_HEAD = _STATUS_OPEN + """
local best, best_served, best_since = false, 0, 0
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local first = redis.call('ZRANGE', ARGV[1] .. c, 0, 0, 'WITHSCORES')
  -- (an entry whose job is gone or ended, which no ending removed: a replica of an older version ended it)
  while #first > 0 and not open[redis.call('HGET', ARGV[2] .. first[1], 'status') or ''] do
    redis.call('ZREM', ARGV[1] .. c, first[1])
    first = redis.call('ZRANGE', ARGV[1] .. c, 0, 0, 'WITHSCORES')
  end
  if #first == 0 then
    redis.call('SREM', KEYS[1], c)
  else
    local served, since = tonumber(redis.call('HGET', KEYS[2], c) or '0'), tonumber(first[2])
    if not best or served < best_served or (served == best_served and since < best_since) then
      best, best_served, best_since = first[1], served, since
    end
  end
end
return best
"""

# KEYS: fair:served, fair:weight, fair:vtime, the client's waiting. ARGV: client, passes, started job ('' = none)
_CHARGE = """
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[3])
  local served = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
  if tonumber(served) > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], served) end
end
local weight = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '1')
redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], tonumber(ARGV[2]) / weight)
return 1
"""


def _bound(limit: int | None) -> int:
    """A bound as the scripts take it (-1: none)."""
    return -1 if limit is None else limit


def _s(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _raw(reply: Any) -> bytes | None:
    """A reply of this client, which never decodes (``decode_responses=False``): bytes or nil. (redis-py's types
    cannot tell a decoding client from this one.)"""
    return reply


class RedisJobStore:
    """The job store on Redis (see the contract, :class:`~.contract.JobStore`, for what each method promises)."""

    def __init__(self, url: str, retention_s: float = 86_400.0, prefix: str = "clipdlut:",
                 clock: Callable[[], float] = time.time):
        self.url = url
        # the timestamps' clock (seconds). A lease's idle time is the server's own (XPENDING): replicas on several
        # hosts then need no synchronized clocks, and the retention is the keys' TTL, also kept by the server
        self.clock = clock
        self.retention_s = retention_s
        self.prefix = prefix
        # (a server that stops answering without closing the connection fails calls after 10 s instead of never)
        self.redis = aioredis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True,
                                             socket_connect_timeout=5, socket_timeout=10)
        self._open, self._stream = f"{prefix}open", f"{prefix}drive"
        self._fair = f"{prefix}fair:"
        scripts = {"create": _CREATE, "set_status": _SET_STATUS, "progress": _PROGRESS, "cancel": _CANCEL,
                   "renew": _RENEW, "take_over": _TAKE_OVER, "queue": _QUEUE, "head": _HEAD, "charge": _CHARGE}
        self._scripts = {name: self.redis.register_script(body) for name, body in scripts.items()}

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _data(self, job_id: str) -> str:
        return f"{self.prefix}data:{job_id}"

    async def create(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes, owner: str,
                     max_open: int | None = None, client: str = "", quota: Quota = Quota()) -> Admission:
        return await self._admit(job_id, options, source, working, owner, max_open, client, quota, check_only=False)

    async def admission(self, max_open: int | None = None, client: str = "", quota: Quota = Quota()) -> Admission:
        """(``create``'s own script, stopped before the insert: the same counts.)"""
        return await self._admit("", {}, b"", b"", "", max_open, client, quota, check_only=True)

    async def _admit(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes, owner: str,
                     max_open: int | None, client: str, quota: Quota, check_only: bool) -> Admission:
        keys = [self._open, self._job(job_id), self._data(job_id), self._stream, f"{self._open}:{client}",
                f"{self.prefix}submitted:{client}"]
        args: list[Any] = [job_id, _bound(max_open), self.clock(), json.dumps(options), int(options.get("steps", 0)),
                           source, working, owner, GROUP, client, _bound(quota.max_open), _bound(quota.per_hour),
                           HOUR_S, "1" if check_only else "0"]
        code, retry = await self._scripts["create"](keys, args)
        refused = {1: None, 0: Refusal.SERVICE_FULL, 2: Refusal.CLIENT_OPEN, 3: Refusal.CLIENT_HOURLY}[int(code)]
        return Admission(refused, float(retry) if refused == Refusal.CLIENT_HOURLY else None)

    async def get(self, job_id: str) -> JobRecord | None:
        h = cast("dict[bytes, bytes]", await self.redis.hgetall(self._job(job_id)))  # (see _raw)
        if not h:
            return None
        return JobRecord(job_id=job_id, status=JobStatus(h[b"status"].decode()), created=float(h[b"created"]),
                         updated=float(h[b"updated"]), iteration=int(h[b"iteration"]), total=int(h[b"total"]),
                         loss=float(h[b"loss"]) if b"loss" in h else None, terms=json.loads(h[b"terms"]),
                         error=_s(h.get(b"error")), cancel_requested=h[b"cancel"] == b"1",
                         options=json.loads(h[b"options"]),
                         result=json.loads(h[b"result"]) if b"result" in h else None, owner=_s(h.get(b"owner")),
                         takeovers=int(h[b"takeovers"]), client=_s(h.get(b"client")) or "")

    async def input(self, job_id: str) -> tuple[bytes, bytes] | None:
        source, working = map(_raw, await self.redis.hmget(self._data(job_id), ["source", "working"]))
        return (source, working) if source is not None and working is not None else None

    async def _end(self, job_id: str, status: str, error: str | None, result: dict | None,
                   files: dict[str, bytes], owner: str | None) -> bool:
        keys = [self._job(job_id), self._data(job_id), self._open, self._stream]
        args: list[Any] = [job_id, status, error or "", self.clock(), max(1, int(self.retention_s)), GROUP,
                           owner or "", json.dumps(result) if result is not None else "", f"{self._fair}waiting:"]
        for name, data in files.items():
            args += [name, data]
        return await self._scripts["set_status"](keys, args) == 1

    async def set_status(self, job_id: str, status: str, error: str | None = None, owner: str | None = None
                         ) -> bool:
        return await self._end(job_id, status, error, None, {}, owner)

    async def progress(self, job_id: str, iteration: int, total: int, loss: float, terms: dict[str, float],
                       preview: bytes | None = None, checkpoint: bytes | None = None, owner: str | None = None
                       ) -> bool:
        return await self._scripts["progress"]([self._job(job_id), self._data(job_id)],
                                               [iteration, total, repr(float(loss)), json.dumps(terms), self.clock(),
                                                preview or b"", checkpoint or b"", owner or ""]) == 1

    async def preview(self, job_id: str) -> bytes | None:
        return _raw(await self.redis.hget(self._data(job_id), "preview"))

    async def checkpoint(self, job_id: str) -> bytes | None:
        return _raw(await self.redis.hget(self._data(job_id), "checkpoint"))

    async def request_cancel(self, job_id: str) -> bool:
        return await self._scripts["cancel"]([self._job(job_id)], [self.clock()]) == 1

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self._job(job_id), "cancel")
            flags = await pipe.execute()
        return {job_id for job_id, flag in zip(job_ids, flags) if flag == b"1"}

    async def finish(self, job_id: str, result: dict[str, Any], files: dict[str, bytes], owner: str | None = None
                     ) -> bool:
        return await self._end(job_id, JobStatus.FINISHED, None, result, files, owner)

    async def file(self, job_id: str, name: str) -> bytes | None:
        return _raw(await self.redis.hget(self._data(job_id), f"file:{name}"))

    async def open_jobs(self) -> int:
        return await self.redis.zcard(self._open)

    async def _leases(self, owner: str, job_ids: list[str], idle_ms: int | None) -> set[str]:
        if not job_ids:
            return set()
        held = await self._scripts["renew"]([self._stream], [GROUP, owner, self.prefix,
                                                              "" if idle_ms is None else idle_ms, *job_ids])
        return {h.decode() for h in held}

    async def renew(self, owner: str, job_ids: list[str]) -> set[str]:
        return await self._leases(owner, job_ids, None)

    async def release(self, owner: str) -> int:
        try:
            pending = await self.redis.xpending_range(self._stream, GROUP, "-", "+", 10_000, consumername=owner)
        except aioredis.ResponseError as e:
            if "NOGROUP" in str(e):
                return 0
            raise
        entries = [cast(bytes, p["message_id"]) for p in pending]
        if not entries:
            return 0
        ids = [fields[b"job"].decode() for _, fields in await self._entries(entries)]
        return len(await self._leases(owner, ids, _RELEASED_IDLE_MS))

    async def _entries(self, entries: list[bytes]) -> list[tuple[bytes, dict]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xrange(self._stream, entry, entry, count=1)
            found = await pipe.execute()
        return [rows[0] for rows in found if rows]

    async def take_over(self, owner: str, idle_s: float, limit: int) -> list[tuple[str, int]]:
        try:
            taken = await self._scripts["take_over"]([self._stream], [GROUP, owner, max(0, int(idle_s * 1000)),
                                                                       limit, self.prefix])
        except aioredis.ResponseError as e:
            if "NOGROUP" in str(e):  # no job was ever created here
                return []
            raise
        return [(taken[i].decode(), int(taken[i + 1])) for i in range(0, len(taken), 2)]

    async def queue(self, job_id: str, client: str, weight: float = 1.0) -> None:
        f = self._fair
        await self._scripts["queue"]([f"{f}waiting:{client}", f"{f}clients", f"{f}served", f"{f}weight", f"{f}vtime",
                                      self._job(job_id)], [job_id, client, weight])

    async def head(self) -> str | None:
        head = await self._scripts["head"]([f"{self._fair}clients", f"{self._fair}served"],
                                           [f"{self._fair}waiting:", f"{self.prefix}job:"])
        return head.decode() if head else None

    async def charge(self, client: str, passes: float, started: str | None = None) -> None:
        f = self._fair
        await self._scripts["charge"]([f"{f}served", f"{f}weight", f"{f}vtime", f"{f}waiting:{client}"],
                                      [client, passes, started or ""])

    async def purge(self) -> int:
        """Nothing to do: an ended job's keys expire after the retention time."""
        return 0

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


def unavailable(e: BaseException) -> bool:
    """Whether ``e`` says the server cannot be reached now (down, restarting, loading its data, a network cut)."""
    return isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)  # (BusyLoadingError too)
