"""The API process's memory stays bounded by the work in flight, not by how many jobs it has served.

A job passes megabytes through worker threads (decoding, rendering, encoding). glibc's malloc gives each thread
that allocates at once an arena of its own (up to 8 per core) and rarely hands an arena's freed pages back, so a
busy server's resident size creeps up with the jobs it has run: measured with the locust mix of both APIs, tiny
model, 512 px photos, 700 jobs (``python -m bench.soak``): ~0.1 MB per job with glibc's defaults, under 0.04 MB
with two arenas, most of the remainder returned by a trim after each job. Setting ``MALLOC_ARENA_MAX=2`` in the
environment does the same for a process started with it (the container image sets it); this module applies it to
a process already running (``bentoml serve`` started by hand), before its worker threads exist.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (musl, macOS: their allocators need none of this)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Use at most ``arenas`` malloc arenas from now on (threads that start later share them); False where the
    allocator is not glibc's."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def trim() -> None:
    """Hand the pages that malloc holds free back to the system (after jobs have let go of their megabytes)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


async def trim_every(seconds: float = 60.0) -> None:
    """Forever: :func:`trim` every ``seconds`` (on a worker thread: it walks every arena)."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(trim)
