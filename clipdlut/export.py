"""An optimized LUT tensor as the ``.cube`` text we hand out: blended, made safe, resampled."""

from __future__ import annotations

import torch

from clipdlut import lut as lutmath
from clipdlut.cube import write_cube
from clipdlut.mono import grey_identity
from clipdlut.safety import make_safe


def lut_to_cube(lut: torch.Tensor, *, strength: float = 1.0, size: int | None = None, keep_blacks: bool = False,
                keep_whites: bool = False, neutral: bool = False, title: str = "CLIP-DLUT",
                comments: list[str] | tuple[str, ...] = ()) -> str:
    """The ``.cube`` text of an optimized LUT ``(1, 3, N, N, N)``, blended to ``strength``, made safe again (a
    strength above 1 extrapolates the grade) and resampled (which keeps it safe: a coarser size takes every k-th
    node, a finer one interpolates between safe nodes). A ``neutral`` (black-and-white) LUT is blended with the
    plain black-and-white conversion instead of the identity, and stays neutral to the last digit."""
    lut = lut.detach().double()
    if neutral:
        base = grey_identity(lut.shape[-1], dtype=torch.float64, device=lut.device)
        lut = base + strength * (lut - base)
    else:
        lut = lutmath.blend(lut, strength)
    lut = make_safe(lut, keep_blacks=keep_blacks, keep_whites=keep_whites, neutral=neutral)
    if size is not None and size != lut.shape[-1]:
        lut = lutmath.resample(lut, size)
    return write_cube(lutmath.to_table(lut), title=title, comments=comments)


def describe_look(target_prompt: str, source_prompt: str, *, reference: bool = False, start_from: str | None = None,
                  photos: int = 1, mode: str = "color") -> list[str]:
    """What a look was asked, as the comments of its ``.cube`` (the service and the CLI write the same)."""
    lines = [f"prompt: {target_prompt}" if target_prompt else "prompt: none", f"source prompt: {source_prompt}"]
    if reference:
        lines.append("aimed at a reference photo")
    if start_from:
        lines.append(f"refined from {start_from}")
    if photos > 1:
        lines.append(f"one LUT for a series of {photos} photos")
    if mode != "color":
        lines.append(f"mode: {mode}")
    return lines
