"""Every setting of the service, read once from ``CLIPDLUT_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clipdlut.limits import MAX_PROMPT_CHARS


def _default_store() -> str:
    home = os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")
    return str(Path(home) / "clipdlut" / "jobs.db")


# The range of each numeric setting (inclusive; None: no upper bound): a value outside fails at start, naming it.
_RANGES: dict[str, tuple[float, float | None]] = {
    "max_batch_size": (1, None), "job_timeout_s": (1, None), "max_body_mb": (0.001, None), "max_pixels": (1, None),
    "max_prompt_chars": (1, None), "max_steps": (1, None), "working_size": (32, 4096),
    "views": (1, 64), "progress_every": (1, None), "max_open_jobs": (1, None), "retry_after_s": (0, None),
    "watchdog_s": (0.1, None), "takeovers": (0, None), "retention_s": (0, None), "optimizer_attempts": (1, None),
    "optimizer_wait_s": (0, None), "stream_beat_s": (0.01, None), "stream_stall_s": (0.01, None),
    "ready_needs_optimizer": (0, 1),
}


@dataclass(frozen=True)
class Settings:
    """Defaults are documented in the README's settings table; each maps to ``CLIPDLUT_<NAME>``."""

    clip_model: str = "ViT-B-16"
    device: str = ""  # empty: cuda when available, else cpu
    store: str = field(default_factory=_default_store)
    gpu_type: str = "nvidia-l4"
    max_batch_size: int = 16  # jobs one optimizer replica's batch holds (= its traffic.concurrency)
    job_timeout_s: int = 3600
    max_body_mb: float = 32.0
    max_pixels: int = 40_000_000
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_steps: int = 5000
    working_size: int = 288
    views: int = 4
    progress_every: int = 5
    max_open_jobs: int = 64  # queued + running; more submissions get 429
    retry_after_s: int = 10
    watchdog_s: float = 15.0  # a job whose API replica has not renewed its lease this long is taken over
    takeovers: int = 3  # times a job may be taken over from a stopped API replica; once more and it fails
    retention_s: int = 86_400
    api_key: str = ""  # when set, every route but the health checks needs "Authorization: Bearer <key>"
    cors_origins: str = ""  # comma-separated origins allowed by CORS; empty: CORS off
    optimizer_url: str = ""  # an optimizer served elsewhere (http://host:port); empty: start one with the API
    optimizer_attempts: int = 3  # streams a job may lose (replica killed, connection dropped) before it fails
    optimizer_wait_s: float = 3600.0  # how long a job may wait for an optimizer with room before it fails
    checkpoint_s: float = 10.0  # the optimizer sends a job's state at most this often (s); resumes start there
    stream_beat_s: float = 5.0  # a quiet job stream sends a heartbeat this often
    stream_stall_s: float = 60.0  # a stream silent this long counts as lost (the job is sent again)
    # build settings (read when `bentoml build` imports service.py): the image's variant and base (README, Deployment)
    image_variant: str = "gpu"
    base_image: str = "clipdlut-base:bookworm"
    ready_needs_optimizer: int = 1  # 0: the API is ready without asking the optimizer (one scaled to zero wakes
    # for a job, not for a probe)

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                bound = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
                raise ValueError(f"CLIPDLUT_{name.upper()}={value!r} is out of range: it must be {bound}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings with each field overridden by ``CLIPDLUT_<FIELD>`` when that variable is set."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"CLIPDLUT_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = float(raw) if f.type == "float" else int(raw) if f.type == "int" else raw
            except ValueError:
                raise ValueError(f"CLIPDLUT_{f.name.upper()}={raw!r} is not a valid {f.type}") from None
        return cls(**values)
