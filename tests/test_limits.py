"""The limits of a job (clipdlut/limits.py), and every interface applying them alike: the native and the original
HTTP API, the CLI, the limits the page reads, the README."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdlut import cli, limits
from tests.conftest import png_bytes, wait

ROOT = Path(__file__).resolve().parent.parent
# shapes the chaos probe sent: each ran every step, then failed with an internal error in the quality figures
ODD_SHAPES = [(1, 50000), (50000, 1), (400, 7), (4000, 100), (3000, 100)]


def stripes(w: int, h: int) -> Image.Image:
    """A colourful photo of any shape."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.unit
@pytest.mark.parametrize("size,gradable", [((16, 16), True), ((16, 256), True), ((256, 16), True), ((15, 100), False),
                                           ((16, 257), False), ((6000, 375), True), ((6000, 374), False)])
def test_a_photo_to_grade_has_a_short_side_and_a_shape_it_can_be_graded_by(size, gradable):
    if gradable:
        limits.check_gradable(size)
    else:
        with pytest.raises(limits.LimitError, match=rf"the photo is {size[0]}x{size[1]}"):
            limits.check_gradable(size)


@pytest.mark.unit
def test_prompts_are_cleaned_and_limited():
    assert limits.clean_prompt(" 暖色\x00调\n\t胶片 ") == "暖色 调 胶片"
    assert limits.clean_prompt("x" * limits.MAX_PROMPT_CHARS) == "x" * limits.MAX_PROMPT_CHARS
    assert limits.clean_prompt("  a   b  " + " " * 300) == "a b"  # (counted after cleaning)
    with pytest.raises(limits.LimitError, match=f"has 201 characters; the limit is {limits.MAX_PROMPT_CHARS}"):
        limits.clean_prompt("x" * 201, "target_prompt")


def _refusal_on_the_cli(tmp_path: Path, capsys, *args: str) -> str:
    assert cli.main(["retouch", *args, "-o", str(tmp_path / "x.cube"), "--model", "tiny"]) == cli.EXIT_FAILED
    return capsys.readouterr().err.strip()


@pytest.mark.http
@pytest.mark.parametrize("size", ODD_SHAPES)
def test_photos_that_cannot_be_graded_are_refused_alike_before_any_step(client, tmp_path, capsys, size):
    """The native and the original API answer 400 at submit, stating the rule; the CLI refuses the same photo with
    the same words, before it loads a model."""
    data = png_bytes(stripes(*size))
    image = base64.b64encode(data).decode()
    native = client.post("/v1/retouch/submit", json={"image": image, "target_prompt": "复古胶片", "steps": 2})
    original = client.post("/retouch", json={"image": image, "target_prompt": "复古胶片", "iteration": 2})
    (tmp_path / "odd.png").write_bytes(data)
    on_the_cli = _refusal_on_the_cli(tmp_path, capsys, str(tmp_path / "odd.png"), "--prompt", "复古胶片")
    rule = f"is {size[0]}x{size[1]}"
    for r in (native, original):
        assert r.status_code == 400, r.text
        assert rule in r.json()["error"] and "a photo to grade" in r.json()["error"]
    assert on_the_cli.startswith(f"error: {tmp_path / 'odd.png'} {rule}")
    assert on_the_cli.split(rule)[1] == original.json()["error"].split(rule)[1] == native.json()["error"].split(rule)[1]


@pytest.mark.http
def test_photos_at_the_limits_are_graded_with_their_quality_figures(client):
    """The thinnest and the longest photos accepted finish, with every quality figure (SSIM on a copy wide enough)."""
    for size in ((limits.MIN_SIDE, int(limits.MIN_SIDE * limits.MAX_ASPECT)), (4000, 250)):
        image = base64.b64encode(png_bytes(stripes(*size))).decode()
        task_id = client.post("/retouch", json={"image": image, "target_prompt": "复古胶片", "iteration": 2}
                              ).json()["task_id"]
        progress = wait(lambda: (p := client.post("/v1/progress", json={"task_id": task_id}).json())["status"]  # noqa: B023
                        in ("finished", "failed", "cancelled") and p)
        assert progress["status"] == "finished", progress
    native = client.post("/v1/retouch/submit", json={"image": image, "target_prompt": "复古胶片", "steps": 2}).json()
    wait(lambda: client.get("/v1/retouch/status", params={"task_id": native["task_id"]}).json()["status"]
         != "in_progress")
    quality = client.get("/v1/retouch/get", params={"task_id": native["task_id"]}).json()["quality"]
    assert 0 < quality["ssim"] <= 1 and quality["note"] is None and quality["safe"]


@pytest.mark.http
def test_one_prompt_limit_on_every_interface(client, tmp_path, capsys):
    """The native API, the original API, the CLI utilities and the CLI refuse a prompt one character over the limit
    in the same words; the page reads the limit from /v1/limits; the README states the same number."""
    over = "x" * (limits.MAX_PROMPT_CHARS + 1)
    image = base64.b64encode(png_bytes(stripes(64, 48))).decode()
    words = f"has {limits.MAX_PROMPT_CHARS + 1} characters; the limit is {limits.MAX_PROMPT_CHARS}"
    answers = [client.post("/v1/retouch/submit", json={"image": image, "target_prompt": over}),
               client.post("/v1/retouch/submit", json={"image": image, "target_prompt": "x", "source_prompt": over}),
               client.post("/retouch", json={"image": image, "target_prompt": over}),
               client.post("/v1/embed_text", json={"prompts": [over]})]
    for r in answers:
        assert r.status_code == 400 and words in r.json()["error"], r.text
    stripes(64, 48).save(tmp_path / "photo.png")
    assert words in _refusal_on_the_cli(tmp_path, capsys, str(tmp_path / "photo.png"), "--prompt", over)
    served = client.post("/v1/limits").json()
    assert served["max_prompt_chars"] == limits.MAX_PROMPT_CHARS and served["max_photos"] == limits.MAX_PHOTOS
    assert (served["min_side"], served["max_aspect"]) == (limits.MIN_SIDE, limits.MAX_ASPECT)
    readme = (ROOT / "README.md").read_text()
    assert f"| prompts | 1-{limits.MAX_PROMPT_CHARS} characters" in readme
    assert f"`CLIPDLUT_MAX_PROMPT_CHARS` | {limits.MAX_PROMPT_CHARS} |" in readme
    page = (ROOT / "clipdlut" / "serving" / "web" / "index.html").read_text()
    assert not re.search(r"maxlength=", page)  # (the page takes the limit from /v1/limits, not from a copy)
