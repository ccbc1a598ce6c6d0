"""``/v1/apply``'s work (clipdlut/serving/apply.py): a client's LUT file on a client's image."""

import io

import numpy as np
import pytest
from PIL import Image

from clipdlut.cube import write_cube
from clipdlut.hald import write_hald
from clipdlut.lut import identity, to_table
from clipdlut.serving.apply import apply_upload
from clipdlut.serving.errors import InputError, PayloadTooLarge
from clipdlut.serving.settings import Settings
from tests.conftest import camera_jpeg, gradient_image, kept_exif, png_bytes

pytestmark = pytest.mark.unit
SWAP = to_table(identity(17))[..., [2, 1, 0]]  # red and blue swapped


@pytest.mark.parametrize("lut", [write_cube(SWAP).encode(), write_hald(to_table(identity(16))[..., [2, 1, 0]])])
def test_a_cube_or_a_hald_png_grades_the_image(lut):
    img = gradient_image(64, 48)
    out = Image.open(io.BytesIO(apply_upload(png_bytes(img), lut, 1.0, "png", Settings())[0]))
    assert np.abs(np.asarray(out).astype(int) - np.asarray(img)[..., ::-1]).max() <= 1
    half = Image.open(io.BytesIO(apply_upload(png_bytes(img), lut, 0.0, "jpeg", Settings())[0]))
    assert half.format == "JPEG" and half.size == img.size


def test_the_image_comes_back_in_its_own_format_unless_asked():
    """A JPEG stays a JPEG with its camera's EXIF (as a job's result does); a PNG stays a PNG."""
    lut = write_cube(SWAP).encode()
    jpeg, exif = camera_jpeg(gradient_image(64, 48))
    data, fmt = apply_upload(jpeg, lut, 1.0, None, Settings())
    assert fmt == "jpeg" and kept_exif(data) == {**exif, "orientation": 1}
    assert apply_upload(png_bytes(gradient_image(32, 24)), lut, 1.0, None, Settings())[1] == "png"
    data, fmt = apply_upload(jpeg, lut, 1.0, "webp", Settings())
    assert fmt == "webp" and Image.open(io.BytesIO(data)).format == "WEBP"
    assert apply_upload(jpeg, lut, 1.0, "JPG", Settings())[1] == "jpeg"  # (the format's one name)
    mpo = io.BytesIO()  # a JPEG with a multi-picture block, as many cameras and phones write: Pillow says MPO
    gradient_image(64, 48).save(mpo, "MPO", save_all=True, append_images=[gradient_image(32, 24)])
    assert Image.open(io.BytesIO(mpo.getvalue())).format == "MPO"
    data, fmt = apply_upload(mpo.getvalue(), lut, 1.0, None, Settings())
    assert fmt == "jpeg" and Image.open(io.BytesIO(data)).format == "JPEG"


def test_bad_files_and_options_say_what_to_fix():
    img = png_bytes(gradient_image(32, 32))
    with pytest.raises(InputError, match="the LUT file cannot be used"):
        apply_upload(img, b"LUT_3D_SIZE 2\n0 0 0\n", 1.0, "png", Settings())
    with pytest.raises(InputError, match="strength must be from 0 to 2"):
        apply_upload(img, write_cube(SWAP).encode(), 2.5, "png", Settings())
    with pytest.raises(PayloadTooLarge):
        apply_upload(img, write_cube(SWAP).encode(), 1.0, "png", Settings(max_pixels=100))
