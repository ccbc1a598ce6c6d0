"""The objective of each job: CLIP guidance terms, LUT regularizers and image-space terms.

Every term takes a leading job dimension and returns one value per job, so a whole batch of jobs costs
one set of operations (and one set of backward nodes), not one per job. The LUT regularizer works on
``delta = lut - identity``, so it is exactly 0 on the identity LUT. Monotonicity and the slope bound are not
terms: :mod:`clipdlut.safety` makes them hold on every returned LUT (a soft penalty only discourages breaking
them).

:data:`TERMS` is the registry: each term's function and default weight. :class:`LossWeights` and the
optimizer's objective are both built from it, so adding a term is one entry here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipdlut.lut import identity

# LUT axes in a (B, 3, N, N, N) tensor: dim 2 = blue, 3 = green, 4 = red.
LUT_AXES = {"b": 2, "g": 3, "r": 4}
DARK = 0.08  # luminance under which a source pixel counts as black for the black-level term


def _diff(t: torch.Tensor, dim: int, order: int = 1) -> torch.Tensor:
    return torch.diff(t, n=order, dim=dim)


def smoothness(lut: torch.Tensor) -> torch.Tensor:
    """Mean squared curvature of ``lut - identity`` along b, g and r, per LUT ``(B,)``.

    Curvature is the second difference times ``(N-1)^2``, so a weight means the same at every size.
    """
    n = lut.shape[-1]
    if n < 3:
        return lut.new_zeros(lut.shape[0])
    delta = lut - identity(n, dtype=lut.dtype, device=lut.device)  # broadcast over the jobs
    terms = [(_diff(delta, d, 2) * (n - 1) ** 2).pow(2).flatten(1).mean(1) for d in LUT_AXES.values()]
    return torch.stack(terms).sum(0)


def _srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    rgb = rgb.clamp(0, 1)
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).clamp_min(1e-8) ** 2.4)


_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_WHITE_D65 = (0.95047, 1.0, 1.08883)


@functools.cache
def _xyz_over_white(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Linear sRGB -> XYZ relative to the D65 white, made once per device: a copy from the host inside a
    step would make a GPU step wait."""
    return (torch.tensor(_RGB_TO_XYZ, dtype=torch.float64) / torch.tensor(_WHITE_D65, dtype=torch.float64)
            .view(3, 1)).to(device, dtype)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``(..., 3, H, W)`` in [0, 1] to CIE L*a*b* (D65), differentiably."""
    lin = _srgb_to_linear(rgb)
    xyz = torch.einsum("ij,...jhw->...ihw", _xyz_over_white(rgb.device, rgb.dtype), lin)
    eps = 216 / 24389
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), (24389 / 27 * xyz + 16) / 116)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def color_shift(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Per job ``(G,)``: squared distance (in units of 100 L*a*b*) between the mean colours of its graded
    and source views ``(G, V, 3, H, W)``, averaged over the views."""
    d = rgb_to_lab(out).mean((-1, -2)) - rgb_to_lab(src).mean((-1, -2))
    return (d / 100).pow(2).sum(-1).mean(-1)


def lab_stats(rgb: torch.Tensor) -> torch.Tensor:
    """Per image or job: the mean and standard deviation of L*, a* and b* (in units of 100) over all pixels of
    ``(..., [V,] 3, H, W)`` with the leading dimension kept: ``(G, 6)``."""
    lab = (rgb_to_lab(rgb) / 100).movedim(-3, -1).reshape(rgb.shape[0], -1, 3)
    return torch.cat([lab.mean(1), lab.std(1, correction=0)], dim=-1)


def reference_color(out: torch.Tensor, ref_stats: torch.Tensor) -> torch.Tensor:
    """Per job ``(G,)``: squared distance between the L*a*b* mean and spread of its graded views
    ``(G, V, 3, H, W)`` and its reference photo's (``(G, 6)``, :func:`lab_stats`)."""
    return (lab_stats(out) - ref_stats).pow(2).sum(-1)


def reference(feats: torch.Tensor, ref_feat: torch.Tensor) -> torch.Tensor:
    """Per job ``(G,)``: mean over its views' features ``(G, V, D)`` of ``1 - cos(E(out), E(reference))``."""
    return (1 - (feats * ref_feat.unsqueeze(1)).sum(-1)).mean(-1)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(-3)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def black_level(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Per job ``(G,)``: how much the darkest source pixels of its views ``(G, V, 3, H, W)`` were lifted
    (squared), weighted by how dark they are."""
    ys, yo = _luma(src).flatten(1), _luma(out).flatten(1)
    w = F.relu(DARK - ys) / DARK
    return (w * F.relu(yo - ys).pow(2)).sum(1) / w.sum(1).clamp_min(1.0)


def directional(feats: torch.Tensor, src_feat: torch.Tensor, text_dir: torch.Tensor) -> torch.Tensor:
    """Per job ``(G,)``: mean over its views' features ``(G, V, D)`` of ``1 - cos(E(out) - E(src), T(target)
    - T(source))``, with ``src_feat`` and ``text_dir`` ``(G, D)``.

    The cosine's epsilon keeps it finite when the image direction is zero (the identity start).
    """
    cos = F.cosine_similarity(feats - src_feat.unsqueeze(1), text_dir.unsqueeze(1), dim=-1, eps=1e-8)
    return (1 - cos).mean(-1)


def global_target(feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per job ``(G,)``: mean over its views' features ``(G, V, D)`` of ``1 - cos(E(out), T(target))``."""
    return (1 - (feats * target.unsqueeze(1)).sum(-1)).mean(-1)


@dataclass(frozen=True)
class Inputs:
    """What the terms read for a group of ``G`` jobs stepped together (``V`` views each)."""

    luts: torch.Tensor  # (G, 3, N, N, N)
    src: torch.Tensor  # the source views (G, V, 3, R, R)
    out: torch.Tensor  # the graded views, like src
    feats: torch.Tensor  # CLIP features of the graded views (G, V, D)
    src_feat: torch.Tensor  # of the source image (G, D)
    text_dir: torch.Tensor  # target minus source prompt features (G, D)
    target: torch.Tensor  # target prompt features (G, D)
    ref_feat: torch.Tensor  # the reference photo's features (G, D); zeros for a job without one
    ref_stats: torch.Tensor  # the reference photo's L*a*b* statistics (G, 6), :func:`lab_stats`; zeros likewise


@dataclass(frozen=True)
class Term:
    """One term of the objective: its value per job ``(G,)`` and its default weight."""

    fn: Callable[[Inputs], torch.Tensor]
    weight: float


TERMS: dict[str, Term] = {
    "directional": Term(lambda x: directional(x.feats, x.src_feat, x.text_dir), 1.0),
    "global_target": Term(lambda x: global_target(x.feats, x.target), 0.3),
    "smoothness": Term(lambda x: smoothness(x.luts), 0.03),  # against ripples that band a sky (bench/safety.py)
    "color": Term(lambda x: color_shift(x.out, x.src), 0.05),
    "black_level": Term(lambda x: black_level(x.out, x.src), 1.0),
    # with a reference photo only (a job without one weighs them 0)
    "reference": Term(lambda x: reference(x.feats, x.ref_feat), 1.0),
    "reference_color": Term(lambda x: reference_color(x.out, x.ref_stats), 1.0),
}


class LossWeights(Mapping[str, float]):
    """The weight of every term of :data:`TERMS`: its default unless overridden (per job)."""

    def __init__(self, **overrides: float):
        unknown = set(overrides) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {sorted(TERMS)}")
        self._values = {name: float(overrides.get(name, term.weight)) for name, term in TERMS.items()}

    def with_overrides(self, **overrides: float) -> LossWeights:
        """A copy with some weights replaced; unknown names raise ``ValueError``."""
        return LossWeights(**{**self._values, **overrides})

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"LossWeights({', '.join(f'{k}={v:g}' for k, v in self._values.items())})"
