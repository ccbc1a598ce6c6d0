"""A job as the replica that drives it sees it: its reads and lease-fenced writes, its end, and the few ways
driving it ends (:class:`Outcome`), told apart without exceptions."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from clipdlut.serving import usage
from clipdlut.serving.errors import StoreUnavailable, describe
from clipdlut.serving.stores import JobRecord, JobStore
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)


class Ending(enum.StrEnum):
    """How driving a job ended, from this replica's side."""

    ENDED = "ended"  # the job ended: finished, cancelled or failed (its status says which)
    HANDED_ON = "handed on"  # still open: this replica stopped driving it, or another replica holds its lease
    STORE_LOST = "store lost"  # still open: the store failed under a write; the lease lapses to another replica


@dataclass(frozen=True)
class Outcome:
    """The end of driving a job: how, the job's status then, why, and the result summary of a finished job."""

    ending: Ending
    status: JobStatus
    reason: str = ""
    result: dict[str, Any] | None = None

    @classmethod
    def of(cls, record: JobRecord | None, job_id: str) -> Outcome:
        """What the store says of a job this replica does not (or no longer) drive."""
        if record is None:
            return cls(Ending.ENDED, JobStatus.FAILED, f"job {job_id} is gone from the job store")
        if not record.done:
            return cls(Ending.HANDED_ON, record.status, f"job {job_id} is driven by another API replica now")
        if record.status == JobStatus.FINISHED and record.result is not None:
            return cls(Ending.ENDED, record.status, result=record.result)
        return cls(Ending.ENDED, record.status, record.error or f"job {job_id} ended {record.status}")


class StoreLost(Exception):
    """The job store failed under a call of a driven job: this replica stops driving it without a word, and its
    lease lapses to whichever replica can reach the store (it resumes from the last state stored)."""


class Driven:
    """A job this replica drives under ``owner``'s lease: its reads, its writes (each fenced by the lease) and its
    end, in one place. A write the store fails, or a read that cannot reach it, raises :class:`StoreLost`; any other
    error of a read is a bug, and raises as it is (the job then fails with it)."""

    def __init__(self, store: JobStore, job_id: str, owner: str | None = None, client: str = ""):
        self.store, self.job_id, self.owner = store, job_id, owner
        self.client = client  # whose job it is (its figures in /metrics are that client's)

    async def read(self, method: str) -> Any:
        """``store.<method>(job_id)``: the job's record, input or checkpoint."""
        try:
            return await getattr(self.store, method)(self.job_id)
        except StoreUnavailable as e:
            raise StoreLost(f"the job store failed while driving job {self.job_id}: {describe(e)}") from e

    async def write(self, method: str, *args: Any) -> bool:
        """``store.<method>(job_id, *args)`` under the lease: False when refused (the job has ended, or another
        replica holds its lease now)."""
        try:
            return await getattr(self.store, method)(self.job_id, *args, owner=self.owner) is not False
        except Exception as e:
            raise StoreLost(f"the job store failed while driving job {self.job_id}: {describe(e)}") from e

    async def outcome(self) -> Outcome:
        """How the job stands in the store, for a replica that does not drive it (or no longer may)."""
        return Outcome.of(await self.read("get"), self.job_id)

    async def end(self, status: JobStatus, reason: str) -> Outcome:
        """End the open job (cancelled or failed); should it have ended already, or be another replica's now, the
        store's word."""
        if await self.write("set_status", status, reason):
            log.info("job %s ended %s: %s", self.job_id, status, reason)
            usage.ended(self.client, status)
            return Outcome(Ending.ENDED, status, reason)
        return await self.outcome()
