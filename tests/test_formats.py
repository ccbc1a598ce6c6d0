"""LUT files for every grading application (clipdlut/formats.py): each format read back by OpenColorIO (Hald: by
our reader, OCIO reads no images) and applied to a grid of test colours agrees with the delivered .cube within the
precision the registry states; colour-science reads the formats it knows the same; the CLF says what it maps."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import get_args

import numpy as np
import PyOpenColorIO as ocio
import pytest
import torch

from clipdlut import lut as L
from clipdlut.cube import read_cube
from clipdlut.export import lut_to_cube
from clipdlut.formats import BY_SUFFIX, FORMATS, LutFormatName, convert, file_name, format_for_suffix, look_name
from clipdlut.hald import read_hald
from clipdlut.table import trilinear

pytestmark = pytest.mark.unit
COLOURS = np.random.default_rng(7).random((4000, 3)).astype(np.float32)  # test colours over the whole cube


@pytest.fixture(scope="module")
def cube() -> str:
    """A delivered .cube (blended, made safe) of a strong look: channels bent and mixed by a smooth field, plus
    node-to-node noise of a quarter level (a Hald picture's resampling is stated for smooth looks)."""
    torch.manual_seed(0)
    ident = L.identity(33, dtype=torch.float64)
    lut = ident + 0.1 * torch.sin(3 * ident[:, [1, 2, 0]] + 1) * torch.cos(2 * ident[:, [2, 0, 1]])
    lut = lut + 0.001 * torch.randn_like(lut)
    return lut_to_cube(lut, strength=0.8, title="温暖的金色黄昏", comments=["prompt: 温暖的金色黄昏", "seed: 0"])


def by_ocio(path) -> np.ndarray:
    """The test colours through the LUT file at ``path``, as OpenColorIO reads and applies it (trilinear)."""
    transform = ocio.FileTransform(src=str(path), interpolation=ocio.INTERP_LINEAR)
    processor = ocio.Config.CreateRaw().getProcessor(transform).getDefaultCPUProcessor()
    out = COLOURS.copy()
    processor.applyRGB(out)
    return out


@pytest.mark.parametrize("size", [None, 17, 65])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_read_back_agrees_with_the_cube_within_its_precision(tmp_path, cube, fmt, size):
    data = convert(cube, fmt, size)
    reference = convert(cube, "cube", None if fmt == "hald" else size)  # (a Hald image has a size of its own)
    (tmp_path / "reference.cube").write_bytes(reference)
    expected = by_ocio(tmp_path / "reference.cube")
    if fmt == "hald":
        got = trilinear(read_hald(data), COLOURS.astype(np.float64))
    else:
        path = tmp_path / f"look{FORMATS[fmt].suffix}"
        path.write_bytes(data)
        got = by_ocio(path)
    error = np.abs(got - expected).max()
    assert error <= FORMATS[fmt].precision, (fmt, size, error)
    assert fmt in ("3dl-flame", "3dl-lustre", "hald") or error < 2e-6  # (the text formats: 6 decimals or more)


def test_the_cube_is_delivered_as_it_is_and_resampled_exactly(cube):
    assert convert(cube, "cube") == cube.encode("utf-8")
    finer = read_cube(convert(cube, "cube", 65))
    assert finer.size == 65 and "resampled from 33 to 65 nodes" in finer.comments
    assert np.abs(finer.table[::2, ::2, ::2] - read_cube(cube).table).max() < 1e-6  # (its every other node)


@pytest.mark.parametrize("fmt,reader", [("resolve-cube", "Resolve Cube"), ("csp", "Cinespace"),
                                        ("spi3d", "Sony SPI3D")])
def test_colour_science_reads_the_formats_it_knows_the_same(tmp_path, cube, fmt, reader):
    import colour

    path = tmp_path / f"look{FORMATS[fmt].suffix}"
    path.write_bytes(convert(cube, fmt))
    read = colour.read_LUT(str(path), method=reader)
    table = read.table if hasattr(read, "table") else read[-1].table  # (a LUTSequence: shaper, then the cube)
    ours = read_cube(cube).table.transpose(2, 1, 0, 3)  # (colour-science indexes [r, g, b])
    assert np.abs(table - ours).max() < 1e-6


def test_the_clf_says_what_the_look_was_asked_and_what_it_maps(cube):
    root = ET.fromstring(convert(cube, "clf"))
    ns = {"clf": root.tag.split("}")[0][1:]}
    assert root.get("name") == "温暖的金色黄昏"
    assert [d.text for d in root.findall("clf:Description", ns)] == ["prompt: 温暖的金色黄昏", "seed: 0"]
    assert "sRGB" in root.find("clf:InputDescriptor", ns).text
    assert root.find("clf:OutputDescriptor", ns).text == root.find("clf:InputDescriptor", ns).text
    lut = root.find("clf:LUT3D", ns)
    assert lut.get("interpolation") == "trilinear" and lut.find("clf:Array", ns).get("dim") == "33 33 33 3"


def test_the_registry_is_the_one_list_of_formats():
    assert set(FORMATS) == set(get_args(LutFormatName))
    assert all(FORMATS[fmt].suffix == suffix for suffix, fmt in BY_SUFFIX.items())
    assert {f.suffix for f in FORMATS.values()} == set(BY_SUFFIX)  # every format can be named by a file
    assert [format_for_suffix(s) for s in (".CUBE", ".3dl", ".png")] == ["cube", "3dl-flame", "hald"]
    with pytest.raises(ValueError, match=r"cannot write a LUT as \.tif: use one of \.cube, \.3dl"):
        format_for_suffix(".tif")
    with pytest.raises(ValueError, match="format must be one of cube, resolve-cube"):
        convert("", "tiff")  # type: ignore[arg-type]
    names = [file_name("warm-golden-hour-film", fmt, 33) for fmt in FORMATS]
    assert len(set(names)) == len(names) and "warm-golden-hour-film_33-lustre.3dl" in names
    assert file_name("x", "hald", 33) == "x_hald.png" and file_name("x", "cube") == "x_lut.cube"
    assert look_name("Warm golden-hour FILM look!") == "warm-golden-hour-film-look"
    assert look_name("温暖的 金色黄昏") == "温暖的-金色黄昏" and look_name("  ...  ") == "clipdlut"


def test_the_readme_lists_every_format_as_the_registry_says():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for name, f in FORMATS.items():
        note = "" if BY_SUFFIX.get(f.suffix) == name else f" (`--lut-format {name}`)"
        precision = f"{f.precision:.3g}" if f.precision < 1e-3 else f"{f.precision * 255:.0f}/255"
        assert f"| `{name}` | `{f.suffix}`{note} | {f.where} | {precision} |" in readme, name
