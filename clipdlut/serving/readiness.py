"""The API's readiness, kept current in the background: a probe is answered from memory, at once.

The API is ready when its job store can be reached and its optimizer is ready (the model is loaded and it can
be reached). Background tasks ask the optimizer every second and note whether the store answered their last
round; ``/readyz`` reads the last answers, so a slow or restarting dependency never makes a platform's probe wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from clipdlut.serving.wire import OptimizerHealth

log = logging.getLogger(__name__)


class Readiness:
    """The last known state of the job store and the optimizer, as ``/readyz`` reports it."""

    def __init__(self) -> None:
        self._optimizer: str | None = "the service is starting"
        self._store: str | None = None

    @property
    def reason(self) -> str | None:
        """Why the API is not ready (None when it is)."""
        return self._store or self._optimizer

    @property
    def ready(self) -> bool:
        return self.reason is None

    def update(self, health: OptimizerHealth | None, error: str | None = None) -> None:
        """Note the optimizer's answer to a health call (None: the call failed with ``error``)."""
        before = self.reason
        if health is None:
            self._optimizer = f"the optimizer cannot be reached: {error}"
        elif not health.ready:
            self._optimizer = health.reason or "the optimizer is not ready"
        else:
            self._optimizer = None
        self._log(before)

    def store_answered(self, error: str | None) -> None:
        """Note whether the job store answered (``error``: why it did not)."""
        before = self.reason
        self._store = f"the job store cannot be reached: {error}" if error else None
        self._log(before)

    def _log(self, before: str | None) -> None:
        if self.reason != before:
            if self.reason is None:
                log.info("ready")
            else:
                log.info("not ready: %s", self.reason)

    async def follow(self, ask: Callable[[], Awaitable[OptimizerHealth | dict]], every_s: float = 1.0,
                     timeout_s: float = 3.0) -> None:
        """Forever: ask the optimizer how it is, every ``every_s`` (first after ``every_s``: the service's calls to
        its dependencies are set up after its startup hooks)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                answer = await asyncio.wait_for(ask(), timeout_s)
                self.update(OptimizerHealth.model_validate(answer, from_attributes=True))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.update(None, f"{type(e).__name__}: {e}".strip().rstrip(":") or type(e).__name__)
