import numpy as np
import pytest

from clipdlut import lut as L
from clipdlut.hald import LutImageError, hald_level_for, read_hald, read_strip, write_hald, write_strip
from clipdlut.render import apply_table
from tests.conftest import gradient_image, png_bytes, random_smooth_lut

pytestmark = pytest.mark.unit


def _u8(table):
    return np.round(table * 255).astype(np.uint8)


@pytest.mark.parametrize("level", [2, 4, 8])
def test_hald_identity_round_trip_exact_at_8_bits(level):
    n = level * level
    png = write_hald(L.to_table(L.identity(n)))
    table = read_hald(png)
    assert table.shape == (n, n, n, 3)
    assert np.array_equal(_u8(table), _u8(L.to_table(L.identity(n))))
    assert write_hald(table) == png


def test_hald_pixel_order_is_red_fastest():
    import io

    from PIL import Image
    img = Image.open(io.BytesIO(write_hald(L.to_table(L.identity(4)))))
    assert img.size == (8, 8)
    assert [img.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (85, 0, 0), (170, 0, 0), (255, 0, 0)]
    assert img.getpixel((4, 0)) == (0, 85, 0)


@pytest.mark.parametrize("n", [2, 17, 33])
def test_strip_identity_round_trip_exact_at_8_bits(n):
    png = write_strip(L.to_table(L.identity(n)))
    table = read_strip(png)
    assert np.array_equal(_u8(table), _u8(L.to_table(L.identity(n))))
    assert write_strip(table) == png


def test_strip_layout_blue_slices_side_by_side():
    import io

    from PIL import Image
    img = Image.open(io.BytesIO(write_strip(L.to_table(L.identity(3)))))
    assert img.size == (9, 3)
    assert img.getpixel((2, 0)) == (255, 0, 0)      # slice b=0, row g=0, column r=2
    assert img.getpixel((0, 2)) == (0, 255, 0)      # g=2
    assert img.getpixel((6, 0)) == (0, 0, 255)      # slice b=2


def test_hald_of_a_real_lut_renders_like_the_lut():
    lut = L.resample(random_smooth_lut(33, 1), 64)
    table = L.to_table(lut)
    img = gradient_image()
    direct = np.asarray(apply_table(img, table)).astype(int)
    via_hald = np.asarray(apply_table(img, read_hald(write_hald(table)))).astype(int)
    assert np.abs(direct - via_hald).max() <= 1


def test_bad_lut_images_are_refused():
    with pytest.raises(LutImageError, match="L\\^3"):
        read_hald(png_bytes(gradient_image(10, 10)))
    with pytest.raises(LutImageError, match="N pixels high"):
        read_strip(png_bytes(gradient_image(10, 3)))
    with pytest.raises(LutImageError, match="cannot read"):
        read_hald(b"not an image")
    with pytest.raises(ValueError, match="square"):
        write_hald(L.to_table(L.identity(5)))


def test_hald_level_for():
    assert hald_level_for(33) == 8 and hald_level_for(64) == 8 and hald_level_for(65) == 8 and hald_level_for(4) == 2
    assert hald_level_for(17) == 7 and hald_level_for(5) == 3 and hald_level_for(2) == 2  # (grids that hold every node)


@pytest.mark.parametrize("reader", [read_hald, read_strip])
def test_a_huge_claimed_size_is_refused_before_decoding(reader):
    """A 9000 x 9000 header in a small file: refused from the header, before any decoding (which would take
    about 1 GB)."""
    import zlib

    from PIL import Image, ImageFile

    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    data[16:24] = (9000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")

    def no_decoding(self):
        raise AssertionError("the image was decoded")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageFile.ImageFile, "load", no_decoding)
        with pytest.raises(LutImageError, match="claims 9000x9000"):
            reader(bytes(data))
