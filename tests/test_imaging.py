import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from clipdlut.imaging import (
    ImageError,
    ImageTooLarge,
    decode_image,
    encode_image,
    output_format,
    thumbnail,
    working_copy,
)
from tests.conftest import gradient_image, png_bytes

pytestmark = pytest.mark.unit


def _save(img, fmt="PNG", **params):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    img = gradient_image(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    d = decode_image(_save(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert d.size == (40, 60)


def test_rgba_keeps_alpha_and_palette_greyscale_cmyk_convert():
    rgba = gradient_image(20, 10).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((20, 10)))
    d = decode_image(png_bytes(rgba))
    assert d.rgb.mode == "RGB" and d.alpha is not None and d.alpha.getextrema() != (255, 255)
    for img, fmt in [(gradient_image().convert("P"), "PNG"), (gradient_image().convert("L"), "PNG"),
                     (gradient_image().convert("CMYK"), "JPEG"), (gradient_image().convert("CMYK"), "TIFF")]:
        d = decode_image(_save(img, fmt))
        assert d.rgb.mode == "RGB" and d.size == img.size and d.alpha is None, (img.mode, fmt)


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    d = decode_image(png_bytes(Image.fromarray(arr)))
    px = np.asarray(d.rgb)[..., 0]
    assert px.min() == 0 and px.max() == 255 and 120 < px.mean() < 135


def test_icc_profile_is_kept_through_encoding():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    d = decode_image(png_bytes(gradient_image(), icc_profile=icc))
    assert d.icc_profile == icc
    for fmt in ("png", "jpeg", "webp"):
        out = Image.open(io.BytesIO(encode_image(d.rgb, fmt, icc_profile=d.icc_profile)))
        assert out.info.get("icc_profile") == icc, fmt


def test_encoding_keeps_alpha_except_jpeg():
    rgb, alpha = gradient_image(), Image.new("L", (96, 64), 128)
    assert Image.open(io.BytesIO(encode_image(rgb, "png", alpha))).mode == "RGBA"
    assert Image.open(io.BytesIO(encode_image(rgb, "webp", alpha))).mode == "RGBA"
    assert Image.open(io.BytesIO(encode_image(rgb, "jpeg", alpha))).mode == "RGB"
    with pytest.raises(ValueError, match="use png, jpeg or webp"):
        output_format("gif")


def test_too_many_pixels_are_refused_before_decoding():
    big = _save(Image.new("RGB", (3000, 2000)), "PNG")
    with pytest.raises(ImageTooLarge, match="3000x2000 = 6,000,000 pixels; the limit is 1,000,000"):
        decode_image(big, max_pixels=1_000_000)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"hello, this is text", "not an image"),
    (png_bytes(gradient_image())[:200], "truncated or corrupt"),
])
def test_bad_data_is_refused_clearly(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_animated_gif_takes_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    d = decode_image(buf.getvalue())
    assert d.rgb.getpixel((0, 0))[0] > 200


def test_working_copy_and_thumbnail_sizes():
    big = gradient_image(1200, 800)
    assert working_copy(big, 288).size == (432, 288)
    assert working_copy(gradient_image(100, 50), 288).size == (100, 50)  # never upscaled
    assert max(working_copy(gradient_image(4000, 200), 288, 864).size) == 864
    assert thumbnail(big).size == (256, 171)


# Property-based: damaged files of every format decode or fail with ImageError, never anything else.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    gradient_image(24, 16).save(buf, format=fmt)
    return buf.getvalue()


SAMPLES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")}


@st.composite
def _damaged(draw):
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


@given(_damaged())
@settings(max_examples=400, deadline=None)
def test_property_damaged_images_fail_cleanly(data):
    try:
        decoded = decode_image(data, max_pixels=1_000_000)
    except ImageError as e:  # ImageTooLarge is an ImageError
        assert str(e)
    else:
        w, h = decoded.size
        assert 0 < w * h <= 1_000_000 and decoded.rgb.mode == "RGB" and decoded.rgb.size == (w, h)
