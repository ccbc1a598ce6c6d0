"""Grading many photos (clipdlut/batch.py): names and formats, the process pool, one bad photo among good ones."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from clipdlut import batch
from clipdlut.imaging import encode_image
from clipdlut.lut import to_table
from clipdlut.render import pillow_lut
from tests.conftest import gradient_image, random_smooth_lut

pytestmark = pytest.mark.unit

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def folder_of_photos(folder: Path) -> dict[str, Image.Image]:
    """Photos in every format a folder may hold (one with alpha and an ICC profile), plus a file that is none."""
    folder.mkdir()
    photos = {f"p{i}{suffix}": gradient_image(90 + 7 * i, 60 + 5 * i, seed=i)
              for i, suffix in enumerate([".png", ".jpg", ".JPEG", ".webp", ".tif", ".bmp"])}
    for name, img in photos.items():
        img.save(folder / name, **({"quality": 97} if name.lower().endswith((".jpg", ".jpeg")) else {}))
    rgba = gradient_image(50, 40, seed=9).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((50, 40)))
    rgba.save(folder / "alpha.png", icc_profile=SRGB)
    photos["alpha.png"] = rgba
    (folder / "notes.txt").write_text("not a photo")
    (folder / "sub").mkdir()
    gradient_image().save(folder / "sub" / "deeper.png")
    return photos


def test_a_folder_is_its_photos_by_name_not_recursive(tmp_path):
    photos = folder_of_photos(tmp_path / "in")
    extra = tmp_path / "extra.jpg"
    gradient_image().save(extra)
    found = batch.photos_in([tmp_path / "in", extra])
    assert [p.name for p in found] == sorted(photos) + ["extra.jpg"]


def test_outputs_keep_names_and_formats_png_jpeg_webp_others_become_png(tmp_path):
    sources = [Path(f"in/{n}") for n in ("a.png", "b.jpg", "c.JPEG", "d.webp", "e.tif", "f.bmp")]
    tasks = batch.plan(sources, tmp_path / "out")
    assert [(t.target.name, t.fmt) for t in tasks] == [
        ("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.JPEG", "JPEG"), ("d.webp", "WEBP"), ("e.png", "PNG"),
        ("f.png", "PNG")]
    assert [(t.target.name, t.fmt) for t in batch.plan(sources[:3], tmp_path, "WEBP")] == [
        ("a.webp", "WEBP"), ("b.webp", "WEBP"), ("c.webp", "WEBP")]


def test_two_photos_writing_one_file_or_a_photo_overwritten_are_refused(tmp_path):
    with pytest.raises(ValueError, match="would both be written to"):
        batch.plan([tmp_path / "a.jpg", tmp_path / "b" / "a.jpg"], tmp_path / "out")
    with pytest.raises(ValueError, match="would both be written to"):
        batch.plan([tmp_path / "a.jpg", tmp_path / "a.png"], tmp_path / "out", "PNG")
    with pytest.raises(ValueError, match="would be overwritten"):
        batch.plan([tmp_path / "a.jpg"], tmp_path)


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_photo_equals_pillows_color3dlut_bit_for_bit(tmp_path, jobs):
    photos = folder_of_photos(tmp_path / "in")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    table = to_table(random_smooth_lut(17, 3))
    tasks = batch.plan(batch.photos_in([tmp_path / "in"]), tmp_path / "out")
    (tmp_path / "out").mkdir()
    outcomes = list(batch.grade_all(tasks, table, jobs=jobs))
    assert sorted(o.task.source.name for o in outcomes) == sorted([*photos, "broken.jpg"])
    failed = [o for o in outcomes if o.error is not None]
    assert [o.task.source.name for o in failed] == ["broken.jpg"] and "not an image" in str(failed[0].error)
    lut = pillow_lut(table)
    for task in (o.task for o in outcomes if o.error is None):
        original = Image.open(task.source)
        expected = original.convert("RGB").filter(lut)
        written = task.target.read_bytes()
        out = Image.open(io.BytesIO(written))
        if task.fmt in ("JPEG", "WEBP"):  # lossy: the same pixels encoded as the project encodes, the same bytes
            assert written == encode_image(expected, task.fmt), task.source.name
        else:
            assert out.convert("RGB").tobytes() == expected.tobytes(), task.source.name
    alpha = Image.open(tmp_path / "out" / "alpha.png")
    assert alpha.mode == "RGBA" and alpha.getchannel("A").tobytes() == photos["alpha.png"].getchannel("A").tobytes()
    assert alpha.info.get("icc_profile") == SRGB


def test_one_photo_on_every_core_equals_one_filter_call(tmp_path):
    src, out = tmp_path / "big.png", tmp_path / "big-out.png"
    img = gradient_image(300, 1100, seed=4)  # tall enough to be cut in strips
    img.save(src)
    table = to_table(random_smooth_lut(33, 8))
    batch.grade_file(batch.Task(src, out, "PNG"), table, threads=None)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(img.filter(pillow_lut(table))))
