"""What travels between the API service and the optimizer service: one request and a stream of events per job.

The request carries everything a job needs (working copy, prompts, options, loss weights, seed and, when a
job is sent again after its stream broke, the state to resume from), so the optimizer keeps nothing that
outlives the call. The response is newline-delimited JSON, one event a line, ASCII only: however the
transport cuts the bytes, :func:`read_events` puts the lines back together.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, TypeAdapter, model_validator

from clipdlut.limits import MAX_PHOTOS
from clipdlut.losses import LossWeights
from clipdlut.optimizer import JobState, Scores
from clipdlut.options import DEFAULT_LR, DEFAULT_LUT_SIZE, DEFAULT_SOURCE_PROMPT, MODES, PINS, Mode


def encode_tensor(t: torch.Tensor) -> str:
    """A tensor's values as base64 of little-endian float32 (exact for the float32 the optimizer keeps)."""
    return base64.b64encode(t.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4").tobytes()).decode()


def decode_tensor(data: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`encode_tensor`; raises ``ValueError`` when the size does not fit ``shape``."""
    arr = np.frombuffer(base64.b64decode(data), dtype="<f4")
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"expected {int(np.prod(shape))} float32 values for shape {shape}, got {arr.size}")
    return torch.from_numpy(arr.astype(np.float32).reshape(shape))


class Checkpoint(BaseModel):
    """A job's complete optimizer state after ``iteration`` steps: resuming from it continues the same run."""

    iteration: int = Field(ge=0, description="steps done")
    delta: str = Field(description="LUT minus identity, (1, 3, N, N, N) float32 base64")
    exp_avg: str = Field(description="Adam's first moments, like delta")
    exp_avg_sq: str = Field(description="Adam's second moments, like delta")
    adam_step: float = Field(ge=0, description="Adam's step count")
    rng_state: str = Field(description="the job's view generator state (torch.Generator.get_state), base64")

    @classmethod
    def of(cls, state: JobState) -> Checkpoint:
        return cls(iteration=state.iteration, delta=encode_tensor(state.delta), exp_avg=encode_tensor(state.exp_avg),
                   exp_avg_sq=encode_tensor(state.exp_avg_sq), adam_step=state.adam_step,
                   rng_state=base64.b64encode(state.rng_state.numpy().tobytes()).decode())

    def state(self, lut_size: int) -> JobState:
        shape = (1, 3, lut_size, lut_size, lut_size)
        rng = torch.from_numpy(np.frombuffer(base64.b64decode(self.rng_state), dtype=np.uint8).copy())
        return JobState(self.iteration, decode_tensor(self.delta, shape), decode_tensor(self.exp_avg, shape),
                        decode_tensor(self.exp_avg_sq, shape), self.adam_step, rng)


class OptimizeRequest(BaseModel):
    """One job for the optimizer service: everything its result depends on."""

    job_id: str = Field(min_length=1, max_length=64)
    images: list[str] = Field(min_length=1, max_length=MAX_PHOTOS, description="the working copies of the photos "
                              "(a series gets one LUT), base64 PNG (the API makes them; short side ~288 px)")
    target_prompt: str = Field("", description="the look's prompt (empty: the reference photo gives the look)")
    source_prompt: str = Field(DEFAULT_SOURCE_PROMPT, min_length=1)
    steps: int = Field(ge=1)
    lut_size: int = Field(DEFAULT_LUT_SIZE, ge=2, le=65, description="LUT nodes per side while optimizing")
    seed: int = Field(0, ge=0)
    views: int = Field(4, ge=1, le=64, description="random crops per step")
    lr: float = Field(DEFAULT_LR, gt=0)
    keep_blacks: bool = Field(False, description=PINS["keep_blacks"])
    keep_whites: bool = Field(False, description=PINS["keep_whites"])
    protect_skin: bool = Field(False, description=PINS["protect_skin"])
    weights: dict[str, float] = Field(default_factory=dict, description="loss term weights that differ from the "
                                      "defaults (clipdlut.losses.LossWeights)")
    progress_every: int = Field(5, ge=1, description="steps between progress events")
    preview: bool = Field(True, description="send a small preview PNG with each progress event")
    checkpoint_s: float | None = Field(10.0, ge=0, description="send the job's state with a progress event at "
                                       "most this often (seconds; 0 = every event, null = never)")
    resume: Checkpoint | None = Field(None, description="continue from this state instead of starting over")
    reference: str | None = Field(None, description="the working copy of a reference photo, base64 PNG")
    start: str | None = Field(None, description="the LUT to start from, (1, 3, M, M, M) float32 base64")
    start_size: int | None = Field(None, ge=2, le=65, description="M, the size of `start`")
    mode: Mode = Field("color", description="; ".join(f"`{k}`: {v}" for k, v in MODES.items()))

    @model_validator(mode="before")
    @classmethod
    def _one_image(cls, data: Any) -> Any:
        """An API of the version before series sends one working copy as ``image``: it is a series of one."""
        if isinstance(data, dict) and "image" in data and "images" not in data:
            data = {**data, "images": [data["image"]]}
            del data["image"]
        return data

    def loss_weights(self) -> LossWeights:
        return LossWeights().with_overrides(**self.weights)


class Accepted(BaseModel):
    """The job joined the running batch (first event of every stream)."""

    kind: Literal["accepted"] = "accepted"
    iteration: int = Field(description="the step it starts from (above 0 when resumed)")
    model: str


class Beat(BaseModel):
    """Nothing to report yet, but the optimizer is alive (sent when a stream has been quiet for a while)."""

    kind: Literal["beat"] = "beat"


class ProgressEvent(BaseModel):
    kind: Literal["progress"] = "progress"
    iteration: int
    total: int
    loss: float
    terms: dict[str, float] = Field(default_factory=dict)
    preview: str | None = Field(None, description="PNG of the current grade on a thumbnail, base64")
    checkpoint: Checkpoint | None = None


class Finished(BaseModel):
    """The last event of a job that ran to the end: its exact LUT and its scores."""

    kind: Literal["finished"] = "finished"
    iterations: int
    seconds: float = Field(description="seconds this call spent on the job")
    lut: str = Field(description="the LUT (1, 3, N, N, N), float32 little-endian, base64")
    lut_size: int
    loss: float | None = None
    scores: Scores
    model: str


class Failed(BaseModel):
    """The last event of a job that failed here."""

    kind: Literal["failed"] = "failed"
    iteration: int
    error: str
    retryable: bool = Field(False, description="the replica failed, not the job: sending it again may succeed "
                            "(otherwise it would fail the same way)")


Event = Annotated[Accepted | Beat | ProgressEvent | Finished | Failed, Field(discriminator="kind")]
_EVENT = TypeAdapter(Event)


def encode_event(event: BaseModel) -> str:
    """One event as a line of ASCII JSON (non-ASCII escaped, so any cut of the bytes decodes)."""
    return json.dumps(event.model_dump(mode="json", exclude_none=True), ensure_ascii=True, separators=(",", ":")) + "\n"


def parse_event(line: str) -> Accepted | Beat | ProgressEvent | Finished | Failed:
    return _EVENT.validate_json(line)


async def read_events(chunks: AsyncIterable[str | bytes]) -> AsyncIterator[Accepted | Beat | ProgressEvent
                                                                              | Finished | Failed]:
    """Events from a stream of text chunks cut anywhere (an HTTP body read in pieces, or whole lines)."""
    pending: list[str] = []  # the pieces of a line not yet ended (a state can be megabytes: no re-scans)
    async for chunk in chunks:
        text = chunk.decode("ascii") if isinstance(chunk, bytes) else chunk
        while (end := text.find("\n")) >= 0:
            line, text = "".join(pending) + text[:end], text[end + 1:]
            pending = []
            if line.strip():
                yield parse_event(line)
        if text:
            pending.append(text)
    if (rest := "".join(pending)).strip():
        yield parse_event(rest)


class OptimizerHealth(BaseModel):
    """Whether an optimizer replica can take jobs, and why not."""

    ready: bool
    reason: str | None = Field(None, description="why it is not ready (loading, weights missing, ...)")
    model: str | None = None
    running: int = Field(0, description="jobs in its batch now")
    capacity: int = Field(0, description="jobs its batch holds")
