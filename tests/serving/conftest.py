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


class Clock:
    """Time a test moves by hand: a job store stamps its times, leases and retention with it, so a test of a
    lease that lapses needs no wait."""

    def __init__(self, now: float = 1.8e9):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    return SqliteJobStore(tmp_path / "jobs.db", clock=clock)
