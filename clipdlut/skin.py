"""Skin tones kept: a published skin-colour region, a bound on how far a grade may move it, and the per-node
fences that hold a LUT to that bound exactly (``protect_skin``).

The region is the skin-colour map of D. Chai and K. N. Ngan, "Face segmentation using skin-color map in
videophone applications", IEEE Transactions on Circuits and Systems for Video Technology 9(4), 1999,
pp. 551-564: the colours whose chroma, in the YCbCr of JPEG (ITU-R BT.601, full range), lies in
Cb 77-127 and Cr 133-173, at any luma. Chosen over rules with a brightness floor (Kovač, Peer and Solina's
R > 95, for one) because it keeps deep skin tones: it takes skin colour to be a matter of chroma, not of
lightness. It is 1,532,429 of the 16.8 million 8-bit colours (9 %): CIELAB hue -6 to 109 degrees, L* 1 to 99.

The bound (``HUE_DEGREES``, ``DELTA_E``): each skin colour keeps its CIELAB hue within 5 degrees and moves at most
4 CIEDE2000. Hue is what makes skin look ill or wrong (a green or magenta cast), so it is held tightest; a
CIEDE2000 of 1 is about the smallest visible difference, and 4 leaves a grade room to warm, cool, lift or
deepen skin a little, as a colourist's secondary would, while it stays the same person's skin.

How it is enforced: a LUT's output at an input colour is its nodes' outputs mixed with weights that sum to one
(trilinear interpolation, as every LUT consumer does), and the identity's nodes mix to the colour itself. So if
each node around a skin colour ``p`` stays within ``r`` of its own position in every channel, the output at ``p``
stays within ``r`` of ``p`` in every channel. ``r(p)``, the largest such move that keeps the bound at ``p``, is
computed for every 8-bit skin colour from the colour's own CIELAB and CIEDE2000 response to a small move to each
corner of a box around it (the hue and CIEDE2000 of a move grow in proportion to it when it is small), with a
margin for the curvature of both. Each node gets the smallest ``r`` of the skin colours in the cells it
touches. These per-node limits are bounds of the same kind as the black and white pins: :func:`fences` turns
them into the largest and smallest LUTs that keep every slope and monotone guarantee
(:func:`clipdlut.safety.make_safe`), so the fenced repair has no band at the region's edge.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from clipdlut.lut import identity
from clipdlut.quality import delta_e_lab, hue_shift_lab, lab
from clipdlut.safety import closure
from clipdlut.table import trilinear

HUE_DEGREES = 5.0  # a skin colour's CIELAB hue moves at most this far (degrees) ...
DELTA_E = 4.0  # ... and it moves at most this far in CIEDE2000
_PROBE = 0.5 / 255  # the small move whose response is scaled up to the bound
_MARGIN = 0.85  # the limits are this fraction of the scaled-up move (the curvature of hue and CIEDE2000 over it)
DISPLAYS = ("sRGB", "Rec.709")  # footage: displays (by a word of their name) whose code values the region is on
_CHUNK = 65536  # colours measured at once (see _reach)
T = TypeVar("T")
FIGURE_STEP = 3  # the skin figures measure every skin colour on the 8-bit levels 0, 3, ..., 255 (57,000 of them)


def in_region(rgb8: np.ndarray) -> np.ndarray:
    """Whether each 8-bit sRGB colour ``[..., 3]`` is in the skin region: Chai and Ngan's Cb and Cr ranges, on the
    8-bit YCbCr a JPEG holds (Pillow's conversion, the one that writes JPEGs here)."""
    rgb = np.ascontiguousarray(rgb8, dtype=np.uint8).reshape(1, -1, 3)
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr")).reshape(*rgb8.shape)
    cb, cr = ycc[..., 1], ycc[..., 2]
    return (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173)


def check(mode: str, display: str | None = None) -> None:
    """Raise ``ValueError`` where ``protect_skin`` cannot keep its bound: a black-and-white look (skin loses its
    colour) or footage graded for a display whose code values are not sRGB's or Rec.709's (the region is not
    skin there)."""
    if mode == "bw":
        raise ValueError("skin protection keeps skin's colour, and a black-and-white look removes it: grade in "
                         "colour or leave skin protection off")
    if display is not None and not any(word in display for word in DISPLAYS):
        raise ValueError(f"skin protection's region is one of sRGB and Rec.709 display colours, and {display!r} "
                         "is neither: grade for an sRGB or Rec.709 display, or leave skin protection off")


@functools.cache
def region_colours(step: int = 1) -> np.ndarray:
    """Every skin colour on the 8-bit levels ``0, step, 2 step, ...`` as ``(K, 3)`` uint8 (made once, a plane of
    green and blue per level of red)."""
    levels = np.arange(0, 256, step, dtype=np.uint8)
    g, b = (a.ravel() for a in np.meshgrid(levels, levels, indexing="ij"))
    planes = []
    for r in levels:
        rgb = np.stack([np.full_like(g, r), g, b], axis=-1)
        planes.append(rgb[in_region(rgb)])
    return np.concatenate(planes)


@functools.cache
def _reach() -> np.ndarray:
    """For each skin colour (``region_colours()``, 0..1), the largest move in every channel that keeps the bound.

    Measured in chunks of :data:`_CHUNK` colours, on a thread each core: numpy lets go of the GIL for the
    arithmetic, and a chunk's colour-science intermediates stay in the CPU's cache. The same bits as one call on
    all 1.5 million colours, which took 8.6 s here (2 cores) against 2.9 s, colour-science's import included: the
    first skin-protected job of a replica, and every ``clipdlut retouch --protect-skin``, waits for it."""
    return _MARGIN / np.concatenate(_in_chunks(_worst_rate, region_colours().astype(np.float64) / 255))


def _in_chunks(fn: Callable[[np.ndarray], T], colours: np.ndarray) -> list[T]:
    """``fn`` of each chunk of :data:`_CHUNK` colours, in order, on a thread per core (see :func:`_reach`)."""
    chunks = [colours[i:i + _CHUNK] for i in range(0, len(colours), _CHUNK)]
    if len(chunks) <= 1:  # (the figures of a job's result: no thread to start)
        return [fn(c) for c in chunks]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(chunks))) as pool:
        return list(pool.map(fn, chunks))


def _worst_rate(p: np.ndarray) -> np.ndarray:
    """Per colour ``p`` (0..1): the largest rate, over the probe's moves, at which the hue or CIEDE2000 meets its
    bound (per unit of the move in the channel that moved most)."""
    at = lab(p)
    worst = np.zeros(len(p))
    # (a small move's hue shift and CIEDE2000 are odd and even in it: four corners stand for all eight)
    for corner in np.array(np.meshgrid([1], [-1, 1], [-1, 1])).reshape(3, -1).T:
        moved = np.clip(p + _PROBE * corner, 0, 1)
        moved_by = np.abs(moved - p).max(axis=1)  # (at the cube's faces the move is smaller, so the rate larger)
        there = lab(moved)
        rate = np.maximum(delta_e_lab(at, there) / DELTA_E, np.abs(hue_shift_lab(at, there)) / HUE_DEGREES)
        worst = np.maximum(worst, rate / np.maximum(moved_by, 1e-12))
    return worst


@functools.cache
def slack(n: int) -> np.ndarray:
    """Per node of a size-``n`` LUT ``[b, g, r]``: how far its output may be from its own position in any channel
    (``inf`` away from skin). Each node gets the smallest reach of the skin colours in the cells it touches."""
    p = region_colours().astype(np.int64)
    cell = np.minimum(p * (n - 1) // 255, n - 2)  # the cell whose lower corner is below each colour (r, g, b)
    flat = (cell[:, 2] * (n - 1) + cell[:, 1]) * (n - 1) + cell[:, 0]
    cells = np.full((n - 1) ** 3, np.inf)
    np.minimum.at(cells, flat, _reach())
    per_cell = cells.reshape(n - 1, n - 1, n - 1)
    out = np.full((n, n, n), np.inf)
    for db in (0, 1):
        for dg in (0, 1):
            for dr in (0, 1):
                view = out[db:db + n - 1, dg:dg + n - 1, dr:dr + n - 1]
                np.minimum(view, per_cell, out=view)
    return out


@functools.cache
def _fences(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    room = torch.as_tensor(slack(n), dtype=dtype, device=device).expand(1, 3, n, n, n)
    ident = identity(n, dtype=dtype, device=device)
    return closure(ident - room, ident + room)


def fences(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest and largest LUTs ``(1, 3, n, n, n)`` that keep every node within its :func:`slack` and every
    safety guarantee: a safe LUT between them keeps the skin bound (made once per size, dtype and device)."""
    return _fences(n, dtype, torch.device(device))


def chart(side: int = 8, patch: int = 24, seed: int = 0) -> Image.Image:
    """A synthetic chart of ``side`` x ``side`` skin patches drawn across the region (rows from light to dark,
    columns from red to yellow in hue): a test photo whose every pixel is skin."""
    colours = region_colours()
    pick = colours[np.random.default_rng(seed).choice(len(colours), side * side, replace=False)]
    at = lab(pick.astype(np.float64) / 255)
    rows = pick[np.argsort(-at[:, 0])].reshape(side, side, 3)  # (light rows first ...)
    hues = np.degrees(np.arctan2(*lab(rows.astype(np.float64) / 255)[..., 2:0:-1].transpose(2, 0, 1)))
    rows = np.take_along_axis(rows, np.argsort(hues, axis=1)[..., None], axis=1)  # (... each from red to yellow)
    return Image.fromarray(np.repeat(np.repeat(rows, patch, axis=0), patch, axis=1).astype(np.uint8))


@dataclass(frozen=True)
class SkinFigures:
    """How far a grade moved the skin region's colours (the worst of them)."""

    hue_shift: float  # the largest CIELAB hue shift, in degrees (at most HUE_DEGREES when protected)
    delta_e: float  # the largest CIEDE2000 difference (at most DELTA_E when protected)
    colours: int  # how many skin colours were measured

    def as_dict(self) -> dict:
        return asdict(self)


def figures(table: np.ndarray, step: int = FIGURE_STEP) -> SkinFigures:
    """The skin figures of a LUT table ``[b, g, r, c]`` (sRGB in and out), over the skin colours on every
    ``step``-th 8-bit level (``step=1``: all of them, a second's work)."""
    p = region_colours(step).astype(np.float64) / 255
    table = np.asarray(table, dtype=np.float64)

    def worst(chunk: np.ndarray) -> tuple[float, float]:
        at, there = lab(chunk), lab(trilinear(table, chunk))
        return float(np.abs(hue_shift_lab(at, there)).max()), float(delta_e_lab(at, there).max())

    hue, delta_e = np.max(_in_chunks(worst, p), axis=0)
    return SkinFigures(hue_shift=float(hue), delta_e=float(delta_e), colours=len(p))
