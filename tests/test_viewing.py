"""Footage viewed through OpenColorIO (clipdlut/viewing.py): a log frame made by OCIO's inverse transform from a photo;
the `display` LUT at strength 0 is OCIO's own processor (log -> display), and at strength 1 the `display` LUT on the
log frame agrees with the `look` LUT followed by OCIO's transform, both within 1 CIEDE2000 on average and 3 at the
99th percentile; every delivered LUT keeps the safety guarantees; names the config lacks are refused with its list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from clipdlut import lut as L
from clipdlut.cube import read_cube
from clipdlut.export import lut_to_cube
from clipdlut.quality import delta_e_2000
from clipdlut.safety import measure
from clipdlut.table import identity_table, trilinear
from clipdlut.viewing import ViewingError, displayed, open_viewing

pytestmark = pytest.mark.unit
CAMERAS = ["S-Log3 S-Gamut3.Cine", "ARRI LogC3 (EI800)", "V-Log V-Gamut", "Apple Log"]
PHOTO = data.astronaut()[::4, ::4] / 255.0  # (a face, a flag, white and black: 128 x 128)


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIEDE2000 between two sRGB-display images (the quality figures' own, colour-science's)."""
    return delta_e_2000(np.clip(a, 0, 1), np.clip(b, 0, 1))


def within_bounds(a: np.ndarray, b: np.ndarray) -> None:
    de = delta_e(a, b)
    assert de.mean() <= 1 and np.percentile(de, 99) <= 3, (de.mean(), np.percentile(de, 99), de.max())


def a_look() -> torch.Tensor:
    """A strong look on the display's encoding: channels bent and mixed by a smooth field."""
    ident = L.identity(33, dtype=torch.float64)
    return ident + 0.12 * torch.sin(3 * ident[:, [1, 2, 0]] + 1) * torch.cos(2 * ident[:, [2, 0, 1]])


@pytest.mark.parametrize("camera", CAMERAS)
def test_the_display_lut_is_ocios_transform_at_strength_0_and_the_look_lut_agrees_with_it(camera):
    viewing = open_viewing(camera)
    assert (viewing.display, viewing.view) == ("sRGB - Display", "ACES 2.0 - SDR 100 nits (Rec.709)")
    frame = viewing.from_display(PHOTO).reshape(-1, 3)  # the photo as the camera would have recorded it
    dense = np.random.default_rng(0).random((20_000, 3))  # and colours all over the camera's encoding

    technical = read_cube(lut_to_cube(L.identity(33), strength=0.0, viewing=viewing, kind="display")).table
    for colours in (frame, dense):
        within_bounds(trilinear(technical, colours), viewing.to_display(colours))
    look_at_0 = read_cube(lut_to_cube(a_look(), strength=0.0, viewing=viewing, kind="look")).table
    assert np.array_equal(look_at_0, identity_table(33))  # the look alone, at strength 0: nothing

    shown = read_cube(lut_to_cube(a_look(), viewing=viewing, kind="display")).table
    alone = read_cube(lut_to_cube(a_look(), viewing=viewing, kind="look")).table
    graded = trilinear(shown, frame)
    within_bounds(graded, viewing.to_display(trilinear(alone, frame)))
    assert delta_e(graded, viewing.to_display(frame)).mean() > 3  # (the look is there)
    # DESIGN.md 8: the look LUT in its own encoding; the display LUT's look on the display's (README, Footage)
    assert measure(L.from_table(alone)).safe and measure(L.from_table(read_cube(lut_to_cube(a_look())).table)).safe


def test_the_working_copy_is_what_the_display_shows():
    from PIL import Image

    viewing = open_viewing("S-Log3 S-Gamut3.Cine")
    frame = Image.fromarray(np.round(viewing.from_display(PHOTO) * 255).astype(np.uint8))
    assert np.abs(np.asarray(displayed(frame, viewing)) / 255.0 - PHOTO).mean() < 2 / 255  # (8-bit log: 1.2 levels)
    assert displayed(frame, None) is frame  # a photo: as it is


@pytest.mark.parametrize("args,words", [
    (("S-Log9",), "input_space 'S-Log9' is not in the OCIO config studio-config"),
    (("ACEScg",), "input_space 'ACEScg' is scene-linear"),
    (("ARRI LogC4", "CRT"), "display 'CRT' is not in the OCIO config; it has: sRGB - Display"),
    (("ARRI LogC4", "sRGB - Display", "Filmic"), "view 'Filmic' is not a view of 'sRGB - Display'; it has: ACES"),
])
def test_names_the_config_lacks_are_refused_with_what_it_has(args, words):
    with pytest.raises(ViewingError, match=words.replace("(", r"\(").replace(".", r"\.")):
        open_viewing(*args)


def test_a_config_of_ones_own_and_ocio_in_the_environment(tmp_path, monkeypatch):
    import PyOpenColorIO as ocio

    path = tmp_path / "studio.ocio"
    ocio.Config.CreateFromBuiltinConfig("studio-config-latest").serialize(str(path))
    monkeypatch.setenv("OCIO", str(path))
    assert open_viewing("Apple Log").config == str(path)
    monkeypatch.setenv("OCIO", str(tmp_path / "missing.ocio"))
    with pytest.raises(ViewingError, match="cannot open the OCIO config"):
        open_viewing("Apple Log")
