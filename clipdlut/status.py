"""The one set of job statuses, with the ended ones and how each interface names them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job stands. The values are what the job store keeps and the native API reports (a ``str``:
    ``JobStatus.FINISHED == "finished"``)."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_finished(self) -> bool:
        """Ended: it never changes again."""
        return self in (JobStatus.FINISHED, JobStatus.CANCELLED, JobStatus.FAILED)

    @property
    def original(self) -> str:
        """The original system's name for it (``/query_task``)."""
        return _ORIGINAL[self]

    @property
    def task(self) -> str:
        """BentoML's task status for it (``/v1/retouch/status``)."""
        return _TASK[self]


_ORIGINAL = {JobStatus.QUEUED: "pending", JobStatus.RUNNING: "processing", JobStatus.FINISHED: "finished",
             JobStatus.CANCELLED: "stopped", JobStatus.FAILED: "failed"}
_TASK = {JobStatus.QUEUED: "in_progress", JobStatus.RUNNING: "in_progress", JobStatus.FINISHED: "completed",
         JobStatus.CANCELLED: "canceled", JobStatus.FAILED: "failed"}
ORIGINAL_STATUSES = tuple(dict.fromkeys(_ORIGINAL.values()))  # (for the response models' Literal types)
