"""Every setting of the service, each a ``CLIPDLUT_<NAME>`` environment variable, its range on its field.

:func:`load_settings` reads them (the service calls it once at import; a test passes its own variables); a value
that does not fit fails at start with a message that names the variable and what it must be.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from clipdlut.limits import MAX_PROMPT_CHARS

PREFIX = "CLIPDLUT_"


def _default_store() -> str:
    home = os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")
    return str(Path(home) / "clipdlut" / "jobs.db")


class Settings(BaseSettings):
    """Defaults are documented in the README's settings table; each maps to ``CLIPDLUT_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    clip_model: str = "ViT-B-16"
    device: str = ""  # empty: cuda when available, else cpu
    store: str = Field(default_factory=_default_store)
    gpu_type: str = "nvidia-l4"
    max_batch_size: int = Field(16, ge=1)  # jobs one optimizer replica's batch holds (= its traffic.concurrency)
    job_timeout_s: int = Field(3600, ge=1)
    max_body_mb: float = Field(32.0, ge=0.001)
    max_pixels: int = Field(40_000_000, ge=1)
    max_prompt_chars: int = Field(MAX_PROMPT_CHARS, ge=1)
    max_steps: int = Field(5000, ge=1)
    working_size: int = Field(288, ge=32, le=4096)
    views: int = Field(4, ge=1, le=64)
    progress_every: int = Field(5, ge=1)
    max_open_jobs: int = Field(64, ge=1)  # queued + running; more submissions get 429
    retry_after_s: int = Field(10, ge=0)
    watchdog_s: float = Field(15.0, ge=0.1)  # a job whose API replica has not renewed its lease this long is taken over
    takeovers: int = Field(3, ge=0)  # times a job may be taken over from a stopped API replica; once more and it fails
    retention_s: int = Field(86_400, ge=0)
    api_key: str = ""  # when set, every route but the health checks needs "Authorization: Bearer <key>"
    clients: str = ""  # a TOML file of clients, their keys' hashes and quotas (README, Clients); empty: see api_key
    legacy_client: str = ""  # the client the original API's routes act as when they send no key; empty: they need one
    fair_share: bool = True  # false: a free optimizer slot goes to the first job to ask again (no fair queue)
    cors_origins: str = ""  # comma-separated origins allowed by CORS; empty: CORS off
    optimizer_url: str = ""  # an optimizer served elsewhere (http://host:port); empty: start one with the API
    ocio_config: str = ""  # footage's OCIO config (a path or ocio:// URI); empty: $OCIO, else the built-in ACES one
    optimizer_attempts: int = Field(3, ge=1)  # streams a job may lose (replica killed, connection dropped)
    optimizer_wait_s: float = Field(3600.0, ge=0)  # how long a job may wait for an optimizer with room
    checkpoint_s: float = 10.0  # the optimizer sends a job's state at most this often (s; negative: never)
    stream_beat_s: float = Field(5.0, ge=0.01)  # a quiet job stream sends a heartbeat this often
    stream_stall_s: float = Field(60.0, ge=0.01)  # a stream silent this long counts as lost (the job is sent again)
    # build settings (read when `bentoml build` imports service.py): the image's variant and base (README, Deployment)
    image_variant: Literal["gpu", "cpu"] = "gpu"
    base_image: str = "clipdlut-base:bookworm"
    # false: the API is ready without asking the optimizer (one scaled to zero wakes for a job, not for a probe)
    ready_needs_optimizer: bool = True

    def but(self, **changes: object) -> Settings:
        """These settings with ``changes``, checked as at start."""
        return Settings.model_validate({**self.model_dump(), **changes})

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Settings built in code are what the code says, whatever this process's environment holds (tests, the
        bench); :func:`load_settings` reads the environment."""
        return (init_settings,) if cls is Settings else (init_settings, env_settings)


class _FromEnvironment(Settings):
    """The settings pydantic-settings reads from ``CLIPDLUT_*`` variables."""


def _range(field: str) -> str:
    """What a field's range asks, in words: "from 1 to 64", "at least 0.1"."""
    low = high = None
    for m in Settings.model_fields[field].metadata:
        low, high = getattr(m, "ge", low), getattr(m, "le", high)
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    return f"at least {low:g}" if low is not None else f"at most {high:g}"


def _explain(error: ValidationError) -> str:
    """One line per bad variable: its name, its value as given, and what it must be."""
    lines = []
    for e in error.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        name = f"{PREFIX}{field.upper()}={e['input']}"
        if e["type"] in ("greater_than_equal", "less_than_equal"):
            lines.append(f"{name} is out of range: it must be {_range(field)}")
        else:
            lines.append(f"{name} is not valid: {e['msg']}")
    return "; ".join(lines)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``environ`` (default: this process's environment); ``ValueError`` naming each variable
    that does not fit."""
    try:
        if environ is None:
            return _FromEnvironment()
        values = {k[len(PREFIX):].lower(): v for k, v in environ.items() if k.startswith(PREFIX) and v != ""}
        return Settings.model_validate(values)
    except ValidationError as e:
        raise ValueError(_explain(e)) from None
