"""Checking what a client sends (clipdlut/serving/validation.py): images, prompts and job options."""

import base64

import pytest

from clipdlut.serving.errors import InputError, PayloadTooLarge
from clipdlut.serving.jobs import JobOptions
from clipdlut.serving.settings import Settings
from clipdlut.serving.validation import b64decode_image, clean_prompt, decode_upload, validate_options
from tests.conftest import gradient_image, png_bytes

pytestmark = pytest.mark.unit
PNG = png_bytes(gradient_image())


@pytest.mark.parametrize("text", [
    base64.b64encode(PNG).decode(),
    "data:image/png;base64," + base64.b64encode(PNG).decode(),
    "DATA:image/png;charset=x;base64," + base64.b64encode(PNG).decode(),
    base64.b64encode(PNG).decode().rstrip("="),  # missing padding is tolerated
    "\n".join(base64.b64encode(PNG).decode()[i:i + 76] for i in range(0, len(base64.b64encode(PNG)), 76)),
])
def test_base64_variants(text):
    data = b64decode_image(text)
    assert data[:8] == PNG[:8]


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("%%%not base64%%%", "not valid base64"),
    ("data:text/plain;base64,aGVsbG8=", "holds text/plain, not an image"),
    ("data:image/png,rawdata", "must be base64-encoded"),
])
def test_bad_base64(text, message):
    with pytest.raises(InputError, match=message):
        b64decode_image(text)


def test_prompts_are_cleaned_and_limited():
    assert clean_prompt(" 暖色\x00调\n\t胶片 ", "p", 50) == "暖色 调 胶片"
    assert clean_prompt("夕阳🌅🌇", "p", 50) == "夕阳🌅🌇"
    with pytest.raises(InputError, match="no words"):
        clean_prompt("🌅🌇 !!", "target_prompt", 50)
    with pytest.raises(InputError, match="empty"):
        clean_prompt("\x01\x02  ", "target_prompt", 50)
    with pytest.raises(InputError, match="10000 characters; the limit is 200"):
        clean_prompt("a" * 10_000, "target_prompt", 200)


def test_option_limits():
    s = Settings()
    assert validate_options(JobOptions(target_prompt="x"), s).steps == 200
    for change, message in [({"steps": 0}, "steps"), ({"lut_size": 20}, "lut_size"), ({"strength": 3}, "strength"),
                            ({"image_format": "gif"}, "gif")]:
        bad = JobOptions(target_prompt="x", **change)
        with pytest.raises(InputError, match=message):
            validate_options(bad, s)


def test_upload_limits():
    s = Settings(max_pixels=1000, max_body_mb=0.001)
    with pytest.raises(PayloadTooLarge, match="MB"):
        decode_upload(PNG * 10, s)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_upload(PNG, Settings(max_pixels=1000))
    with pytest.raises(InputError, match="not an image"):
        decode_upload(b"hello", Settings())
