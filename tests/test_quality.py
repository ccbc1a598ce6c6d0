"""The per-job quality figures (clipdlut/quality.py)."""

import numpy as np
import pytest
from PIL import Image

from clipdlut.lut import identity, to_table
from clipdlut.quality import measure_grade
from clipdlut.render import apply_table
from tests.conftest import gradient_image

pytestmark = pytest.mark.unit


def test_the_identity_keeps_everything():
    img = gradient_image(640, 480, 1)
    table = to_table(identity(17))
    q = measure_grade(img, apply_table(img, table), table)
    assert q.ssim > 0.999 and q.color_shift < 0.5
    assert q.safe and q.max_slope == pytest.approx(1.0) and q.min_own_step == pytest.approx(255 / 16)
    assert (q.min_value, q.max_value) == (0.0, 1.0)


def test_a_colour_cast_shifts_colour_but_keeps_content_and_a_flat_grade_loses_it():
    img = gradient_image(320, 240, 2)
    warm = to_table(identity(17)) * np.array([1.0, 0.85, 0.6]) + np.array([0.0, 0.05, 0.0])
    q = measure_grade(img, apply_table(img, warm), warm)
    assert q.color_shift > 8 and q.ssim > 0.8 and q.safe
    flat = np.full_like(warm, 0.5)
    f = measure_grade(img, apply_table(img, flat), flat)
    assert f.ssim < q.ssim - 0.2 and f.safe  # (flat is safe: it moves nothing the wrong way, it only removes)


def test_an_unsafe_lut_is_reported_unsafe():
    table = to_table(identity(9))
    table[..., 0] = 1 - table[..., 0]  # red inverted
    q = measure_grade(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)), table)
    assert not q.safe and q.min_own_step < -30


def test_every_figure_is_measured_where_it_is_defined_whatever_the_shape():
    """A long photo's figures use a copy wide enough for SSIM's 7 x 7 windows; a photo narrower than a window has no
    SSIM, and says why, instead of failing the job (the chaos probe's 400x7 and 4000x100 did)."""
    table = to_table(identity(17))
    for size in ((4000, 100), (400, 7), (3000, 16)):
        photo = gradient_image(*size)
        q = measure_grade(photo, photo, table)
        assert q.ssim == pytest.approx(1.0) and q.note is None and q.color_shift < 1e-9
    thin = gradient_image(400, 6)
    q = measure_grade(thin, thin, table)
    assert q.ssim is None and q.note.startswith("no SSIM: the photo is under 7 pixels on a side") and q.safe
