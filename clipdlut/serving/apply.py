"""``/v1/apply``: a client's LUT file (``.cube`` or HaldCLUT PNG) applied to a client's image, at a strength."""

from __future__ import annotations

from clipdlut.cube import CubeError, read_cube
from clipdlut.hald import LutImageError, read_hald
from clipdlut.imaging import encode_image, output_format
from clipdlut.render import apply_table
from clipdlut.serving.errors import InputError
from clipdlut.serving.settings import Settings
from clipdlut.serving.validation import check_strength, decode_upload
from clipdlut.table import blend_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def apply_upload(image: bytes, lut: bytes, strength: float, image_format: str | None,
                 settings: Settings) -> tuple[bytes, str]:
    """The graded image, encoded, and its format (``png``, ``jpeg`` or ``webp``: ``image_format``, else the photo's
    own, as a job's result is); :class:`InputError` naming what is wrong with either file or the options."""
    check_strength(strength)
    chosen = None if image_format is None else output_format(image_format)  # (refused before decoding)
    decoded = decode_upload(image, settings)
    try:
        table = read_hald(lut) if lut[:8] == PNG_SIGNATURE else read_cube(lut).normalized()
    except (CubeError, LutImageError) as e:
        raise InputError(f"the LUT file cannot be used: {e}") from None
    graded = apply_table(decoded.rgb, blend_table(table, strength))
    fmt = decoded.own_format if chosen is None else chosen.lower()  # (png, jpeg or webp)
    return encode_image(graded, fmt, **decoded.kept()), fmt
