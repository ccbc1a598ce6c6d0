"""The optimizer's run loop: one thread steps a :class:`BatchedOptimizer` while jobs come and go.

Submitted jobs join the running batch at the next step (continuous batching) instead of waiting for
the batch to finish; ended jobs leave at once. Cancel flags are read from the job store every step,
and progress with a preview is written to it every ``progress_every`` steps.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from clipdlut.guidance import Guide
from clipdlut.optimizer import CANCELLED, FAILED, BatchedOptimizer, JobResult, JobSpec, Progress
from clipdlut.store import RUNNING, JobStore

log = logging.getLogger(__name__)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Engine:
    """Owns the model's only optimizer thread; :meth:`submit` is safe from any thread."""

    def __init__(self, guide: Guide, store: JobStore, max_active: int = 32,
                 on_step: Callable[[int], None] | None = None, on_end: Callable[[JobResult], None] | None = None,
                 job_timeout_s: float | None = None):
        self.store = store
        self.max_active = max_active
        self.job_timeout_s = job_timeout_s
        self.on_step = on_step
        self.on_end = on_end
        self.optimizer = BatchedOptimizer(guide, on_progress=self._on_progress)
        self._pending: deque[tuple[JobSpec, Future]] = deque()
        self._futures: dict[str, Future] = {}
        self._started: dict[str, float] = {}  # monotonic time each running job entered the batch
        self._known: dict[str, Future] = {}  # queued or running
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="clipdlut-engine", daemon=True)
        self._thread.start()

    def submit(self, specs: list[JobSpec]) -> list[Future]:
        """Queue jobs; each future resolves to its :class:`JobResult`.

        Idempotent: a job already queued or running keeps its place and its future.
        """
        futures = []
        with self._wake:
            for spec in specs:
                fut = self._known.get(spec.job_id)
                if fut is None:
                    fut = self._known[spec.job_id] = Future()
                    self._pending.append((spec, fut))
                futures.append(fut)
            self._wake.notify()
        return futures

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)

    @property
    def active(self) -> int:
        return len(self.optimizer)

    def _on_progress(self, p: Progress) -> None:
        self.store.progress(p.job_id, p.iteration, p.total, p.loss, p.terms,
                            _png(p.preview) if p.preview is not None else None)

    def _admit(self) -> None:
        with self._wake:
            room = self.max_active - len(self.optimizer)
            batch = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
        if not batch:
            return
        for spec, fut in batch:
            self._futures[spec.job_id] = fut
        for r in self.optimizer.add([spec for spec, _ in batch]):
            self._resolve(r)
        for spec, _ in batch:
            if spec.job_id in self._futures:
                self._started[spec.job_id] = time.monotonic()
                self.store.set_status(spec.job_id, RUNNING)

    def _enforce_timeout(self) -> None:
        if self.job_timeout_s is None:
            return
        deadline = time.monotonic() - self.job_timeout_s
        for job_id, started in list(self._started.items()):
            if started < deadline:
                self.optimizer.cancel(job_id, failure=f"timed out: the job ran longer than {self.job_timeout_s:g} s")

    def _resolve(self, result: JobResult) -> None:
        if result.status in (CANCELLED, FAILED):
            self.store.set_status(result.job_id, result.status, result.error)
        if self.on_end:
            try:
                self.on_end(result)
            except Exception:
                log.exception("recording the end of job %s failed", result.job_id)
                self.store.set_status(result.job_id, FAILED, "the optimizer could not record the result")
        with self._wake:
            self._known.pop(result.job_id, None)
        self._started.pop(result.job_id, None)
        fut = self._futures.pop(result.job_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and not self._pending and not len(self.optimizer):
                    self._wake.wait()
                if self._stopped:
                    break
            try:
                self._admit()
                for job_id in self.store.cancel_requested(self.optimizer.active_ids):
                    self.optimizer.cancel(job_id)
                self._enforce_timeout()
                ended = self.optimizer.step()
                if self.on_step and self.optimizer.last_batch_size:
                    self.on_step(self.optimizer.last_batch_size)
                for r in ended:
                    self._resolve(r)
            except Exception as e:  # the loop must survive anything; fail the jobs it could not run
                log.exception("optimizer loop error")
                for job_id in list(self.optimizer.active_ids):
                    self.optimizer.cancel(job_id)
                    self._resolve(JobResult(job_id, FAILED, 0, 0.0, error=f"optimizer error: {e}"))
                self.optimizer = BatchedOptimizer(self.optimizer.guide, on_progress=self._on_progress)
        for spec, fut in list(self._pending):
            self._futures[spec.job_id] = fut
            self._resolve(JobResult(spec.job_id, FAILED, 0, 0.0, error="the optimizer stopped"))
