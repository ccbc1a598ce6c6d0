"""``python -m clipdlut eval`` (clipdlut/evaluation.py): the report a user reads to compare models and settings."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from clipdlut import evaluation, skin

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_the_photos_and_prompts_are_real_and_varied():
    photos = {name: load() for name, load in evaluation.IMAGES.items()}
    assert len(photos) >= 5 and all(min(p.size) >= 256 and p.mode == "RGB" for p in photos.values())
    kinds = {p.kind for p in evaluation.PROMPTS}
    assert len(evaluation.PROMPTS) >= 12 and {"warm", "cool", "film", "time of day", "black and white", "mood"} <= kinds
    assert any(ord(c) > 0x4E00 for p in evaluation.PROMPTS for c in p.text)  # Chinese prompts
    assert any(p.text.isascii() for p in evaluation.PROMPTS)  # and English ones
    sky = photos["sky"]
    column = [sky.getpixel((10, y)) for y in range(sky.height)]
    assert all(all(x <= y for x, y in zip(a, b)) for a, b in zip(column, column[1:]))  # a ramp, every channel


@pytest.mark.e2e
def test_make_eval_writes_its_table_and_contact_sheet_on_tiny(tmp_path):
    """What `make eval` runs, on the tiny model: every photo with every prompt, a table and a contact sheet."""
    r = subprocess.run([sys.executable, "-m", "clipdlut", "eval", "--model", "tiny", "--steps", "12", "--batch", "12",
                        "-q", "-o", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (tmp_path / "eval.md").read_text(encoding="utf-8")
    main, skin_part = table.split("## Skin tones")
    rows = [line for line in main.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == len(evaluation.PROMPTS) + 1
    jobs = len(evaluation.IMAGES) * len(evaluation.PROMPTS)
    assert rows[-1].startswith("| all |") and f"| {jobs}/{jobs} |" in rows[-1]  # every LUT safe
    for prompt in evaluation.PROMPTS:
        assert prompt.text in table
    skin_rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in skin_part.splitlines()
                 if line.startswith("| ") and not line.startswith("| photo")}
    assert list(skin_rows) == list(evaluation.SKIN_PHOTOS)
    assert skin_rows["astronaut"][2] != "none"  # (a face)
    for row in skin_rows.values():
        protected = float(row[3].split("→")[1].strip(" °")), float(row[4].split("→")[1])
        assert protected[0] <= skin.HUE_DEGREES and protected[1] <= skin.DELTA_E, row
    sheet = Image.open(tmp_path / "contact-sheet.png")
    assert sheet.width > len(evaluation.IMAGES) * 100 and sheet.height > (len(evaluation.PROMPTS) + 1) * 100


@pytest.mark.unit
def test_an_unknown_photo_is_refused_with_the_choices(tmp_path):
    r = subprocess.run([sys.executable, "-m", "clipdlut", "eval", "--model", "tiny", "--images", "moon", "-o",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "moon" in r.stderr and "astronaut" in r.stderr
