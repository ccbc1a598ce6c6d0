import asyncio
import base64

import pytest

from clipdlut.engine import Engine, EngineFull
from clipdlut.serving.jobstream import InvalidJob, stream_job
from clipdlut.serving.wire import Accepted, Finished, OptimizeRequest, ProgressEvent, decode_tensor, parse_event
from tests.conftest import gradient_image, png_bytes, wait

pytestmark = pytest.mark.unit
WORKING = base64.b64encode(png_bytes(gradient_image())).decode()


def request(job_id: str, steps: int = 6, **kw) -> OptimizeRequest:
    return OptimizeRequest(job_id=job_id, images=[WORKING], target_prompt="暖色", steps=steps, lut_size=9, views=1,
                           progress_every=2, **kw)


@pytest.fixture
def engine(guide):
    e = Engine(guide, capacity=1)
    yield e
    e.stop()


def test_a_job_streams_progress_then_its_exact_lut(engine):
    async def run():
        return [parse_event(line) async for line in stream_job(engine, request("a", checkpoint_s=0), "tiny")]

    events = asyncio.run(run())
    assert isinstance(events[0], Accepted) and events[0].iteration == 0
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert [p.iteration for p in progress] == [2, 4, 6]
    assert all(p.preview for p in progress)
    assert [p.checkpoint.iteration if p.checkpoint else None for p in progress] == [2, 4, None]
    final = events[-1]
    assert isinstance(final, Finished) and final.iterations == 6 and final.model == "tiny"
    lut = decode_tensor(final.lut, (1, 3, 9, 9, 9))
    assert lut.shape == (1, 3, 9, 9, 9) and -1 < float(final.scores.directional) <= 1


def test_refusals_come_before_the_first_event(engine):
    async def first(req):
        return await anext(stream_job(engine, req, "tiny"))

    with pytest.raises(InvalidJob, match="cannot be run"):
        asyncio.run(first(request("bad").model_copy(update={"images": ["bm90IGFuIGltYWdl"]})))
    with pytest.raises(InvalidJob, match="loss"):
        asyncio.run(first(request("bad", weights={"no_such_term": 1.0})))

    async def full():
        held = stream_job(engine, request("held", steps=10_000), "tiny")
        await anext(held)
        try:
            await first(request("more"))
        finally:
            await held.aclose()

    with pytest.raises(EngineFull):
        asyncio.run(full())


def test_closing_the_stream_cancels_the_job_at_the_next_step(engine, caplog):
    async def run():
        events = stream_job(engine, request("gone", steps=10_000), "tiny")
        async for line in events:
            if parse_event(line).kind == "progress":
                break
        await events.aclose()  # what a disconnect does to the server's generator

    with caplog.at_level("INFO"):
        asyncio.run(run())
        wait(lambda: engine.running == 0, timeout=10)
    assert any("caller went away" in r.getMessage() for r in caplog.records)
    (left,) = [r.getMessage() for r in caplog.records if "left the batch" in r.getMessage()]
    assert "gone" in left and int(left.split(", ")[1].split(" ")[0]) <= 1
