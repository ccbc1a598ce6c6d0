"""The job store: state, progress, previews, cancel flags, leases and results of every job.

Owned by the API service (the optimizer keeps no state). Every API replica reads and writes it, on one
host or many, so each method is atomic on its own: two replicas calling at once never see half of a write,
and never both succeed where only one may. :class:`JobStore` is the contract, which
:mod:`~clipdlut.serving.stores.sqlite` and :mod:`~clipdlut.serving.stores.redis` implement.

Fair share: jobs waiting for an optimizer slot are queued here (:meth:`JobStore.queue`), across all replicas; the
next slot goes to the longest-waiting job of the client with the least image passes served so far, each divided by
the client's weight (:meth:`JobStore.head`, :meth:`JobStore.charge`): weighted fair queueing with virtual counters,
as VTC does for LLM serving.

Leases: each open job has one driving replica at a time, its ``owner``. The owner renews the lease of the
jobs it drives every second or so; a replica that stops renewing (killed, restarted, scaled down, cut off)
loses its jobs to the first live replica that calls :meth:`JobStore.take_over`, which counts the takeovers
so that a job that takes down every replica that drives it ends instead of going round forever. A replica
that stops cleanly releases its leases: the next replica takes the jobs at once, and that does not count.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from clipdlut.status import JobStatus


@dataclass
class JobRecord:
    """One job as the API reports it (inputs, previews, checkpoints and result files are fetched separately)."""

    job_id: str
    status: JobStatus
    created: float
    updated: float
    iteration: int = 0
    total: int = 0
    loss: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    owner: str | None = None  # the API replica driving it (while open)
    takeovers: int = 0  # times it was taken over from an API replica that stopped without handing it on
    client: str = ""  # the client that submitted it (its only reader); "" on a service open to all

    def __post_init__(self) -> None:
        self.status = JobStatus(self.status)  # (stores keep the value)

    @property
    def done(self) -> bool:
        return self.status.is_finished


HOUR_S = 3600.0  # the window of a client's jobs-per-hour quota


@dataclass(frozen=True)
class Quota:
    """One client's own bounds at admission, on top of the service's (None: no bound of its own)."""

    max_open: int | None = None  # its jobs queued or running
    per_hour: int | None = None  # its jobs submitted in the last hour


class Refusal(enum.StrEnum):
    """The bound that refused a new job."""

    SERVICE_FULL = "the service's open jobs"
    CLIENT_OPEN = "the client's open jobs"
    CLIENT_HOURLY = "the client's jobs per hour"


@dataclass(frozen=True)
class Admission:
    """A create's answer: true when the job was added; else the bound that refused it and, for the hourly quota,
    when the oldest job counted leaves the window."""

    refused: Refusal | None = None
    retry_after_s: float | None = None

    def __bool__(self) -> bool:
        return self.refused is None


class JobStore(Protocol):
    """What the API service needs from a job store. Every method is one atomic step.

    A job is open (queued or running) until it ends finished, cancelled or failed; an ended job never
    changes again (later writes to it are ignored), loses its inputs and checkpoint, and is deleted with its
    files after the store's retention time.
    """

    async def create(self, job_id: str, options: dict[str, Any], source: bytes, working: bytes, owner: str,
                     max_open: int | None = None, client: str = "", quota: Quota = Quota()) -> Admission:
        """Add a queued job of ``client`` leased to ``owner``; refused (nothing added) when ``max_open`` jobs are
        open, or when ``client`` is at a bound of its ``quota``. The counts and the insert are one step: concurrent
        creates never overshoot a bound. Creating a job that ``owner`` already created is a success (a call
        retried after its answer was lost)."""

    async def admission(self, max_open: int | None = None, client: str = "", quota: Quota = Quota()) -> Admission:
        """What :meth:`create` would answer for a new job of ``client`` now, without adding one: a cheap check
        before an upload is decoded (:meth:`create` stays the authority: the answer may change meanwhile)."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if it never existed or has expired."""

    async def input(self, job_id: str) -> tuple[bytes, bytes] | None:
        """The original upload and the working copy of an open job."""

    async def set_status(self, job_id: str, status: str, error: str | None = None, owner: str | None = None
                         ) -> bool:
        """Move an open job to ``status`` (an end releases its lease); False if it had already ended, or (given
        ``owner``) if ``owner`` does not hold its lease: a replica that lost a job can no longer write to it."""

    async def progress(self, job_id: str, iteration: int, total: int, loss: float, terms: dict[str, float],
                       preview: bytes | None = None, checkpoint: bytes | None = None, owner: str | None = None
                       ) -> bool:
        """Record a step of an open job (queued becomes running); a missing preview or checkpoint keeps the last.
        False (nothing written) as :meth:`set_status`."""

    async def preview(self, job_id: str) -> bytes | None:
        """The last preview PNG."""

    async def checkpoint(self, job_id: str) -> bytes | None:
        """The last state the optimizer sent for an open job (what a new driver resumes from)."""

    async def request_cancel(self, job_id: str) -> bool:
        """Flag an open job for cancellation (its driver stops it); False if it has already ended."""

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` whose cancellation was requested."""

    async def finish(self, job_id: str, result: dict[str, Any], files: dict[str, bytes], owner: str | None = None
                     ) -> bool:
        """End an open job finished with its result summary and files, all at once; False (nothing written) as
        :meth:`set_status`."""

    async def file(self, job_id: str, name: str) -> bytes | None:
        """A result file of a finished job."""

    async def open_jobs(self) -> int:
        """How many jobs are queued or running."""

    async def renew(self, owner: str, job_ids: list[str]) -> set[str]:
        """Renew ``owner``'s leases on ``job_ids``; returns those it still holds (the others were taken over
        or have ended: their driver must stop without writing)."""

    async def release(self, owner: str) -> int:
        """Give up every lease ``owner`` holds now (a clean shutdown): any replica may take them at once, and
        that takeover is not counted."""

    async def take_over(self, owner: str, idle_s: float, limit: int) -> list[tuple[str, int]]:
        """Lease to ``owner`` up to ``limit`` open jobs whose lease was not renewed for ``idle_s`` (or was
        released); returns (job id, takeovers it has now had). No job is handed to two callers."""

    async def queue(self, job_id: str, client: str, weight: float = 1.0) -> None:
        """Put an open job of ``client`` in the fair queue for an optimizer slot (already there: nothing changes).
        A client that had no job waiting starts at the service's virtual time: time it spent idle is not credit
        to spend later. ``weight`` is the client's share (its passes count 1/weight). An ending job leaves the
        queue."""

    async def head(self) -> str | None:
        """The waiting job whose turn it is: the longest-waiting job of the client with the least weighted service
        (ties: the longest-waiting job of those clients), or None when none waits."""

    async def charge(self, client: str, passes: float, started: str | None = None) -> None:
        """Count ``passes`` image passes served to ``client`` (negative: given back, for a job that ended before
        its passes were served). With ``started``, that job leaves the queue (an optimizer took it) and the
        service's virtual time moves up to the client's service before this charge."""

    async def purge(self) -> int:
        """Delete jobs that ended more than the retention time ago, with their files; returns how many."""

    async def ping(self) -> None:
        """Reach the store with the cheapest call that proves it can take writes now (raises if it cannot)."""

    async def close(self) -> None:
        """Release connections."""
