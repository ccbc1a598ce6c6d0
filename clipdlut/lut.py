"""3D LUT math on tensors laid out ``(B, 3, N, N, N)`` = ``[batch, channel, b, g, r]``.

The same layout is used by the ``.cube`` reader/writer (rows red-fastest) and by Pillow's
``Color3DLUT`` table, so no code anywhere transposes a LUT. Sizes, strengths and the torch-free table math
are in :mod:`clipdlut.table`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipdlut.table import check_size


def identity(n: int, batch: int = 1, *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
    """The identity LUT of size ``n``: node ``[b, g, r]`` maps to ``(r, g, b) / (n - 1)`` exactly."""
    check_size(n)
    axis = torch.arange(n, dtype=torch.float64, device=device) / (n - 1)
    b, g, r = torch.meshgrid(axis, axis, axis, indexing="ij")
    lut = torch.stack([r, g, b]).to(dtype)
    return lut.unsqueeze(0).expand(batch, -1, -1, -1, -1).contiguous()


def apply(lut: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Apply LUTs ``(B, 3, N, N, N)`` to images ``(B, 3, H, W)`` in [0, 1] by trilinear interpolation.

    Differentiable in both arguments. Inputs outside [0, 1] are clamped to the LUT's border, as
    every ``.cube`` consumer does.
    """
    if lut.ndim != 5 or lut.shape[1] != 3:
        raise ValueError(f"LUT must have shape (B, 3, N, N, N), got {tuple(lut.shape)}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if lut.shape[0] != images.shape[0]:
        raise ValueError(f"{lut.shape[0]} LUTs for {images.shape[0]} images")
    # grid_sample's coordinate order is (x, y, z) = (last, middle, first) axis = (r, g, b).
    grid = images.permute(0, 2, 3, 1).unsqueeze(1) * 2 - 1  # (B, 1, H, W, 3)
    out = F.grid_sample(lut.to(images.dtype), grid, mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.squeeze(2)


def blend(lut: torch.Tensor, strength: float) -> torch.Tensor:
    """``I + strength * (lut - I)``: exact, because trilinear output is linear in the table."""
    ident = identity(lut.shape[-1], lut.shape[0], dtype=lut.dtype, device=lut.device)
    return ident + strength * (lut - ident)


def resample(lut: torch.Tensor, n: int) -> torch.Tensor:
    """The LUT evaluated at the nodes of a size-``n`` grid (exact for 33->65 and 65->33)."""
    check_size(n)
    src = lut.shape[-1]
    if n == src:
        return lut.clone()
    if (src - 1) % (n - 1) == 0:  # every k-th node: exact, no interpolation
        k = (src - 1) // (n - 1)
        return lut[:, :, ::k, ::k, ::k].contiguous()
    nodes = identity(n, lut.shape[0], dtype=torch.float64, device=lut.device)
    flat = nodes.reshape(lut.shape[0], 3, n * n, n)
    out = apply(lut.to(torch.float64), flat)
    return out.reshape(lut.shape[0], 3, n, n, n).to(lut.dtype)


def to_table(lut: torch.Tensor):
    """One LUT ``(3, N, N, N)`` or ``(1, 3, N, N, N)`` as a numpy ``(N, N, N, 3)`` table ``[b, g, r, c]``."""
    if lut.ndim == 5:
        if lut.shape[0] != 1:
            raise ValueError("to_table takes one LUT")
        lut = lut[0]
    return lut.detach().to("cpu", torch.float64).permute(1, 2, 3, 0).contiguous().numpy()


def from_table(table) -> torch.Tensor:
    """A numpy ``(N, N, N, 3)`` table ``[b, g, r, c]`` as a ``(1, 3, N, N, N)`` float32 tensor."""
    t = torch.as_tensor(table, dtype=torch.float64)
    if t.ndim != 4 or t.shape[3] != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]):
        raise ValueError(f"table must have shape (N, N, N, 3), got {tuple(t.shape)}")
    check_size(int(t.shape[0]))
    return t.permute(3, 0, 1, 2).unsqueeze(0).to(torch.float32).contiguous()
