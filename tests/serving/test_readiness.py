import asyncio

import pytest

from clipdlut.serving.readiness import Readiness
from clipdlut.serving.wire import OptimizerHealth

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
    readiness.store_answered("ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    assert readiness.reason.startswith("the job store cannot be reached: ConnectionError")
    readiness.update(None, "ConnectionRefusedError")
    assert "job store" in readiness.reason  # (the store first: without it nothing can be accepted)
    readiness.store_answered(None)
    assert readiness.reason.startswith("the optimizer cannot be reached")
