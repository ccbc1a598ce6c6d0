"""Grading many photos with one LUT: each photo decoded, filtered with Pillow's ``Color3DLUT`` and encoded in
a pool of processes, one per core (decoding and encoding hold the GIL, so threads would not scale).

Each output keeps its photo's name, alpha and ICC profile, and equals bit for bit what Pillow's
``Color3DLUT`` gives on the decoded photo. One photo that cannot be read or written is reported and the
others are still written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdlut.imaging import decode_image, encode_image
from clipdlut.render import apply_table

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.pool import Pool

READ_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")  # what a folder's photos are
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # any other photo: PNG
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


@dataclass(frozen=True)
class Task:
    """One photo to grade: where it is, where its result goes, and in which format (Pillow's name)."""

    source: Path
    target: Path
    fmt: str


@dataclass(frozen=True)
class Outcome:
    """What became of one task: ``error`` is ``None`` when its result was written."""

    task: Task
    error: str | None = None


def photos_in(inputs: Sequence[Path]) -> list[Path]:
    """The files named, and the photos (by suffix, sorted by name) of the folders named; not recursive."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in READ_SUFFIXES and p.is_file())
        else:
            found.append(path)
    return found


def plan(sources: Sequence[Path], out_dir: Path, fmt: str | None = None) -> list[Task]:
    """A task per photo, written into ``out_dir`` under the photo's stem in ``fmt`` (Pillow's name) or else
    in its own format when that is PNG, JPEG or WebP, otherwise PNG. Raises ``ValueError`` when two photos
    would write the same file or a result would overwrite its photo."""
    tasks: list[Task] = []
    seen: dict[Path, Path] = {}
    for source in sources:
        own = fmt or WRITE_FORMATS.get(source.suffix.lower(), "PNG")
        suffix = source.suffix if WRITE_FORMATS.get(source.suffix.lower()) == own else SUFFIXES[own]
        target = out_dir / (source.stem + suffix)
        key = target.resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {source} would both be written to {target}")
        if key == source.resolve():
            raise ValueError(f"{source} would be overwritten: choose another output folder")
        seen[key] = source
        tasks.append(Task(source, target, own))
    return tasks


def grade_file(task: Task, table: np.ndarray, threads: int | None = 1) -> None:
    """Decode, grade (on ``threads`` threads; ``None``: one per core) and write one photo."""
    decoded = decode_image(task.source.read_bytes())
    graded = apply_table(decoded.rgb, table, workers=threads)
    task.target.write_bytes(encode_image(graded, task.fmt, **decoded.kept()))


_table: np.ndarray | None = None  # each worker process's copy of the LUT, set once when it starts


def _start_worker(table: np.ndarray) -> None:
    global _table
    _table = table


def _run(task: Task) -> Outcome:
    assert _table is not None
    try:
        grade_file(task, _table)
    except (OSError, ValueError) as e:  # unreadable, not an image, too large, cannot be written
        return Outcome(task, str(e))
    return Outcome(task)


def _context() -> BaseContext:
    """Fork where there is one: a worker starts in a millisecond with the LUT already in memory. (Imported
    here: one photo needs no pool, and ``multiprocessing.pool`` costs a photo's start-up 20 ms.)"""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def grade_all(tasks: Sequence[Task], table: np.ndarray, jobs: int | None = None) -> Iterator[Outcome]:
    """Grade every task on ``jobs`` processes (default: one per core); the outcomes come as they finish.
    The processes start before this returns, so a progress bar's thread started afterwards is not forked."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    if jobs == 1:
        _start_worker(table)
        return map(_run, tasks)
    return _outcomes(_context().Pool(jobs, initializer=_start_worker, initargs=(table,)), tasks)


def _outcomes(pool: Pool, tasks: Sequence[Task]) -> Iterator[Outcome]:
    with pool:
        yield from pool.imap_unordered(_run, tasks)
