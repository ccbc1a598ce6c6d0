"""Decoding user images safely and encoding results, with Pillow.

Decoding applies EXIF orientation, keeps alpha and an RGB ICC profile aside, converts every other mode
to 8-bit RGB, and refuses images that are too large before their pixels are decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class ImageError(ValueError):
    """The bytes are not an image this service can grade; the message says what to fix."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed."""


@dataclass
class DecodedImage:
    """An upright 8-bit RGB image plus what must survive into the output."""

    rgb: Image.Image
    alpha: Image.Image | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None  # the photo's EXIF (camera, lens, date, GPS), its orientation set upright as the pixels
    format: str | None = None  # Pillow's name of the format it came in ("JPEG", "PNG", ...)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size

    def kept(self) -> dict:
        """What a graded copy keeps of the photo, as :func:`encode_image`'s arguments."""
        return {"alpha": self.alpha, "icc_profile": self.icc_profile, "exif": self.exif}

    @property
    def own_format(self) -> str:
        """The output format that keeps the photo's own: a JPEG stays a JPEG (an MPO too: the JPEG with a
        multi-picture block many cameras and phones write), a WebP a WebP, others become PNG."""
        return {"JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}.get(self.format or "", "png")


def _profile_is_rgb(icc: bytes) -> bool:
    try:
        return ImageCms.getOpenProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "RGB"
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError):
        return False


def _high_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale (modes I;16*, I, F) scaled, not clipped, to 8 bits."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
    elif img.mode.startswith("I;16") or arr.size and arr.max() > 255:
        top = 65535.0
    else:
        top = 255.0
    grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image bytes (JPEG, PNG, WebP, TIFF, BMP, GIF: first frame) or raise :class:`ImageError`."""
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("the file is not an image this service can read: send a JPEG, PNG, WebP, TIFF or BMP photo"
                         ) from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has too many pixels; the limit is {max_pixels:,}") from None
    except Exception as e:
        raise ImageError(f"the image header is invalid: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"the image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLarge(f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
    icc = img.info.get("icc_profile")
    try:
        img.seek(0)  # animated GIF/WebP/APNG: the first frame
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # (in place: a 12 MP photo is not copied)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has too many pixels; the limit is {max_pixels:,}") from None
    except Exception as e:
        raise ImageError(f"the image data is truncated or corrupt: {e}") from None
    alpha = None
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        rgb = rgba.convert("RGB")
    elif img.mode == "CMYK" and icc and not _profile_is_rgb(icc):
        try:
            converted = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                                  ImageCms.createProfile("sRGB"), outputMode="RGB")
        except ImageCms.PyCMSError:
            converted = None
        rgb = converted or img.convert("RGB")
    elif img.mode.startswith("I") or img.mode == "F":
        rgb = _high_bit_to_rgb(img)
    else:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    if icc and not _profile_is_rgb(icc):
        icc = None  # a CMYK or grey profile does not describe the RGB output
    # (exif_transpose has set the EXIF's orientation upright, as it turned the pixels; a TIFF's tags are its own
    # structure, not a camera's EXIF block, and are not carried)
    return DecodedImage(rgb=rgb, alpha=alpha, icc_profile=icc, exif=img.info.get("exif") or None, format=img.format)


def working_copy(img: Image.Image, short_side: int = 288, max_long_side: int = 864) -> Image.Image:
    """A small copy for optimizing (short side ``short_side``, never upscaled, no padding)."""
    w, h = img.size
    scale = min(1.0, short_side / min(w, h), max_long_side / max(w, h))
    if scale >= 1.0:
        return img.copy()
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def thumbnail(img: Image.Image, max_side: int = 256) -> Image.Image:
    """A copy that fits in ``max_side`` x ``max_side`` (for previews)."""
    out = img.copy()
    out.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return out


def output_format(name: str) -> str:
    """Pillow's format name for ``png``/``jpeg``/``webp``; raises ``ValueError`` otherwise."""
    try:
        return OUTPUT_FORMATS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown image format {name!r}; use png, jpeg or webp") from None


def encode_image(rgb: Image.Image, fmt: str = "PNG", alpha: Image.Image | None = None,
                 icc_profile: bytes | None = None, quality: int = 95, png_level: int = 6,
                 exif: bytes | None = None) -> bytes:
    """Encode to PNG, JPEG or WebP, re-attaching alpha (not for JPEG), the ICC profile and the EXIF. The project's
    one image encoder (``png_level`` 1 for previews: quick, larger)."""
    fmt = output_format(fmt) if fmt.lower() in OUTPUT_FORMATS else fmt.upper()
    img = rgb
    if alpha is not None and fmt != "JPEG":
        img = rgb.copy()
        img.putalpha(alpha)
    params: dict = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    if exif:
        params["exif"] = exif
    if fmt == "JPEG":
        params.update(quality=quality, subsampling=0)
    elif fmt == "WEBP":
        params.update(quality=quality, method=4)
    elif fmt == "PNG":
        params.update(compress_level=png_level)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()
