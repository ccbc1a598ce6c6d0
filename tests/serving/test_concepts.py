"""The CLIP utility endpoints' work (clipdlut/serving/concepts.py)."""

import base64

import numpy as np
import pytest
from PIL import Image

from clipdlut.serving.concepts import SIDE, open_png, small_png, zero_shot
from clipdlut.serving.errors import InputError
from clipdlut.serving.settings import Settings
from tests.conftest import gradient_image, png_bytes

pytestmark = pytest.mark.unit


def test_an_upload_travels_small_and_comes_back_as_the_same_image():
    big = gradient_image(1200, 600)
    b64 = small_png("data:image/png;base64," + base64.b64encode(png_bytes(big)).decode(), Settings())
    img = open_png(b64)
    assert img.mode == "RGB" and max(img.size) == SIDE and img.size[0] == 2 * img.size[1]
    with pytest.raises(InputError, match="not valid base64"):
        small_png("%%%", Settings())


def test_zero_shot_is_a_softmax_of_the_scaled_cosines():
    image = np.array([1.0, 0.0])
    text = [[1.0, 0.0], [0.0, 1.0], [0.99, 0.141]]
    scores = zero_shot(["a", "b", "c"], text, image)
    assert scores.best == "a" and sum(scores.probabilities.values()) == pytest.approx(1.0)
    assert scores.probabilities["a"] / scores.probabilities["c"] == pytest.approx(np.exp(100 * 0.01))
    assert scores.probabilities["b"] < 1e-40
    assert isinstance(open_png(base64.b64encode(png_bytes(Image.new("L", (4, 4)))).decode()), Image.Image)
