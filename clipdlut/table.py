"""LUT tables as numpy arrays ``[b, g, r, c]``: the sizes and strengths we accept, and the table math that
needs no torch (so applying a LUT from the command line starts in a fraction of a second).

``table[b, g, r]`` is the output colour of input ``(r, g, b) / (N - 1)``: the layout of ``.cube`` rows and of
Pillow's ``Color3DLUT``, and of :mod:`clipdlut.lut`'s tensors with the channel axis moved last.
"""

from __future__ import annotations

import numpy as np

MIN_SIZE = 2
MAX_SIZE = 65
OFFERED_SIZES = (17, 33, 65)  # the sizes the service and the CLI produce (any of MIN_SIZE..MAX_SIZE reads)
MAX_STRENGTH = 2.0  # a blend with the identity goes from 0 (none) to this (the grade doubled), everywhere
LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709: the grey a plain black-and-white conversion gives (clipdlut.mono)


def check_size(n: int) -> int:
    """Return ``n`` if it is a supported LUT size, else raise ``ValueError``."""
    if not isinstance(n, int) or not MIN_SIZE <= n <= MAX_SIZE:
        raise ValueError(f"LUT size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {n!r}")
    return n


def identity_table(n: int) -> np.ndarray:
    """The identity table of size ``n``: node ``[b, g, r]`` holds ``(r, g, b) / (n - 1)`` exactly."""
    axis = np.arange(check_size(n), dtype=np.float64) / (n - 1)
    b, g, r = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([r, g, b], axis=-1)


def is_neutral(table: np.ndarray) -> bool:
    """Whether every node has R = G = B out: a black-and-white look."""
    return bool((table[..., 0] == table[..., 1]).all() and (table[..., 1] == table[..., 2]).all())


def blend_table(table: np.ndarray, strength: float) -> np.ndarray:
    """``I + strength * (table - I)``: exact, because trilinear output is linear in the table. A neutral
    (black-and-white) table blends with the plain black-and-white conversion instead of the identity, so it stays
    black and white at any strength."""
    if strength == 1.0:
        return table
    base = identity_table(table.shape[0])
    if is_neutral(table):
        base = np.repeat((base * LUMA).sum(-1, keepdims=True), 3, axis=-1)
    return base + strength * (table - base)


def trilinear(table: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """The table interpolated trilinearly at points ``rgb[..., (r, g, b)]`` (clamped to [0, 1], as every
    ``.cube`` consumer clamps): an array of the points' shape."""
    n = table.shape[0]
    x = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0) * (n - 1)
    low = np.minimum(np.floor(x).astype(np.intp), n - 2)
    frac = x - low
    out = np.zeros(x.shape, dtype=np.float64)
    for corner in np.ndindex(2, 2, 2):  # (dr, dg, db)
        weight = np.prod([f if d else 1.0 - f for d, f in zip(corner, np.moveaxis(frac, -1, 0))], axis=0)
        node = table[low[..., 2] + corner[2], low[..., 1] + corner[1], low[..., 0] + corner[0]]
        out += weight[..., None] * node
    return out
