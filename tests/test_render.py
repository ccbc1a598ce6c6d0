import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from clipdlut import lut as L
from clipdlut.cube import read_cube
from clipdlut.export import lut_to_cube
from clipdlut.imaging import decode_image, encode_image
from clipdlut.render import apply_table, render
from clipdlut.render import pillow_lut as color3dlut
from tests.conftest import gradient_image, png_bytes, random_smooth_lut

pytestmark = pytest.mark.unit


def _client_apply(cube_text: str, img: Image.Image, tmp_path) -> Image.Image:
    """What a client does: save the .cube and apply it with Pillow (via pillow-lut's reader)."""
    pillow_lut = pytest.importorskip("pillow_lut")
    path = tmp_path / "result.cube"
    path.write_text(cube_text, encoding="utf-8")
    return img.convert("RGB").filter(pillow_lut.load_cube_file(str(path)))


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    buf = io.BytesIO()
    gradient_image(50, 30).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def _sixteen_bit() -> bytes:
    return png_bytes(Image.fromarray((np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)))


def _rgba() -> bytes:
    img = gradient_image(40, 30).convert("RGBA")
    img.putalpha(100)
    return png_bytes(img)


def _cmyk() -> bytes:
    buf = io.BytesIO()
    gradient_image(40, 30).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("data", [
    png_bytes(gradient_image()), _exif_rotated(), _rgba(), png_bytes(gradient_image().convert("P")),
    png_bytes(gradient_image().convert("L")), _cmyk(), _sixteen_bit(),
], ids=["rgb", "exif-rotated", "rgba", "palette", "greyscale", "cmyk", "16-bit"])
def test_render_equals_pillow_applied_to_the_returned_cube(data, tmp_path):
    text = lut_to_cube(random_smooth_lut(33, 3).float(), strength=0.8)
    decoded = decode_image(data)
    ours = render(decoded, text)
    client = _client_apply(text, decoded.rgb, tmp_path)
    assert ours.size == decoded.size
    assert ours.tobytes() == client.tobytes()
    # and it really graded the picture
    assert ours.tobytes() != decoded.rgb.tobytes()


def test_render_with_strength_and_identity():
    decoded = decode_image(png_bytes(gradient_image()))
    ident = lut_to_cube(L.identity(17))
    assert render(decoded, ident).tobytes() == decoded.rgb.tobytes()
    text = lut_to_cube(random_smooth_lut(17, 2).float())
    assert render(decoded, text, strength=0.0).tobytes() == decoded.rgb.tobytes()
    half = np.asarray(render(decoded, text, strength=0.5)).astype(int)
    full = np.asarray(render(decoded, text)).astype(int)
    expected = (np.asarray(decoded.rgb).astype(int) + full) / 2
    assert np.abs(half - expected).max() <= 1.5


def test_render_keeps_alpha_and_icc_in_the_output():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = gradient_image().convert("RGBA")
    img.putalpha(77)
    decoded = decode_image(png_bytes(img, icc_profile=icc))
    out = Image.open(io.BytesIO(encode_image(render(decoded, lut_to_cube(random_smooth_lut(9, 1).float())), "png",
                                             decoded.alpha, decoded.icc_profile)))
    assert out.mode == "RGBA" and out.getpixel((5, 5))[3] == 77 and out.info["icc_profile"] == icc


def test_domain_cube_renders_on_the_unit_domain():
    table = L.to_table(L.identity(5))
    text = "DOMAIN_MIN 0 0 0\nDOMAIN_MAX 1 1 1\n" + lut_to_cube(L.identity(5)).split("\n", 1)[1]
    assert np.allclose(read_cube(text).normalized(), table, atol=1e-6)


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_strips_on_threads_equal_one_pillow_call(workers):
    img = gradient_image(300, 1100, seed=3)
    table = L.to_table(random_smooth_lut(17, seed=workers))
    assert apply_table(img, table, workers=workers).tobytes() == img.filter(color3dlut(table)).tobytes()
