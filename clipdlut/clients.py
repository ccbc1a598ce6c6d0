"""The service's clients: who may call it, by which key, with which quotas and which share of the GPUs.

A TOML file names them (the service reads it from ``CLIPDLUT_CLIENTS``); it holds the SHA-256 of each key,
never a key::

    [clients.alice]
    key_sha256 = "9f86d0..."   # python -m clipdlut clients add alice
    max_open_jobs = 8          # optional quotas; absent: the service's own limits
    jobs_per_hour = 200
    weight = 1                 # its share of the GPUs when clients compete

:func:`add` makes a random key, writes its hash and returns the key (shown once). :class:`Registry` re-reads the
file when it changes, so keys are added, rotated and revoked without a restart. No BentoML here: the CLI uses it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

log = logging.getLogger(__name__)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # (a name is a metrics label and part of a store key)
SINGLE_KEY_CLIENT = ""  # the one client of CLIPDLUT_API_KEY: the open service's (its jobs stay its own either way)
MAX_WEIGHT = 1000.0


class ClientEntry(BaseModel):
    """One ``[clients.NAME]`` table of the file."""

    model_config = ConfigDict(extra="forbid")

    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the client's key")
    max_open_jobs: int | None = Field(None, ge=1, description="its jobs queued or running at once")
    jobs_per_hour: int | None = Field(None, ge=1, description="its jobs submitted in any hour")
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT, description="its share of the GPUs when clients compete")
    operator: bool = Field(False, description="may read /metrics (every client's figures)")


class ClientsFile(BaseModel):
    """The whole file: ``[clients.NAME]`` tables and nothing else."""

    model_config = ConfigDict(extra="forbid")

    clients: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], ClientEntry] = {}


@dataclass(frozen=True)
class Client:
    """A client as the service sees it once its key is checked; ``name`` "" is everyone on an open service."""

    name: str
    max_open_jobs: int | None = None
    jobs_per_hour: int | None = None
    weight: float = 1.0
    operator: bool = False  # may read /metrics


ANYONE = Client("", operator=True)  # the caller of a service that needs no key (or the one of CLIPDLUT_API_KEY)
NOBODY = Client("\x00nobody")  # a caller whose key was not checked: owns no job (no name in a file can be this)


def key_hash(key: str | bytes) -> str:
    """The hex SHA-256 the file keeps for a key."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def read(path: Path) -> dict[str, tuple[bytes, Client]]:
    """Each client of the file with its key's digest; ``ValueError`` that names the file and what to fix."""
    try:
        parsed = ClientsFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"the clients file {path} is not valid TOML: {e}") from None
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"the clients file {path} does not fit: {where}") from None
    seen: dict[str, str] = {}
    for name, entry in parsed.clients.items():
        if (other := seen.setdefault(entry.key_sha256, name)) != name:
            raise ValueError(f"the clients file {path} gives {other} and {name} the same key: give one a new key")
    return {name: (bytes.fromhex(c.key_sha256), Client(name, c.max_open_jobs, c.jobs_per_hour, c.weight, c.operator))
            for name, c in parsed.clients.items()}


def add(path: Path, name: str, max_open_jobs: int | None = None, jobs_per_hour: int | None = None,
        weight: float = 1.0, operator: bool = False) -> str:
    """Add client ``name`` with a new random key to the file (created if missing) and return the key: the file
    keeps only its hash, so this is the one time it is seen. The file is replaced whole, never half written."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{name!r} cannot name a client: use letters, digits, '_', '.' and '-' (up to 64, starting "
                         "with a letter or digit)")
    existing = read(path) if path.exists() else {}
    if name in existing:
        raise ValueError(f"{path} already has a client {name!r}: remove its table to give it a new key")
    key = secrets.token_urlsafe(32)
    entry = ClientEntry(key_sha256=key_hash(key), max_open_jobs=max_open_jobs, jobs_per_hour=jobs_per_hour,
                        weight=weight, operator=operator)  # (checks the quotas' ranges)
    fields = {"key_sha256": entry.key_sha256, **entry.model_dump(exclude={"key_sha256", "weight"}, exclude_none=True,
                                                                  exclude_defaults=True), "weight": entry.weight}
    table = tomli_w.dumps({"clients": {name: fields}})
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + table)
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)  # (a service re-reading the file sees the old one or the new one)
    return key


class Registry:
    """Who may call: the clients file (re-read when it changes, checked at most every ``recheck_s``), or the one
    key of ``CLIPDLUT_API_KEY``, or nobody's key at all (an open service)."""

    def __init__(self, path: Path | None = None, api_key: str = "", clock: Callable[[], float] = time.monotonic,
                 recheck_s: float = 1.0):
        if path is not None and api_key:
            raise ValueError("CLIPDLUT_API_KEY and CLIPDLUT_CLIENTS are both set: keep one (add the key's holder to "
                             "the clients file with `python -m clipdlut clients add NAME`)")
        self.path, self.clock, self.recheck_s = path, clock, recheck_s
        self._clients: dict[str, tuple[bytes, Client]] = {}
        if api_key:
            self._clients = {SINGLE_KEY_CLIENT: (hashlib.sha256(api_key.encode()).digest(), ANYONE)}
        self._seen: tuple[int, int, int] | None = None
        self._checked = -float("inf")
        if path is not None:
            if not path.is_file():
                raise ValueError(f"CLIPDLUT_CLIENTS names {path}, which is not a file: make it with `python -m "
                                 "clipdlut clients add NAME --file PATH`")
            self._refresh()

    @property
    def open(self) -> bool:
        """Whether the service takes calls without a key."""
        return self.path is None and not self._clients

    def identify(self, key: bytes) -> Client | None:
        """The client whose key this is, or None. Every client's digest is compared, in constant time, whatever
        matches: the time taken says nothing about which keys exist."""
        digest = hashlib.sha256(key).digest()
        found = None
        for expected, client in self._current().values():
            if hmac.compare_digest(digest, expected):
                found = client
        return found

    def named(self, name: str) -> Client | None:
        """The client of that name, if the file has it now."""
        entry = self._current().get(name)
        return entry[1] if entry else None

    def _current(self) -> dict[str, tuple[bytes, Client]]:
        if self.path is not None and self.clock() - self._checked >= self.recheck_s:
            self._refresh()
        return self._clients

    def _refresh(self) -> None:
        """Re-read the file if it changed (replaced, edited, resized). A file that cannot be read or does not fit
        keeps the clients read last (a half-saved edit must not lock everyone out); at start it is an error."""
        assert self.path is not None
        self._checked = self.clock()
        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            if seen != self._seen:
                self._clients, self._seen = read(self.path), seen
                log.info("clients file %s read: %d clients", self.path, len(self._clients))
        except (OSError, ValueError) as e:
            if self._seen is None:
                raise ValueError(str(e)) from None
            log.error("the clients file could not be re-read (the clients read before stay): %s", e)
