"""Fixtures of the serving layer's tests: the optimizer's engine on the tiny model, a job store in a file."""

import pytest

from clipdlut.engine import Engine
from clipdlut.serving.stores.sqlite import SqliteJobStore


@pytest.fixture
def engine(guide):
    """The optimizer's batching engine on the tiny model, one job at a time (so a second job meets a full batch)."""
    e = Engine(guide, capacity=1)
    yield e
    e.stop()


@pytest.fixture
def store(tmp_path):
    return SqliteJobStore(tmp_path / "jobs.db")
