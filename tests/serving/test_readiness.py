import asyncio
import logging

import pytest

from clipdlut.serving.readiness import Readiness
from clipdlut.serving.wire import OptimizerHealth
from tests.conftest import until

pytestmark = pytest.mark.unit


def test_follow_keeps_the_last_answer_and_says_why_not_ready():
    answers = [ConnectionRefusedError("[Errno 111] Connection refused"),
               OptimizerHealth(ready=False, reason="loading the CLIP model ViT-B-16"),
               {"ready": True, "model": "tiny", "running": 0, "capacity": 8}]
    seen = []
    readiness = Readiness()

    async def ask():
        seen.append(readiness.reason)
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run():
        task = asyncio.create_task(readiness.follow(ask, every_s=0.01))
        while len(seen) < 4:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run())
    assert seen[:4] == ["the service is starting",
                        "the optimizer cannot be reached: ConnectionRefusedError: [Errno 111] Connection refused",
                        "loading the CLIP model ViT-B-16", None]
    assert readiness.ready


def test_an_optimizer_not_ready_is_asked_again_soon_and_a_ready_one_seldom():
    """A replica starting is ready a moment after its optimizer, not a whole period later."""
    answers = [OptimizerHealth(ready=False, reason="loading the CLIP model tiny")] * 2 + [OptimizerHealth(ready=True)]
    asked = []

    async def ask():
        asked.append(len(asked))
        return answers[min(len(asked) - 1, 2)]

    async def run():
        task = asyncio.create_task(Readiness().follow(ask, every_s=60, not_ready_every_s=0.01))
        await asyncio.sleep(0.5)
        task.cancel()

    asyncio.run(run())
    assert len(asked) == 3  # (two not ready, then ready: the next ask is a minute away)


def test_a_slow_optimizer_counts_as_unreachable():
    readiness = Readiness()

    async def hang():
        await asyncio.sleep(10)

    async def run():
        task = asyncio.create_task(readiness.follow(hang, every_s=0.01, timeout_s=0.05))
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(run())
    assert readiness.reason.startswith("the optimizer cannot be reached: TimeoutError")


def test_an_unreachable_job_store_makes_the_api_not_ready_whatever_the_optimizer_says():
    readiness = Readiness()
    readiness.update(OptimizerHealth(ready=True, model="tiny", running=0, capacity=8))
    assert readiness.ready
    readiness.store_failed(ConnectionError("Error 111 connecting to 10.0.0.7:6379. Connection refused."))
    assert readiness.reason == "the job store cannot be reached (ConnectionError); retry in a few seconds"
    assert "10.0.0.7" not in readiness.reason  # (a public probe never shows where the store is)
    readiness.update(None, "ConnectionRefusedError")
    assert "job store" in readiness.reason  # (the store first: without it nothing can be accepted)
    readiness.store_answered(readiness.store_failures)
    assert readiness.reason.startswith("the optimizer cannot be reached")


def test_only_a_ping_after_the_last_failure_makes_the_store_ready_again(caplog):
    """No flapping: a ping that began before a route's failure cannot undo it; an outage is one warning and one line
    when it ends, however many calls fail meanwhile."""
    now = [100.0]
    readiness = Readiness(clock=lambda: now[0])
    readiness.update(OptimizerHealth(ready=True))
    with caplog.at_level(logging.INFO, logger="clipdlut.serving.readiness"):
        began = readiness.store_failures
        for _ in range(20):
            readiness.store_failed(TimeoutError())
        readiness.store_answered(began)  # (a ping that started before the failures)
        assert not readiness.ready
        now[0] = 112.5
        readiness.store_answered(readiness.store_failures)
        assert readiness.ready
        readiness.store_answered(readiness.store_failures)  # (the next pings: nothing to say)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "job store" in r.getMessage()]
    assert lines == [("WARNING", "not ready: the job store cannot be reached (TimeoutError); ready again once it "
                                 "answers"),
                     ("INFO", "the job store answers again, after 12.5 s")]


def test_following_the_store_marks_a_slow_or_failing_ping_as_a_failure():
    readiness = Readiness()
    readiness.update(OptimizerHealth(ready=True))
    answers = iter([ConnectionError("refused"), "slow"])
    seen = []

    async def ping():
        seen.append(readiness.reason)
        answer = next(answers, None)
        if isinstance(answer, Exception):
            raise answer
        if answer == "slow":
            await asyncio.sleep(10)

    async def run():
        task = asyncio.create_task(readiness.follow_store(ping, every_s=0.0, timeout_s=0.05))
        await asyncio.wait_for(until(lambda: len(seen) >= 4), 5)
        task.cancel()

    asyncio.run(run())
    assert seen[:4] == [None, "the job store cannot be reached (ConnectionError); retry in a few seconds",
                        "the job store cannot be reached (TimeoutError); retry in a few seconds", None]
    assert readiness.store_failures == 2 and readiness.ready
