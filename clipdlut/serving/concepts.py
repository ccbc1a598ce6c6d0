"""The CLIP utility endpoints' work (embeddings and zero-shot concepts): uploads made small before they travel
to the optimizer, decoded there, and concept scores from the embeddings that come back."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from clipdlut.imaging import encode_image
from clipdlut.serving.schemas import ConceptScores
from clipdlut.serving.settings import Settings
from clipdlut.serving.validation import b64decode_image, decode_upload

LOGIT_SCALE = 100.0  # the scale CLIP's image-text logits are trained to (Chinese-CLIP keeps it): sharp softmax
SIDE = 448  # the CLIP models see at most 336 px: a larger copy would only cost transfer


def small_png(image_b64: str, settings: Settings) -> str:
    """An uploaded image (base64 or data URL) checked like any upload, shrunk, as base64 PNG."""
    img = decode_upload(b64decode_image(image_b64), settings).rgb
    img.thumbnail((SIDE, SIDE), Image.Resampling.BICUBIC)
    return base64.b64encode(encode_image(img)).decode()


def open_png(data_b64: str) -> Image.Image:
    """An image :func:`small_png` made, on the optimizer's side."""
    return Image.open(io.BytesIO(base64.b64decode(data_b64))).convert("RGB")


def zero_shot(concepts: Sequence[str], text: Sequence[Sequence[float]], image: Sequence[float]) -> ConceptScores:
    """How well each concept describes the image: a softmax over the unit-norm embeddings' logits."""
    logits = LOGIT_SCALE * np.asarray(text) @ np.asarray(image)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return ConceptScores(probabilities=dict(zip(concepts, p.tolist())), best=concepts[int(p.argmax())])
