import asyncio

import pytest

from clipdlut.readiness import Readiness
from clipdlut.wire import OptimizerHealth

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
