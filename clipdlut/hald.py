"""LUTs as pictures: HaldCLUT PNGs and the original system's N x N^2 strip.

Both store ``table[b, g, r, c]`` as 8-bit pixels, so they are exact only to 1/255.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from clipdlut.imaging import encode_image
from clipdlut.table import MAX_SIZE, MIN_SIZE, check_size

HALD_LEVELS = range(2, 9)  # level L holds a cube of size L^2 (4..64) in an L^3 x L^3 image


class LutImageError(ValueError):
    """An image that is not a valid Hald or strip LUT."""


def _to_u8(table: np.ndarray) -> np.ndarray:
    return np.round(np.clip(table, 0.0, 1.0) * 255.0).astype(np.uint8)


def _rgb_pixels(data: bytes | Image.Image, what: str, max_pixels: int) -> np.ndarray:
    """The pixels of a LUT image, its size checked from the header before anything is decoded (a small file
    can claim a huge image)."""
    try:
        img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise LutImageError(f"the {what} image claims {img.width}x{img.height} pixels; no {what} LUT is "
                                f"larger than {max_pixels} pixels")
        img.load()
    except LutImageError:
        raise
    except Exception as e:  # Pillow raises many types for bad data
        raise LutImageError(f"cannot read the {what} image: {e}") from None
    if img.mode not in ("RGB", "RGBA", "P"):
        raise LutImageError(f"a {what} image must be 8-bit RGB, got mode {img.mode}")
    return np.asarray(img.convert("RGB"))


def hald_level_for(size: int) -> int:
    """The Hald level that holds a ``size``-node LUT best: the smallest whose grid contains every node of it (so
    the picture is exact but for its 8 bits: 17 nodes in level 7's 49), else the finest (64 nodes)."""
    for level in HALD_LEVELS:
        if (level * level - 1) % (size - 1) == 0:
            return level
    return HALD_LEVELS[-1]


def write_hald(table: np.ndarray) -> bytes:
    """A HaldCLUT PNG of a table whose size is a square (4, 9, ..., 64): red fastest, row-major."""
    n = table.shape[0]
    level = int(round(n ** 0.5))
    if level * level != n or level not in HALD_LEVELS:
        raise ValueError(f"a Hald image needs a cube size that is a square from 4 to 64, got {n}")
    side = level ** 3
    return encode_image(Image.fromarray(_to_u8(table).reshape(side, side, 3), "RGB"))


def read_hald(data: bytes | Image.Image) -> np.ndarray:
    """The ``(N, N, N, 3)`` float table of a HaldCLUT image (level 2..8)."""
    px = _rgb_pixels(data, "Hald", HALD_LEVELS[-1] ** 6)
    h, w, _ = px.shape
    level = round(w ** (1 / 3))
    if h != w or level ** 3 != w or level not in HALD_LEVELS:
        raise LutImageError(
            f"a Hald image is square with side L^3 for a level L of 2..8 (8x8 .. 512x512), got {w}x{h}")
    n = level * level
    return px.reshape(n, n, n, 3).astype(np.float64) / 255.0


def write_strip(table: np.ndarray) -> bytes:
    """The original system's PNG: N rows x N^2 columns; blue slices side by side, green rows, red columns."""
    n = table.shape[0]
    check_size(n)
    return encode_image(Image.fromarray(_to_u8(table).transpose(1, 0, 2, 3).reshape(n, n * n, 3), "RGB"))


def read_strip(data: bytes | Image.Image) -> np.ndarray:
    """The ``(N, N, N, 3)`` float table of an N x N^2 strip image."""
    px = _rgb_pixels(data, "strip", MAX_SIZE ** 3)
    n, w, _ = px.shape
    if w != n * n or not MIN_SIZE <= n <= MAX_SIZE:
        raise LutImageError(
            f"a strip LUT image is N pixels high and N^2 wide (N in {MIN_SIZE}..{MAX_SIZE}), got {w}x{n}")
    return px.reshape(n, n, n, 3).transpose(1, 0, 2, 3).astype(np.float64) / 255.0
