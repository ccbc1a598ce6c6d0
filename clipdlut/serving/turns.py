"""A fair share of the optimizer slots: this API replica's jobs waiting in the job store's fair queue, each sent to
the optimizer when its turn comes.

The queue lives in the job store (:meth:`~clipdlut.serving.stores.JobStore.queue`), so it spans every replica:
the next free slot goes to the longest-waiting job of the client with the least image passes served so far, each
divided by its weight. Only the job at the head tries the optimizer; when the batch is full it stays at the head and
tries again next round, so a slot that frees goes to it and not to whichever retry comes first. A client alone
gets every turn. One store query a round answers for all of this replica's waiting jobs; a round runs every
``every_s``, and at once when a job here started or ended (a slot may have freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from clipdlut.serving.errors import describe
from clipdlut.serving.stores import JobStore

log = logging.getLogger(__name__)


class Turns:
    """This replica's jobs waiting for an optimizer slot, each told when its turn comes."""

    def __init__(self, store: JobStore, weight_of: Callable[[str], float] = lambda client: 1.0,
                 every_s: float = 0.1):
        self.store = store
        self.weight_of = weight_of  # a client's weight now (the clients file may change)
        self.every_s = every_s
        self._waiting: dict[str, asyncio.Event] = {}
        self._nudged = asyncio.Event()
        self._rounds: asyncio.Task | None = None

    async def wait(self, job_id: str, client: str, stop: asyncio.Event, timeout: float, again: bool = False) -> bool:
        """Queue the job and wait for its turn: True when it came; False when ``stop`` was set first;
        ``TimeoutError`` after ``timeout`` s. ``again``: the optimizer was full at its last turn, so it waits for
        the next round (a slot that frees here nudges one at once) instead of asking again straight away."""
        await self.store.queue(job_id, client, self.weight_of(client))
        turn = self._waiting.setdefault(job_id, asyncio.Event())
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                turn.clear()
                if self._rounds is None or self._rounds.done():
                    self._rounds = asyncio.create_task(self._run())
                if not again:
                    self.nudge()
                again = True  # (a wake that was not the head's: the next round, not a spin)
                if not await self._either(turn, stop, deadline - asyncio.get_running_loop().time()):
                    raise TimeoutError
                # (a round's answer may be a moment old: the head is asked again, so a job goes only while it is
                # the head, and a slot that frees cannot go to a job that was the head before a newcomer came)
                if stop.is_set() or await self.store.head() == job_id:
                    return not stop.is_set()
        finally:
            self._waiting.pop(job_id, None)

    @staticmethod
    async def _either(turn: asyncio.Event, stop: asyncio.Event, timeout: float) -> bool:
        """Wait for ``turn`` or ``stop``: False after ``timeout`` s without either."""
        waits = [asyncio.ensure_future(turn.wait()), asyncio.ensure_future(stop.wait())]
        try:
            done, _ = await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return bool(done)

    async def started(self, job_id: str, client: str, passes: float) -> None:
        """The optimizer took the job: it leaves the queue, and its client is charged ``passes``."""
        await self.store.charge(client, passes, started=job_id)
        self.nudge()

    async def give_back(self, client: str, passes: float) -> None:
        """Passes charged and never served (the job ended, or its stream broke, before them)."""
        if passes > 0:
            await self.store.charge(client, -passes)
        self.nudge()

    def nudge(self) -> None:
        """Run a round now: a slot may have freed."""
        self._nudged.set()

    async def _run(self) -> None:
        """Rounds while any job here waits: the head of the queue, if it is one of these, goes."""
        while self._waiting:
            self._nudged.clear()
            try:
                head = await self.store.head()
            except Exception as e:  # (a store out of reach for a while: the next round asks again)
                log.debug("the fair queue's head could not be read: %s", describe(e))
                head = None
            if head is not None and (turn := self._waiting.get(head)) is not None:
                turn.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), self.every_s)
