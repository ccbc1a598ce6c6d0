"""Black and white: neutral LUTs, whose three outputs are one grey (R = G = B out at every node).

A black-and-white look is a LUT whose every node's grey is optimized: it starts as Rec. 709 luma (the plain
conversion) and may weigh colours differently (a per-hue channel mix) and bend the tones (a tone curve) in
one table. The optimizer keeps it neutral by construction (:func:`neutral`), the repair keeps neutral
LUTs neutral (:func:`clipdlut.safety.make_safe` with ``neutral``), and a blend uses the plain conversion
(:func:`grey_identity`) as its zero, so a neutral ``.cube`` stays neutral to the last digit at any strength
(:func:`clipdlut.table.blend_table` does the same for a neutral table a client applies).
"""

from __future__ import annotations

import torch

from clipdlut.lut import identity
from clipdlut.table import LUMA


def neutral(lut: torch.Tensor) -> torch.Tensor:
    """LUTs ``(B, 3, N, N, N)`` made neutral: every node's grey is the luma of its three outputs (differentiable;
    a neutral LUT comes back unchanged up to rounding)."""
    w = torch.tensor(LUMA, dtype=lut.dtype, device=lut.device).view(1, 3, 1, 1, 1)
    return (lut * w).sum(1, keepdim=True).expand_as(lut).contiguous()


def grey_identity(n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
                  ) -> torch.Tensor:
    """The plain black-and-white conversion as a LUT ``(1, 3, N, N, N)``: a neutral look's strength-0 end."""
    return neutral(identity(n, dtype=torch.float64, device=device)).to(dtype)
