"""The job store a service opens: the implementation ``CLIPDLUT_STORE`` names, its unreachable moments told apart.

A path is a SQLite file (one host, no server); a ``redis://`` URL is a Redis server that API replicas on several
hosts share.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, cast

from clipdlut.serving.errors import StoreUnavailable
from clipdlut.serving.stores import redis, sqlite
from clipdlut.serving.stores.contract import JobStore


class _Guarded:
    """A store whose failures to reach its server or file (those its module's ``unavailable`` tells apart from
    bugs) raise :class:`~clipdlut.serving.errors.StoreUnavailable`, which every route answers with a 503, and are
    told to ``on_unavailable`` (readiness)."""

    def __init__(self, store: Any, unavailable: Callable[[BaseException], bool],
                 on_unavailable: Callable[[BaseException], None] | None = None):
        self._store, self._unavailable = store, unavailable
        self._on_unavailable = on_unavailable or (lambda error: None)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attr(*args, **kwargs)
            except Exception as e:
                if self._unavailable(e):
                    self._on_unavailable(e)
                    raise StoreUnavailable(e) from e
                raise

        return call


def open_store(location: str, retention_s: float = 86_400.0,
               on_unavailable: Callable[[BaseException], None] | None = None,
               clock: Callable[[], float] = time.time) -> JobStore:
    """The job store at ``location``: ``redis://host:port/db`` (or ``rediss://``, ``unix://``) is Redis,
    anything else a SQLite file path. ``on_unavailable`` hears of every call that could not reach it; ``clock``
    (seconds since the epoch) stamps its times (a test passes one it moves; Redis measures lease idle time on
    its own clock)."""
    store: Any
    if location.startswith(("redis://", "rediss://", "unix://")):
        store = redis.RedisJobStore(location, retention_s, clock=clock)
        return cast(JobStore, _Guarded(store, redis.unavailable, on_unavailable))
    store = sqlite.SqliteJobStore(location, retention_s, clock=clock)
    return cast(JobStore, _Guarded(store, sqlite.unavailable, on_unavailable))
