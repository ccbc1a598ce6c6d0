"""Full-resolution rendering with Pillow's ``Color3DLUT``, from ``.cube`` text.

The server renders from the exact ``.cube`` text it returns, so a client that applies that file with
Pillow gets the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from clipdlut.cube import read_cube
from clipdlut.imaging import DecodedImage
from clipdlut.lut import identity, to_table


def blend_table(table: np.ndarray, strength: float) -> np.ndarray:
    """``I + strength * (table - I)`` on a ``[b, g, r, c]`` table."""
    if strength == 1.0:
        return table
    ident = to_table(identity(table.shape[0]))
    return ident + strength * (table - ident)


def pillow_lut(table: np.ndarray) -> ImageFilter.Color3DLUT:
    """Pillow's filter for a ``[b, g, r, c]`` table (Pillow takes exactly this layout)."""
    n = table.shape[0]
    return ImageFilter.Color3DLUT(n, np.ascontiguousarray(table, dtype=np.float64), channels=3)


def apply_table(img: Image.Image, table: np.ndarray) -> Image.Image:
    """Apply a table to an RGB image with Pillow."""
    return img.filter(pillow_lut(table))


def render(decoded: DecodedImage, cube_text: str | bytes, strength: float = 1.0) -> Image.Image:
    """The RGB image with the ``.cube`` applied (alpha and ICC stay on ``decoded`` for encoding)."""
    cube = read_cube(cube_text)
    return apply_table(decoded.rgb, blend_table(cube.normalized(), strength))
