"""LUT files for every grading application, made from the one ``.cube`` a look is delivered as.

The project's ``.cube`` is the source of truth (blended, made safe, exact as :func:`clipdlut.cube.write_cube`
writes it); every other format is that table written by OpenColorIO, the field's own library: its ``Baker``
samples an in-memory ``Lut3DTransform`` of the table at the same nodes (so nothing is interpolated), and its
CLF writer keeps what the look was asked and the encodings it maps between. Hald PNG is written here (OCIO
writes no images). ``precision`` is the largest difference, in 0..1 units, between a file read back and
applied by OCIO (Hald: by :func:`clipdlut.hald.read_hald`) and the ``.cube`` applied the same way; the tests
measure it on every format.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from clipdlut.cube import Cube, read_cube, write_cube
from clipdlut.hald import hald_level_for, write_hald


class LutFormat(NamedTuple):
    """One downloadable LUT file format."""

    suffix: str
    media_type: str
    ocio_name: str | None  # the name OCIO's Baker (or its CLF writer) knows it by; None: written by this project
    precision: float  # largest difference from the .cube once read back and applied (0..1 units)
    where: str  # what it is for


LutFormatName = Literal["cube", "resolve-cube", "3dl-flame", "3dl-lustre", "csp", "spi3d", "clf", "hald"]

# (the .3dl formats store 12-bit integers: half a step is 1/8190; the text formats print 6 decimals or more,
# so a table resampled from the .cube's own 6 decimals is two roundings off it;
# a Hald image is 8-bit: exact nodes for 17 (level 7 holds them), 33 and 65 resampled onto level 8's 64 nodes, which
# is within a level on a smooth look; node-to-node noise would lose more, and no .cube consumer needs a Hald)
FORMATS: dict[LutFormatName, LutFormat] = {
    "cube": LutFormat(".cube", "text/plain", None, 1e-6,
                      "Photoshop (Color Lookup), Premiere and After Effects (Lumetri), Resolve, Final Cut Pro, Nuke, "
                      "ffmpeg lut3d"),
    "resolve-cube": LutFormat(".cube", "text/plain", "resolve_cube", 2e-6, "DaVinci Resolve's own .cube flavour"),
    "3dl-flame": LutFormat(".3dl", "text/plain", "flame", 1.25e-4, "Autodesk Flame, Nuke (Vectorfield)"),
    "3dl-lustre": LutFormat(".3dl", "text/plain", "lustre", 1.25e-4, "Autodesk Lustre, Baselight"),
    "csp": LutFormat(".csp", "text/plain", "cinespace", 2e-6, "Cinespace, Nuke, ffmpeg lut3d"),
    "spi3d": LutFormat(".spi3d", "text/plain", "spi3d", 2e-6, "Sony Imageworks: OCIO configs, Nuke, Katana"),
    "clf": LutFormat(".clf", "application/xml", "Academy/ASC Common LUT Format", 2e-6,
                     "the Academy's Common LUT Format: ACES pipelines, Resolve, Nuke, OCIO configs"),
    "hald": LutFormat(".png", "image/png", None, 2 / 255,
                      "HaldCLUT picture: ffmpeg haldclut, ImageMagick -hald-clut, G'MIC, RawTherapee, darktable"),
}
assert set(FORMATS) == set(get_args(LutFormatName))
PHOTO_ENCODING = "sRGB-encoded RGB (the photo's own encoding)"
BY_SUFFIX: dict[str, LutFormatName] = {".cube": "cube", ".3dl": "3dl-flame", ".csp": "csp", ".spi3d": "spi3d",
                                       ".clf": "clf", ".png": "hald"}


def format_for_suffix(suffix: str) -> LutFormatName:
    """The format a file name's suffix asks for (``.cube``: the project's own; ``.3dl``: Flame's)."""
    try:
        return BY_SUFFIX[suffix.lower()]
    except KeyError:
        raise ValueError(f"cannot write a LUT as {suffix or 'a file without a suffix'}: use one of "
                         f"{', '.join(BY_SUFFIX)}") from None


def look_name(prompt: str, fallback: str = "clipdlut") -> str:
    """A look's words as a file-name stem (``warm golden hour film`` -> ``warm-golden-hour-film``; letters of any
    script kept), so that an application listing LUTs by file name tells looks apart."""
    stem = re.sub(r"[\W_]+", "-", unicodedata.normalize("NFKC", prompt).lower()).strip("-")[:48].strip("-")
    return stem or fallback


def file_name(stem: str, fmt: LutFormatName, size: int | None = None) -> str:
    """A download's name: ``stem``, the node count (or the flavour where two formats share a suffix), the suffix:
    ``warm-golden-hour-film_33.cube``."""
    tag = {"hald": "hald", "resolve-cube": f"{size or 'lut'}-resolve", "3dl-lustre": f"{size or 'lut'}-lustre"}
    return f"{stem}_{tag.get(fmt, size or 'lut')}{FORMATS[fmt].suffix}"


def convert(cube: str | bytes, fmt: LutFormatName, size: int | None = None, protect_skin: bool = False) -> bytes:
    """The delivered ``.cube`` as format ``fmt`` (a key of :data:`FORMATS`), its nodes resampled to ``size``
    when given (exact: trilinear evaluation, as every consumer applies it). ``protect_skin``: the LUT was made
    with skin protected, and a resampled one keeps skin's fences at its own size."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    parsed = read_cube(cube)
    table = parsed.normalized()
    if fmt == "hald":
        return write_hald(resampled(table, hald_level_for(parsed.size) ** 2, protect_skin))
    if size is not None and size != parsed.size:
        table = resampled(table, size, protect_skin)
        parsed = Cube(table, parsed.title, comments=[*parsed.comments,
                                                     f"resampled from {parsed.size} to {size} nodes"])
        if fmt == "cube":
            return write_cube(table, title=parsed.title or "CLIP-DLUT", comments=parsed.comments).encode("utf-8")
    elif fmt == "cube":
        return cube.encode("utf-8") if isinstance(cube, str) else cube  # (as delivered, to the last byte)
    return _by_ocio(table, FORMATS[fmt].ocio_name or "", parsed).encode("utf-8")


def resampled(table: np.ndarray, size: int, protect_skin: bool = False) -> np.ndarray:
    """``table`` evaluated at the nodes of a ``size``-node grid (:func:`clipdlut.lut.resample`, the one resampler:
    exact for 33 -> 65 and for every k-th node). ``protect_skin``: then held to skin's fences at ``size`` (a coarser
    grid mixes a skin colour from nodes farther away); pins hold still, the fences keeping the identity's values."""
    import torch  # (here: torch stays out of the CLI's apply path)

    from clipdlut import lut as lutmath
    from clipdlut import skin
    from clipdlut.safety import make_safe

    lut = lutmath.resample(lutmath.from_table(table).double(), size)
    if protect_skin:
        lut = make_safe(lut, fences=skin.fences(size, torch.float64))
    return lutmath.to_table(lut)


def _by_ocio(table: np.ndarray, name: str, parsed: Cube) -> str:
    import PyOpenColorIO as ocio  # (here: the CLI's apply path and its --help read this module's registry only)

    n = table.shape[0]
    lut = ocio.Lut3DTransform(gridSize=n)
    lut.setData(np.ascontiguousarray(table.transpose(2, 1, 0, 3), dtype=np.float32).ravel())  # OCIO: blue fastest
    lut.setInterpolation(ocio.INTERP_LINEAR)  # (trilinear, as Pillow and every .cube consumer apply it)
    config = ocio.Config()
    config.addColorSpace(ocio.ColorSpace(name="input"))
    graded = ocio.ColorSpace(name="graded")
    graded.setTransform(lut, ocio.COLORSPACE_DIR_FROM_REFERENCE)
    config.addColorSpace(graded)
    config.setRole(ocio.ROLE_SCENE_LINEAR, "input")
    if name == FORMATS["clf"].ocio_name:
        return _clf(lut, config, parsed)
    baker = ocio.Baker()
    baker.setConfig(config)
    baker.setFormat(name)
    baker.setInputSpace("input")
    baker.setTargetSpace("graded")
    baker.setCubeSize(n)
    return baker.bake()


def _clf(lut: Any, config: Any, parsed: Cube) -> str:
    """OCIO's CLF writer, with what the look was asked (its ``.cube`` comments) and the encodings it maps (the
    ``input:`` and ``output:`` comments of footage's LUTs; a photo's LUT maps sRGB to sRGB)."""
    import PyOpenColorIO as ocio

    group = ocio.GroupTransform()
    group.appendTransform(lut)
    meta = group.getFormatMetadata()
    meta.setName(parsed.title or "CLIP-DLUT")
    meta.setID("clipdlut")
    said = dict(line.split(": ", 1) for line in parsed.comments if line.startswith(("input: ", "output: ")))
    for line in parsed.comments:
        if not line.startswith(("input: ", "output: ")):
            meta.addChildElement("Description", line)
    meta.addChildElement("InputDescriptor", said.get("input", PHOTO_ENCODING))
    meta.addChildElement("OutputDescriptor", said.get("output", PHOTO_ENCODING))
    return group.write(formatName=FORMATS["clf"].ocio_name, config=config)
