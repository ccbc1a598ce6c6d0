"""The API's readiness, kept current in the background: a probe is answered from memory, at once.

The API is ready when its optimizer is: the model is loaded and it can be reached. A background task
asks the optimizer every second; ``/readyz`` reads the last answer, so a slow or restarting optimizer
never makes a platform's probe wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from clipdlut.wire import OptimizerHealth

log = logging.getLogger(__name__)


class Readiness:
    """The last known state of the optimizer, as ``/readyz`` reports it."""

    def __init__(self) -> None:
        self.reason: str | None = "the service is starting"

    @property
    def ready(self) -> bool:
        return self.reason is None

    def update(self, health: OptimizerHealth | None, error: str | None = None) -> None:
        before = self.reason
        if health is None:
            self.reason = f"the optimizer cannot be reached: {error}"
        elif not health.ready:
            self.reason = health.reason or "the optimizer is not ready"
        else:
            self.reason = None
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
