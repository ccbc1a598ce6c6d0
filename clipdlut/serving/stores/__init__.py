"""The job store (see :mod:`~clipdlut.serving.stores.contract`): the contract, its SQLite and Redis
implementations, and :func:`open_store`, which picks one from a location."""

from clipdlut.serving.stores.contract import JobRecord, JobStore
from clipdlut.serving.stores.factory import open_store

__all__ = ["JobRecord", "JobStore", "open_store"]
