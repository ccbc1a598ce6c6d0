"""What every LUT we return satisfies on footage we never saw, measured and made to hold.

On a LUT ``(B, 3, N, N, N)`` = ``[batch, channel, b, g, r]``:

- own-axis monotone: red out never falls as red in rises (green along green, blue along blue): no inversions;
- slope: no channel changes faster than :data:`MAX_SLOPE` times its input along any axis (steeper stretches one
  8-bit step into a visible band);
- values within [0, 1];
- optionally pinned ends of the neutral axis: black stays black, white stays white; and optionally fences,
  bounds on nodes of the same kind (:mod:`clipdlut.skin` keeps skin tones with them).

:func:`make_safe` is the repair. The constraints are all of the form ``u[j] - u[i] <= w(i -> j)`` between
neighbouring nodes, so the LUTs that satisfy them are closed under pointwise min and max, and for any table
``v`` the largest satisfying LUT below it (``min_j v[j] + dist(j -> i)``) and the smallest above it are
exact, computed axis by axis with cumulative minima. Their midpoint is the repair: it satisfies every
constraint whatever ``v`` was (with a margin, so rounding keeps it), and a LUT that already satisfies them
is returned unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

MAX_SLOPE = 4.0  # at most this many output levels per input level, along every axis, for every channel
MONOTONE_TOLERANCE = 1 / 255  # the largest fall of a channel along its own axis that counts as monotone
_MARGIN = 1e-4  # the repair aims this far (relative) inside the slope bound: float32 and 6 .cube decimals keep it
_AXIS_OF_CHANNEL = (4, 3, 2)  # red varies along dim 4, green along dim 3, blue along dim 2


@dataclass(frozen=True)
class Invariants:
    """How close a LUT comes to breaking each guarantee (the worst node of every LUT measured)."""

    min_own_step: float  # smallest step of a channel along its own axis, in 8-bit levels (>= -1 is monotone)
    max_slope: float  # largest |step| x (N - 1) of any channel along any axis (<= MAX_SLOPE)
    min_value: float
    max_value: float

    @property
    def safe(self) -> bool:
        return (self.min_own_step >= -MONOTONE_TOLERANCE * 255 and self.max_slope <= MAX_SLOPE
                and self.min_value >= 0.0 and self.max_value <= 1.0)


def measure(lut: torch.Tensor) -> Invariants:
    """The invariants of one or more LUTs ``(B, 3, N, N, N)`` (worst over all of them)."""
    t = lut.detach().double()
    n = t.shape[-1]
    own = min(float(torch.diff(t[:, c], dim=axis - 1).min()) for c, axis in enumerate(_AXIS_OF_CHANNEL))
    slope = max(float(torch.diff(t, dim=axis).abs().max()) for axis in (2, 3, 4)) * (n - 1)
    return Invariants(min_own_step=own * 255, max_slope=slope, min_value=float(t.min()), max_value=float(t.max()))


@functools.cache
def _axes(n: int, dtype: torch.dtype, device: torch.device, neutral: bool = False
          ) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per axis: how much each channel may rise over its lower neighbour (forward) and fall below it (backward),
    and the node positions. The slope bound both ways, except that a channel may not fall along its own axis
    (``neutral``: along any axis, since each output is the same grey and so must rise with every input).
    Made once per size and device: a copy from the host inside an optimizer step would make a GPU step wait."""
    step = MAX_SLOPE * (1 - _MARGIN) / (n - 1)
    out = []
    for axis in (2, 3, 4):
        forward = torch.full((1, 3, 1, 1, 1), step, dtype=dtype)
        backward = torch.tensor([0.0 if neutral or own == axis else step for own in _AXIS_OF_CHANNEL], dtype=dtype)
        shape = [1, 1, 1, 1, 1]
        shape[axis] = n
        k = torch.arange(n, dtype=dtype).view(shape)
        out.append((axis, forward.to(device), backward.view(1, 3, 1, 1, 1).to(device), k.to(device)))
    return out


def _running(op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], v: torch.Tensor, axis: int,
             from_end: bool = False) -> torch.Tensor:
    """The running ``op`` (``torch.minimum`` or ``torch.maximum``) of ``v`` along ``axis``, from its start (or its
    end): what ``torch.cummin``/``cummax`` give, exactly. Hand-written because those also compute indices and walk a
    non-last axis element by element: on a CPU they took 5-16 ms on a batch of 33-node LUTs, and this doubling scan
    (log2(N) whole-tensor steps; a min or max is exact, so the result is the same bits) takes under 2."""
    out, n, shift = v.clone(), v.shape[axis], 1
    while shift < n:
        near, far = (0, shift) if from_end else (shift, 0)
        # (op makes a new tensor from the old values before the copy: each step reads the step before)
        out.narrow(axis, near, n - shift).copy_(op(out.narrow(axis, near, n - shift), out.narrow(axis, far, n - shift)))
        shift *= 2
    return out


def _below(v: torch.Tensor, neutral: bool = False) -> torch.Tensor:
    """The largest LUT satisfying the step constraints that is nowhere above ``v`` (``+inf`` allowed)."""
    for axis, f, b, k in _axes(v.shape[-1], v.dtype, v.device, neutral):
        up = _running(torch.minimum, v - f * k, axis) + f * k  # from lower neighbours
        down = _running(torch.minimum, v + b * k, axis, from_end=True) - b * k  # from upper ones
        v = torch.minimum(up, down)
    return v


def _above(v: torch.Tensor, neutral: bool = False) -> torch.Tensor:
    """The smallest LUT satisfying the step constraints that is nowhere below ``v`` (``-inf`` allowed)."""
    for axis, f, b, k in _axes(v.shape[-1], v.dtype, v.device, neutral):
        up = _running(torch.maximum, v + b * k, axis) - b * k  # lower neighbours
        down = _running(torch.maximum, v - f * k, axis, from_end=True) + f * k  # upper ones
        v = torch.maximum(up, down)
    return v


def closure(lower: torch.Tensor, upper: torch.Tensor, neutral: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest LUT satisfying the step constraints that is nowhere below ``lower``, and the largest nowhere
    above ``upper`` (``-inf`` and ``+inf`` where a node is free): per-node bounds as :func:`make_safe` keeps them.
    Every LUT that satisfies the constraints and the bounds lies between the two."""
    return _above(lower, neutral), _below(upper, neutral)


@functools.cache
def _pinned(n: int, dtype: torch.dtype, device: torch.device, node: int, value: float, neutral: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds a satisfying LUT keeps when node ``(node, node, node)`` is pinned to ``value`` (made once)."""
    upper = torch.full((1, 3, n, n, n), float("inf"), dtype=dtype, device=device)
    upper[:, :, node, node, node] = value
    return closure(torch.where(torch.isinf(upper), -upper, upper), upper, neutral)


def make_safe(lut: torch.Tensor, *, keep_blacks: bool = False, keep_whites: bool = False,
              neutral: bool = False, fences: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The repaired LUTs ``(B, 3, N, N, N)``: every guarantee holds, pins hold exactly, and a LUT that already
    satisfied them all comes back exactly as it was. Same dtype and device as ``lut``; computed
    in float32 at least (float32 keeps every bound: the repair aims inside them by far more than its rounding).
    ``neutral``: the LUTs are neutral (R = G = B out, :mod:`clipdlut.mono`) and stay neutral exactly (every
    channel gets the same repair). ``fences``: further per-node bounds from :func:`closure` that the identity
    keeps (:func:`clipdlut.skin.fences`), held exactly as the pins are."""
    v = lut.detach().to(torch.promote_types(lut.dtype, torch.float32))
    n = v.shape[-1]
    out = 0.5 * (_below(v, neutral) + _above(v, neutral))
    lo, hi = torch.zeros_like(out[:1]), torch.ones_like(out[:1])
    for keep, node, value in ((keep_blacks, 0, 0.0), (keep_whites, n - 1, 1.0)):
        if keep:
            plo, phi = _pinned(n, v.dtype, v.device, node, value, neutral)
            lo, hi = torch.maximum(lo, plo), torch.minimum(hi, phi)
    if fences is not None:
        lo, hi = torch.maximum(lo, fences[0].to(v)), torch.minimum(hi, fences[1].to(v))
    out = torch.minimum(torch.maximum(out, lo), hi)
    kept = _holds(v) & (v >= lo).flatten(1).all(1) & (v <= hi).flatten(1).all(1)  # (a safe LUT exactly as it was)
    return torch.where(kept.view(-1, 1, 1, 1, 1), v, out).to(lut.dtype)


def _holds(v: torch.Tensor) -> torch.Tensor:
    """Per LUT, whether the step guarantees hold (on the device: no host sync inside an optimizer step)."""
    n = v.shape[-1]
    ok = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    for axis in (2, 3, 4):
        ok &= (torch.diff(v, dim=axis).abs() * (n - 1) <= MAX_SLOPE).flatten(1).all(1)
    for c, axis in enumerate(_AXIS_OF_CHANNEL):
        ok &= (torch.diff(v[:, c], dim=axis - 1) >= -MONOTONE_TOLERANCE).flatten(1).all(1)
    return ok
