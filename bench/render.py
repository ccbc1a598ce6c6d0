"""Rendering a 12-megapixel photo: the service's renderer against one plain Pillow ``Color3DLUT`` call."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bench.steps import seconds_per_call
from clipdlut import lut as lutmath
from clipdlut.render import apply_table, pillow_lut


def photo(width: int = 4000, height: int = 3000, seed: int = 0) -> Image.Image:
    """A synthetic photo: smooth gradients with noise (4000 x 3000 = 12 MP by default)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / width
    base = np.stack([x, y, (x + y) / 2], -1) * 200 + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def render_12mp(cores: int) -> dict:
    img = photo()
    g = torch.Generator().manual_seed(0)
    table = lutmath.to_table((lutmath.identity(33, dtype=torch.float64)
                              + 0.05 * torch.randn(1, 3, 33, 33, 33, generator=g, dtype=torch.float64)).clamp(0, 1))
    cpu = torch.device("cpu")
    plain = seconds_per_call(lambda: img.filter(pillow_lut(table)), cpu, repeat=3)
    out = {"megapixels": img.width * img.height / 1e6, "pillow_single_call_s": plain}
    for workers in sorted({1, cores}):
        t = seconds_per_call(lambda w=workers: apply_table(img, table, workers=w), cpu, repeat=3)
        out[f"ours_{workers}_threads_s"] = t
        out[f"ours_{workers}_threads_vs_pillow"] = t / plain
    return out
