"""Per-job quality figures: how safe the returned LUT is, how much of the photo's content the grade kept, and
how far it moved the colours. Reported with every result and by ``python -m clipdlut eval``."""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipdlut.safety import measure

SIDE = 256  # the figures are computed on copies this long at most (the same for every photo: comparable; 30 ms a
#             photo on the API, where 512 px took 140 ms of its CPU)
MIN_SHORT = 32  # ... and at least this wide, where the photo is (a panorama's copy is longer than SIDE)
SSIM_WINDOW = 7  # SSIM compares 7 x 7 windows: a photo narrower than that has no SSIM


@dataclass(frozen=True)
class Quality:
    """The figures of one graded photo and its LUT."""

    ssim: float | None  # structural similarity of the luminance of source and result (1 = the content is untouched);
    #                     None where it is not defined (``note`` says why)
    color_shift: float  # mean CIEDE2000 difference between source and result (about 1 is just noticeable)
    min_own_step: float  # the LUT's invariants (clipdlut.safety.Invariants)
    max_slope: float
    min_value: float
    max_value: float
    safe: bool
    note: str | None = None  # a word on the figures: why one is missing, or where a LUT's steep places come from

    def as_dict(self) -> dict:
        return asdict(self)


def _small(img: Image.Image) -> np.ndarray:
    """A copy at most :data:`SIDE` long, as wide as :data:`MIN_SHORT` where the photo is (floats in [0, 1])."""
    img = img.convert("RGB")
    w, h = img.size
    scale = min(1.0, max(SIDE / max(w, h), MIN_SHORT / min(w, h)))
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float64) / 255


@functools.cache
def _colour() -> Any:
    """colour-science, imported once (its import warns that plotting needs matplotlib: no plots are drawn here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import colour
    return colour


def lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours ``[..., 3]`` in 0..1, computed with colour-science."""
    colour = _colour()
    return colour.XYZ_to_Lab(colour.sRGB_to_XYZ(rgb))


def delta_e_2000(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIEDE2000 differences between two sRGB images (``[..., 3]``, 0..1), computed with colour-science."""
    return delta_e_lab(lab(a), lab(b))


def delta_e_lab(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIEDE2000 differences between CIELAB colours ``[..., 3]``."""
    return _colour().delta_E(a, b, method="CIE 2000")


def hue_shift_lab(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The CIELAB hue angle of each colour of ``b`` minus that of ``a``, in degrees within [-180, 180)."""
    turn = np.degrees(np.arctan2(b[..., 2], b[..., 1]) - np.arctan2(a[..., 2], a[..., 1]))
    return (turn + 180) % 360 - 180


def measure_grade(source: Image.Image, graded: Image.Image, table: np.ndarray) -> Quality:
    """The figures of ``graded`` (``source`` with the LUT ``table`` ``[b, g, r, c]`` applied), each where it is
    defined: a photo under :data:`SSIM_WINDOW` pixels on a side has no SSIM (``note`` says so)."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    src, out = _small(source), _small(graded)
    ssim, note = None, None
    if min(src.shape[:2]) >= SSIM_WINDOW:
        ssim = float(structural_similarity(rgb2gray(src), rgb2gray(out), data_range=1.0, win_size=SSIM_WINDOW))
    else:
        note = f"no SSIM: the photo is under {SSIM_WINDOW} pixels on a side (SSIM compares {SSIM_WINDOW} x " \
               f"{SSIM_WINDOW} windows)"
    shift = float(np.mean(delta_e_2000(src, out)))
    inv = measure(torch.from_numpy(np.ascontiguousarray(table, dtype=np.float64)).permute(3, 0, 1, 2).unsqueeze(0))
    return Quality(ssim=ssim, color_shift=shift, min_own_step=inv.min_own_step, max_slope=inv.max_slope,
                   min_value=inv.min_value, max_value=inv.max_value, safe=inv.safe, note=note)
