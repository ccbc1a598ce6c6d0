"""Pillow images to and from the float tensors the optimizer works on (kept apart from :mod:`clipdlut.imaging`,
so decoding and encoding need no torch)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 ``(3, H, W)`` tensor in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_image(t: torch.Tensor) -> Image.Image:
    """A ``(3, H, W)`` tensor in [0, 1] as an 8-bit RGB image (rounded)."""
    arr = (t.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")
