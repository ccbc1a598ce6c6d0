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
