"""The optimizer's run loop: one thread steps a :class:`BatchedOptimizer` while jobs come and go.

Submitted jobs join the running batch at the next step (continuous batching) instead of waiting for the
batch to finish; ended jobs leave at once. The engine keeps no store: each job reports to the listener it
was submitted with (progress, its state now and then, and its end), and a job whose caller goes away is
cancelled and leaves the batch at the next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from clipdlut.guidance import Guide
from clipdlut.imaging import encode_image
from clipdlut.optimizer import BatchedOptimizer, JobResult, JobSpec, JobState, Progress
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)


class EngineFull(RuntimeError):
    """The batch holds as many jobs as it can: send the job to another replica, or later."""


@dataclass
class Report:
    """What a job's listener hears between its start and its end."""

    progress: Progress
    preview_png: bytes | None = None
    state: JobState | None = None  # when a checkpoint was due


Listener = Callable[[Report | JobResult], None]  # called on the engine's thread: hand the item over, return fast


@dataclass
class _Entry:
    spec: JobSpec
    listener: Listener
    checkpoint_s: float | None
    submitted: float
    started: float | None = None
    last_checkpoint: float = 0.0
    cancel_at_step: int | None = None  # the engine's step count when its caller went away


class Engine:
    """Owns the model's only optimizer thread; :meth:`submit` and :meth:`cancel` are safe from any thread."""

    def __init__(self, guide: Guide, capacity: int = 16, on_step: Callable[[int], None] | None = None,
                 job_timeout_s: float | None = None):
        self.capacity = capacity
        self.job_timeout_s = job_timeout_s
        self.on_step = on_step
        self.optimizer = BatchedOptimizer(guide, on_progress=self._on_progress)
        self._entries: dict[str, _Entry] = {}  # queued or running, by job id
        self._pending: list[str] = []
        self._cancels: dict[str, str | None] = {}  # job id -> failure reason (None: a plain cancel)
        self._steps = 0
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="clipdlut-engine", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Jobs taken and not yet ended."""
        with self._wake:
            return len(self._entries)

    def submit(self, spec: JobSpec, listener: Listener, checkpoint_s: float | None = None) -> None:
        """Take a job into the batch at the next step, or raise :class:`EngineFull` (nothing taken).

        ``checkpoint_s``: hand the listener the job's state with a progress report at most this often
        (None: never). A job sent again while an earlier copy is still here (its caller lost that stream) ends
        the earlier copy, and is refused with :class:`EngineFull` until it has left: the newest call wins.
        """
        with self._wake:
            if self._stopped:
                raise EngineFull("the optimizer is shutting down")
            if (earlier := self._entries.get(spec.job_id)) is not None:
                self._cancels.setdefault(spec.job_id, None)
                earlier.cancel_at_step = earlier.cancel_at_step if earlier.cancel_at_step is not None else self._steps
                self._wake.notify()
                raise EngineFull(f"job {spec.job_id} is still leaving the batch here; send it again")
            if len(self._entries) >= self.capacity:
                raise EngineFull(f"the batch is full ({self.capacity} jobs)")
            self._entries[spec.job_id] = _Entry(spec, listener, checkpoint_s, time.monotonic())
            self._pending.append(spec.job_id)
            self._wake.notify()

    def cancel(self, job_id: str, failure: str | None = None) -> None:
        """End a job at the next step: cancelled, or failed with ``failure`` as the reason."""
        with self._wake:
            if (entry := self._entries.get(job_id)) is not None:
                self._cancels.setdefault(job_id, failure)
                entry.cancel_at_step = self._steps
                self._wake.notify()

    def stop(self) -> None:
        """End every job (failed: the optimizer stopped) and the thread."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # -- the engine thread -------------------------------------------------------------------------

    def _on_progress(self, p: Progress) -> None:
        entry = self._entries.get(p.job_id)
        if entry is None:
            return
        state = None
        now = time.monotonic()
        due = entry.checkpoint_s is not None and now - entry.last_checkpoint >= entry.checkpoint_s
        if due and p.iteration < p.total:  # (a finished job's state is its result)
            entry.last_checkpoint = now
            state = self.optimizer.state(p.job_id)
        self._tell(entry, Report(p, encode_image(p.preview, png_level=1) if p.preview is not None else None, state))

    @staticmethod
    def _tell(entry: _Entry, item: Report | JobResult) -> None:
        try:
            entry.listener(item)
        except Exception:
            log.exception("the listener of job %s failed", entry.spec.job_id)

    def _admit(self) -> None:
        with self._wake:
            taken, self._pending = self._pending, []
            specs = [self._entries[j].spec for j in taken if j in self._entries and j not in self._cancels]
        if not specs:
            return
        for r in self.optimizer.add(specs):
            self._end(r)
        now = time.monotonic()
        for spec in specs:
            if (entry := self._entries.get(spec.job_id)) is not None:
                entry.started = now

    def _apply_cancels(self) -> None:
        with self._wake:
            cancels, self._cancels = self._cancels, {}
        for job_id, failure in cancels.items():
            if not self.optimizer.cancel(job_id, failure=failure) and job_id in self._entries:
                status = JobStatus.FAILED if failure else JobStatus.CANCELLED
                self._end(JobResult(job_id, status, 0, 0.0, error=failure))

    def _enforce_timeout(self) -> None:
        if self.job_timeout_s is None:
            return
        deadline = time.monotonic() - self.job_timeout_s
        for job_id, entry in list(self._entries.items()):
            if entry.started is not None and entry.started < deadline:
                self.optimizer.cancel(job_id, failure=f"timed out: the job ran longer than {self.job_timeout_s:g} s")

    def _end(self, result: JobResult) -> None:
        with self._wake:
            entry = self._entries.pop(result.job_id, None)
        if entry is None:
            return
        if entry.cancel_at_step is not None:
            log.info("job %s left the batch at iteration %d, %d step(s) after it was cancelled", result.job_id,
                     result.iterations, self._steps - entry.cancel_at_step)
        self._tell(entry, result)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and not self._pending and not self._cancels and not len(self.optimizer):
                    self._wake.wait()
                if self._stopped:
                    break
            try:
                self._apply_cancels()
                self._admit()
                self._enforce_timeout()
                for r in self.optimizer.step():
                    self._end(r)  # (before counting the step: a job cancelled meanwhile was not in it)
                if self.optimizer.last_batch_size:
                    self._steps += 1
                    if self.on_step:
                        self.on_step(self.optimizer.last_batch_size)
            except Exception as e:  # the loop must survive anything; end the jobs it held (another replica, or
                log.exception("optimizer loop error")  # this one sent them again, may well run them)
                self.optimizer = BatchedOptimizer(self.optimizer.guide, on_progress=self._on_progress)
                with self._wake:
                    held = [job_id for job_id in self._entries if job_id not in self._pending]
                for job_id in held:
                    self._end(JobResult(job_id, JobStatus.FAILED, 0, 0.0, error=f"optimizer error: {e}",
                                        retryable=True))
        for job_id in list(self._entries):
            self._end(JobResult(job_id, JobStatus.FAILED, 0, 0.0, error="the optimizer stopped", retryable=True))
