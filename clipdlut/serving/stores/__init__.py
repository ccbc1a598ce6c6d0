"""The job store (see :mod:`~clipdlut.serving.stores.contract`): the contract, its SQLite and Redis
implementations, and :func:`open_store`, which picks one from a location."""

from clipdlut.serving.stores.contract import Admission, JobRecord, JobStore, Quota, Refusal
from clipdlut.serving.stores.factory import open_store

__all__ = ["Admission", "JobRecord", "JobStore", "Quota", "Refusal", "open_store"]
