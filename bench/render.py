"""Rendering a 12-megapixel photo: the service's renderer against one plain Pillow ``Color3DLUT`` call."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from clipdlut import lut as lutmath
from clipdlut.render import apply_table, pillow_lut


def photo(width: int = 4000, height: int = 3000, seed: int = 0) -> Image.Image:
    """A synthetic photo: smooth gradients with noise (4000 x 3000 = 12 MP by default)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / width
    base = np.stack([x, y, (x + y) / 2], -1) * 200 + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def render_12mp(cores: int, rounds: int = 9) -> dict:
    """Seconds to render a 12 MP photo: one plain Pillow call, and ours on 1 and on ``cores`` threads.

    The candidates take turns for ``rounds`` rounds, each round starting with the next one, and each figure
    is its median, so neither a slow spell of the machine nor the order lands on one of them only."""
    img = photo()
    g = torch.Generator().manual_seed(0)
    table = lutmath.to_table((lutmath.identity(33, dtype=torch.float64)
                              + 0.05 * torch.randn(1, 3, 33, 33, 33, generator=g, dtype=torch.float64)).clamp(0, 1))
    candidates: dict[str, Callable[[], object]] = {"pillow_single_call_s": lambda: img.filter(pillow_lut(table))}
    for workers in sorted({1, cores}):
        candidates[f"ours_{workers}_threads_s"] = functools.partial(apply_table, img, table, workers=workers)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for i in range(rounds + 1):  # the first round warms up
        for name in names[i % len(names):] + names[:i % len(names)]:
            fn = candidates[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {"megapixels": img.width * img.height / 1e6, "rounds": rounds}
    out.update({name: statistics.median(t[1:]) for name, t in times.items()})
    for workers in sorted({1, cores}):
        out[f"ours_{workers}_threads_vs_pillow"] = out[f"ours_{workers}_threads_s"] / out["pillow_single_call_s"]
    return out
