import asyncio

import pytest
import torch

from clipdlut.serving.wire import (
    Accepted,
    Checkpoint,
    Failed,
    ProgressEvent,
    decode_tensor,
    encode_event,
    encode_tensor,
    read_events,
)

pytestmark = pytest.mark.unit


def test_tensors_travel_exactly():
    t = torch.randn(1, 3, 5, 5, 5)
    assert torch.equal(decode_tensor(encode_tensor(t), (1, 3, 5, 5, 5)), t)
    with pytest.raises(ValueError, match="expected 375"):
        decode_tensor(encode_tensor(t[..., :4]), (1, 3, 5, 5, 5))


def test_a_checkpoint_round_trips_the_state():
    from clipdlut.optimizer import JobState

    g = torch.Generator().manual_seed(3)
    torch.rand(7, generator=g)
    state = JobState(4, torch.randn(1, 3, 3, 3, 3), torch.rand(1, 3, 3, 3, 3), torch.rand(1, 3, 3, 3, 3), 4.0,
                     g.get_state())
    back = Checkpoint.model_validate_json(Checkpoint.of(state).model_dump_json()).state(3)
    assert back.iteration == 4 and back.adam_step == 4.0
    for name in ("delta", "exp_avg", "exp_avg_sq", "rng_state"):
        assert torch.equal(getattr(back, name), getattr(state, name))


def test_events_are_ascii_lines_that_survive_any_cut():
    events = [Accepted(iteration=0, model="tiny"), ProgressEvent(iteration=5, total=10, loss=0.5, terms={"a": 1.0}),
              Failed(iteration=5, error="失败: 损失变成了 NaN")]
    text = "".join(encode_event(e) for e in events)
    assert text.isascii() and text.count("\n") == 3

    async def chunks(size):
        for i in range(0, len(text), size):
            yield text[i:i + size].encode("ascii") if size % 2 else text[i:i + size]

    async def collect(size):
        return [e async for e in read_events(chunks(size))]

    for size in (1, 3, 7, 64, len(text)):
        assert asyncio.run(collect(size)) == events


def test_a_request_from_the_api_before_series_is_a_series_of_one():
    from clipdlut.serving.wire import OptimizeRequest

    old = OptimizeRequest.model_validate({"job_id": "j", "image": "aW1n", "target_prompt": "暖色", "steps": 3})
    assert old.images == ["aW1n"] and "image" not in old.model_dump()
