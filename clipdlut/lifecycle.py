"""Every accepted job ends: heartbeats, a watchdog for jobs whose process died, and retention.

Each API process runs one :class:`Watchdog` thread. It beats for its own instance; it
fails open jobs held by an instance that stopped beating (a killed worker, a restarted server) with a
reason the user can read; and it deletes ended jobs, their files and previews after the retention time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

from clipdlut.store import JobStore

log = logging.getLogger(__name__)


def new_instance(role: str) -> str:
    """A unique name for one process of one role (a restarted process gets a new one)."""
    return f"{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Watchdog:
    """Heartbeat, orphan sweep and retention for one process, every ``interval_s`` on a daemon thread."""

    def __init__(self, store: JobStore, role: str, stale_after_s: float = 15.0, retention_s: float = 86400.0,
                 interval_s: float = 1.0, purge_every_s: float = 60.0):
        self.store = store
        self.role = role
        self.instance = new_instance(role)
        self.stale_after_s = stale_after_s
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.purge_every_s = purge_every_s
        self._last_purge = 0.0
        self._stop = threading.Event()
        self.store.beat(self.instance, role, os.getpid())  # owned jobs are safe from the first moment
        self._thread = threading.Thread(target=self._run, name=f"clipdlut-watchdog-{role}", daemon=True)
        self._thread.start()

    def tick(self) -> None:
        """One round: beat, fail orphans, and (now and then) purge expired jobs."""
        self.store.beat(self.instance, self.role, os.getpid())
        for job_id in self.store.fail_orphans(self.stale_after_s):
            log.warning("job %s failed: the process that held it stopped", job_id)
        now = time.time()
        if now - self._last_purge >= self.purge_every_s:
            self._last_purge = now
            if n := self.store.purge(now - self.retention_s):
                log.info("deleted %d jobs older than the retention of %g s", n, self.retention_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # a busy or briefly missing store must not end the heartbeat
                log.exception("watchdog round failed")

    def stop(self) -> None:
        """Stop beating and leave the worker list (a clean shutdown is not a crash)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.retire(self.instance)
