"""The API's readiness, kept current in the background: a probe is answered from memory, at once.

The API is ready when its job store can be reached and its optimizer is ready (the model is loaded and it can
be reached). Background tasks ask the optimizer and ping the store every second; ``/readyz`` reads their last
answers, so a slow or restarting dependency never makes a platform's probe wait.

The store's state changes on evidence only: any store call that fails to reach it (a route's, the job watch's, the
ping's) makes the API not ready at once; only a ping that succeeds after the last failure makes it ready again. So
a router stops sending clients to a replica that cannot serve them, and does not flap back while the store is
down. An outage is logged twice: one warning when it starts, one line when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from clipdlut.serving.errors import describe
from clipdlut.serving.wire import OptimizerHealth

log = logging.getLogger(__name__)


class Readiness:
    """The last known state of the job store and the optimizer, as ``/readyz`` reports it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._optimizer: str | None = "the service is starting"
        self._store: str | None = None
        self._store_down_since = 0.0
        self._store_failures = 0  # failures seen so far: a ping that began before the last one proves nothing
        self._clock = clock

    @property
    def reason(self) -> str | None:
        """Why the API is not ready (None when it is); the store first: without it nothing can be accepted."""
        return self._store or self._optimizer

    @property
    def ready(self) -> bool:
        return self.reason is None

    def update(self, health: OptimizerHealth | None, error: str | None = None) -> None:
        """Note the optimizer's answer to a health call (None: the call failed with ``error``)."""
        before = self._optimizer
        if health is None:
            self._optimizer = f"the optimizer cannot be reached: {error}"
        elif not health.ready:
            self._optimizer = health.reason or "the optimizer is not ready"
        else:
            self._optimizer = None
        if self._optimizer != before and self._optimizer is None:
            log.info("the optimizer is ready")
        elif self._optimizer != before:
            log.info("not ready: %s", self._optimizer)

    def store_failed(self, error: BaseException) -> None:
        """A store call could not reach the store: not ready until a ping succeeds. The reason ``/readyz`` gives
        names the kind of failure only (the log has the rest: a public probe never shows the store's address)."""
        self._store_failures += 1
        if self._store is None:
            self._store_down_since = self._clock()
            log.warning("not ready: the job store cannot be reached (%s); ready again once it answers",
                        describe(error))
        self._store = f"the job store cannot be reached ({type(error).__name__}); retry in a few seconds"

    def store_answered(self, failures_before: int) -> None:
        """A ping that began when :attr:`store_failures` was ``failures_before`` succeeded."""
        if self._store is not None and self._store_failures == failures_before:
            log.info("the job store answers again, after %.1f s", self._clock() - self._store_down_since)
            self._store = None

    @property
    def store_failures(self) -> int:
        return self._store_failures

    async def follow_store(self, ping: Callable[[], Awaitable[object]], every_s: float = 1.0,
                           timeout_s: float = 2.0) -> None:
        """Forever: ping the job store every ``every_s`` (a ping slower than ``timeout_s`` counts as a failure)."""
        while True:
            failures = self._store_failures
            try:
                await asyncio.wait_for(ping(), timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.store_failed(e)
            else:
                self.store_answered(failures)
            await asyncio.sleep(every_s)

    async def follow(self, ask: Callable[[], Awaitable[OptimizerHealth | dict]], every_s: float = 1.0,
                     timeout_s: float = 3.0, not_ready_every_s: float = 0.1) -> None:
        """Forever: ask the optimizer how it is, every ``every_s`` while it is ready and every ``not_ready_every_s``
        while it is not, so a replica starting (or an optimizer restarted) is ready a tenth of a second after its
        optimizer, not up to a second (the first call after a pause as well: the service's calls to its
        dependencies are set up after its startup hooks)."""
        while True:
            await asyncio.sleep(every_s if self._optimizer is None else min(every_s, not_ready_every_s))
            try:
                answer = await asyncio.wait_for(ask(), timeout_s)
                self.update(OptimizerHealth.model_validate(answer, from_attributes=True))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.update(None, describe(e))
