"""Full-resolution rendering with Pillow's ``Color3DLUT``, from ``.cube`` text.

The server renders from the exact ``.cube`` text it returns, so a client that applies that file with
Pillow gets the same pixels.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFilter

from clipdlut.cube import read_cube
from clipdlut.imaging import DecodedImage
from clipdlut.table import blend_table


def pillow_lut(table: np.ndarray) -> ImageFilter.Color3DLUT:
    """Pillow's filter for a ``[b, g, r, c]`` table (Pillow takes exactly this layout)."""
    n = table.shape[0]
    return ImageFilter.Color3DLUT(n, np.ascontiguousarray(table, dtype=np.float64), channels=3)


def apply_table(img: Image.Image, table: np.ndarray, workers: int | None = None) -> Image.Image:
    """Apply a table to an RGB image with Pillow, in horizontal strips on ``workers`` threads (default: one
    per core; Pillow releases the GIL while filtering). Pixels are the same as one ``filter`` call."""
    lut = pillow_lut(table)
    workers = max(1, min(workers or os.cpu_count() or 1, img.height // 256 or 1))
    if workers == 1:
        return img.filter(lut)
    bounds = [(img.height * i // workers, img.height * (i + 1) // workers) for i in range(workers)]
    out = Image.new(img.mode, img.size)
    with ThreadPoolExecutor(workers) as pool:
        strips = pool.map(lambda b: img.crop((0, b[0], img.width, b[1])).filter(lut), bounds)
        for (top, _), strip in zip(bounds, strips):
            out.paste(strip, (0, top))
    return out


def render(decoded: DecodedImage, cube_text: str | bytes, strength: float = 1.0) -> Image.Image:
    """The RGB image with the ``.cube`` applied (alpha and ICC stay on ``decoded`` for encoding)."""
    cube = read_cube(cube_text)
    return apply_table(decoded.rgb, blend_table(cube.normalized(), strength))
