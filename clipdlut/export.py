"""An optimized LUT tensor as the ``.cube`` text we hand out: blended, made safe, resampled."""

from __future__ import annotations

import torch

from clipdlut import lut as lutmath
from clipdlut import skin
from clipdlut.cube import write_cube
from clipdlut.mono import grey_identity
from clipdlut.safety import make_safe
from clipdlut.viewing import LutKind, Viewing, viewed_table


def safe_look(lut: torch.Tensor, *, strength: float = 1.0, keep_blacks: bool = False, keep_whites: bool = False,
              neutral: bool = False, protect_skin: bool = False, size: int | None = None) -> torch.Tensor:
    """An optimized LUT ``(1, 3, N, N, N)`` blended to ``strength``, resampled to ``size`` and made safe again (a
    strength above 1 extrapolates the grade). A ``neutral`` (black-and-white) LUT is blended with the plain
    black-and-white conversion instead of the identity, and stays neutral to the last digit. Resampling keeps a
    LUT safe (a coarser size takes every k-th node, a finer one interpolates between safe nodes), but skin's
    fences are the returned size's own (a coarser LUT mixes skin colours from nodes farther away): they are kept
    at that size."""
    lut = lut.detach().double()
    if neutral:
        base = grey_identity(lut.shape[-1], dtype=torch.float64, device=lut.device)
        lut = base + strength * (lut - base)
    else:
        lut = lutmath.blend(lut, strength)
    look = make_safe(lut, keep_blacks=keep_blacks, keep_whites=keep_whites, neutral=neutral)
    if size is not None and size != look.shape[-1]:
        look = lutmath.resample(look, size)
    if protect_skin:
        look = make_safe(look, keep_blacks=keep_blacks, keep_whites=keep_whites, neutral=neutral,
                         fences=skin.fences(look.shape[-1], look.dtype, look.device))
    return look


def lut_to_cube(lut: torch.Tensor, *, strength: float = 1.0, size: int | None = None, keep_blacks: bool = False,
                keep_whites: bool = False, neutral: bool = False, protect_skin: bool = False, title: str = "CLIP-DLUT",
                comments: list[str] | tuple[str, ...] = (), viewing: Viewing | None = None,
                kind: LutKind = "display") -> str:
    """The ``.cube`` text of an optimized LUT: :func:`safe_look` at ``size``. With a ``viewing`` (footage in a camera's
    encoding) the safe look is on the display's encoding, and the ``.cube`` is sampled on the input's, as ``kind``
    says (:func:`clipdlut.viewing.viewed_table`). A ``look`` LUT is made safe again in the input's encoding (log
    to log: carried back through the view's inverse, it can fold where the view compresses colours no camera
    records); a ``display`` LUT is the safe look after OCIO's transform, kept exact: the transform itself is steeper
    than 4 in places (ACES 2.0's gamut compression), and a show LUT must not alter it. ``protect_skin``: skin's
    bound holds on the look (for footage: on the display's encoding)."""
    pins = {"keep_blacks": keep_blacks, "keep_whites": keep_whites, "neutral": neutral, "protect_skin": protect_skin}
    if viewing is not None:
        look = safe_look(lut, strength=strength, **pins)
        table = viewed_table(lutmath.to_table(look), viewing, kind, size or look.shape[-1])
        if kind == "look":
            table = lutmath.to_table(make_safe(lutmath.from_table(table).double()))
        comments = [*comments, f"input: {viewing.input_description}", f"output: {viewing.display_description}"
                    if kind == "display" else f"output: {viewing.input_description} (the look alone)"]
        return write_cube(table, title=title, comments=comments)
    return write_cube(lutmath.to_table(safe_look(lut, strength=strength, size=size, **pins)), title=title,
                      comments=comments)


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
