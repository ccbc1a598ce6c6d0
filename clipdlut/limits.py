"""What a grading job may ask, checked alike by every interface (the native and the original HTTP API, the CLI, the
page): each limit lives here once, and each refusal states its rule. Imports nothing heavy (the CLI and the page's
limits endpoint read it without torch)."""

from __future__ import annotations

import unicodedata

MAX_PROMPT_CHARS = 200  # a prompt's characters after cleaning (Chinese-CLIP reads 52 tokens: ~50 Chinese characters)
MAX_PHOTOS = 16  # photos one job fits its LUT to (a series)
# A photo to grade (optimize a LUT on) must show CLIP something: each step takes square views of it, and the quality
# figures measure structure over 7 x 7 windows. Applying a LUT has no such limit (any photo, any shape).
MIN_SIDE = 16  # pixels on the short side
MAX_ASPECT = 16.0  # long side / short side: stitched panoramas (up to ~10:1) pass; strips and lines do not


class LimitError(ValueError):
    """A request outside one of the limits; the message names the field and states the rule."""


def clean_prompt(text: str, name: str = "prompt", max_chars: int = MAX_PROMPT_CHARS) -> str:
    """``text`` with control characters removed and whitespace collapsed; :class:`LimitError` if it is empty, has no
    letter or digit, or is longer than ``max_chars`` characters."""
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    cleaned = " ".join(cleaned.split())
    if not cleaned:
        raise LimitError(f"{name} is empty; describe the look in words, e.g. 温暖的金色黄昏")
    if len(cleaned) > max_chars:
        raise LimitError(f"{name} has {len(cleaned)} characters; the limit is {max_chars}")
    if not any(ch.isalnum() for ch in cleaned):
        raise LimitError(f"{name} has no words (only symbols or emoji); describe the look in words")
    return cleaned


def check_gradable(size: tuple[int, int], name: str = "the photo") -> None:
    """:class:`LimitError` unless a photo of ``size`` (width, height) can be graded: at least :data:`MIN_SIDE` pixels
    on its short side and at most :data:`MAX_ASPECT` times as long as it is wide (or the other way round)."""
    w, h = size
    short, long = min(w, h), max(w, h)
    if short < MIN_SIDE:
        raise LimitError(f"{name} is {w}x{h}: a photo to grade needs at least {MIN_SIDE} pixels on its short side")
    if long > MAX_ASPECT * short:
        raise LimitError(f"{name} is {w}x{h} ({long / short:.0f}:1): a photo to grade may be at most {MAX_ASPECT:g} "
                         f"times as long as it is wide; crop it (the LUT it gets can then be applied to the whole "
                         f"photo with /v1/apply or `clipdlut apply`)")
