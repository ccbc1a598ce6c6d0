import argparse
import os
import subprocess
import sys
import typing

import numpy as np
import pytest
from PIL import Image

from clipdlut import lut as L
from clipdlut import skin
from clipdlut.cube import read_cube
from clipdlut.formats import convert
from clipdlut.hald import write_hald
from clipdlut.render import apply_table
from clipdlut.safety import measure
from tests.conftest import camera_jpeg, gradient_image, kept_exif

pytestmark = pytest.mark.unit


def cli(*args, model="tiny"):
    env = {**os.environ, "CLIPDLUT_CLIP_MODEL": model, "HF_ENDPOINT": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "clipdlut", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_retouch_writes_cube_and_image(tmp_path):
    src = tmp_path / "photo.png"
    gradient_image(160, 120).save(src)
    out = cli("retouch", src, "--prompt", "温暖的金色黄昏胶片", "--steps", "12", "--lut-size", "17",
              "--seed", "3", "-o", tmp_path / "look.cube", "--image", tmp_path / "graded.jpg")
    assert out.returncode == 0, out.stderr
    cube = read_cube((tmp_path / "look.cube").read_bytes())
    assert cube.size == 17 and cube.title == "温暖的金色黄昏胶片"
    graded = Image.open(tmp_path / "graded.jpg")
    assert graded.size == (160, 120) and graded.format == "JPEG"
    assert "CLIP similarity" in out.stdout and "step" in out.stderr  # the progress bar ran
    pinned = cli("retouch", src, "--prompt", "黑白照片", "--steps", "12", "--lut-size", "17", "--strength", "1.9",
                 "--keep-blacks", "--keep-whites", "-o", tmp_path / "pinned.cube")
    assert pinned.returncode == 0, pinned.stderr
    table = read_cube((tmp_path / "pinned.cube").read_bytes()).table
    assert table[0, 0, 0].tolist() == [0, 0, 0] and table[-1, -1, -1].tolist() == [1, 1, 1]
    assert measure(L.from_table(table)).safe
    assert "skin tones: hue moved at most" in out.stdout
    kept = cli("retouch", src, "--prompt", "赛博朋克风格的夜晚城市", "--steps", "12", "--lut-size", "17", "--strength",
               "1.9", "--protect-skin", "-o", tmp_path / "skin.cube")
    assert kept.returncode == 0 and "skin tones (protected)" in kept.stdout, kept.stderr
    f = skin.figures(read_cube((tmp_path / "skin.cube").read_bytes()).normalized())
    assert f.hue_shift <= skin.HUE_DEGREES and f.delta_e <= skin.DELTA_E


def test_retouch_writes_the_lut_format_its_output_names(tmp_path):
    """The suffix picks the format (clipdlut/formats.py); --lut-format the flavour where two share one."""
    src = tmp_path / "photo.png"
    gradient_image(64, 48).save(src)
    common = ["--prompt", "冷色调", "--steps", "2", "--lut-size", "17", "--seed", "1"]
    assert cli("retouch", src, *common, "-o", tmp_path / "look.cube").returncode == 0
    cube = (tmp_path / "look.cube").read_bytes()
    for name, fmt in (("look.clf", "clf"), ("look.3dl", "3dl-flame"), ("look.png", "hald")):
        out = cli("retouch", src, *common, "-o", tmp_path / name)
        assert out.returncode == 0, out.stderr
        assert (tmp_path / name).read_bytes() == convert(cube, fmt), name  # (the same look: a fixed seed)
    out = cli("retouch", src, *common, "--lut-format", "3dl-lustre", "-o", tmp_path / "lustre.3dl")
    assert out.returncode == 0 and (tmp_path / "lustre.3dl").read_text().startswith("3DMESH"), out.stderr


def test_retouch_grades_a_log_frame_as_the_display_shows_it(tmp_path):
    """--input-space (clipdlut/viewing.py): the .cube maps the log frame to the graded display image, and says so;
    the written photo is that LUT on the frame."""
    from clipdlut.render import pillow_lut
    from clipdlut.viewing import open_viewing

    viewing = open_viewing("V-Log V-Gamut")
    photo = np.asarray(gradient_image(96, 64)) / 255.0
    frame = Image.fromarray(np.round(viewing.from_display(photo) * 255).astype(np.uint8))
    frame.save(tmp_path / "frame.png")
    out = cli("retouch", tmp_path / "frame.png", "--prompt", "冷色调", "--steps", "2", "--lut-size", "17",
              "--input-space", "V-Log V-Gamut", "-o", tmp_path / "show.cube", "--image", tmp_path / "graded.png")
    assert out.returncode == 0, out.stderr
    cube = read_cube((tmp_path / "show.cube").read_bytes())
    assert "input: V-Log V-Gamut (studio-config" in cube.comments[-2] and "sRGB - Display" in cube.comments[-1]
    graded = Image.open(tmp_path / "graded.png").convert("RGB")
    assert graded.tobytes() == frame.filter(pillow_lut(cube.table)).tobytes()
    assert np.abs(np.asarray(graded) / 255.0 - photo).mean() < 0.05  # (the display rendering, barely graded)


def test_apply_reads_cube_and_hald(tmp_path):
    src = tmp_path / "photo.png"
    img = gradient_image()
    img.save(src)
    table = L.to_table(L.identity(16))[..., [2, 1, 0]]  # swap red and blue
    (tmp_path / "swap.png").write_bytes(write_hald(table))
    out = cli("apply", tmp_path / "swap.png", src, "-o", tmp_path / "out.png", "--cube", tmp_path / "swap.cube")
    assert out.returncode == 0, out.stderr
    result = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    assert np.abs(result - np.asarray(img)[..., ::-1]).max() <= 1
    out = cli("apply", tmp_path / "swap.cube", src, "-o", tmp_path / "half.png", "--strength", "0.5")
    assert out.returncode == 0, out.stderr
    expected = apply_table(img, read_cube((tmp_path / "swap.cube").read_text()).table * 0.5
                           + L.to_table(L.identity(16)) * 0.5)
    assert Image.open(tmp_path / "half.png").tobytes() == expected.tobytes()
    data, exif = camera_jpeg(img)
    (tmp_path / "IMG_1234.jpg").write_bytes(data)
    out = cli("apply", tmp_path / "swap.cube", tmp_path / "IMG_1234.jpg", "-o", tmp_path / "graded.jpg")
    assert out.returncode == 0, out.stderr
    assert kept_exif((tmp_path / "graded.jpg").read_bytes()) == {**exif, "orientation": 1}  # (the camera's EXIF)


def test_retouch_a_series_with_a_reference_refined_then_in_black_and_white(tmp_path):
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    for i in range(3):
        gradient_image(120 + 20 * i, 90, i).save(shoot / f"p{i}.png")
    Image.fromarray((np.asarray(gradient_image(100, 100, 9)) * [1.0, 0.7, 0.4]).astype(np.uint8)).save(
        tmp_path / "ref.png")
    out = cli("retouch", shoot, "--reference", tmp_path / "ref.png", "--steps", "10", "--lut-size", "17",
              "-o", tmp_path / "series.cube", "--image", tmp_path / "graded")
    assert out.returncode == 0, out.stderr
    cube = read_cube((tmp_path / "series.cube").read_bytes())
    assert "one LUT for a series of 3 photos" in cube.comments and "aimed at a reference photo" in cube.comments
    for i in range(3):  # each graded photo: Pillow's Color3DLUT of the written .cube
        expected = apply_table(Image.open(shoot / f"p{i}.png").convert("RGB"), cube.table)
        assert Image.open(tmp_path / "graded" / f"p{i}.png").convert("RGB").tobytes() == expected.tobytes()
    refined = cli("retouch", shoot / "p0.png", "--prompt", "更暖一点", "--start-from", tmp_path / "series.cube",
                  "--steps", "1", "--lut-size", "17", "-o", tmp_path / "warmer.cube")
    assert refined.returncode == 0, refined.stderr
    warmer = read_cube((tmp_path / "warmer.cube").read_bytes())
    assert "refined from series.cube" in warmer.comments and np.abs(warmer.table - cube.table).max() < 0.02
    bw = cli("retouch", shoot / "p1.png", "--prompt", "黑白照片", "--mode", "bw", "--strength", "0.5", "--steps", "6",
             "--lut-size", "17", "-o", tmp_path / "bw.cube")
    assert bw.returncode == 0, bw.stderr
    rows = [line.split() for line in (tmp_path / "bw.cube").read_text().splitlines() if line[:1].isdigit()]
    assert len(rows) == 17**3 and all(r == g == b for r, g, b in rows)


@pytest.mark.parametrize("args,message", [
    (["retouch", "{tmp}/photo.png", "-o", "{tmp}/x.cube"], "--prompt, --reference, or both"),
    (["retouch", "{tmp}/photo.png", "{tmp}/photo.png", "--prompt", "x", "-o", "{tmp}/x.cube", "--image",
      "{tmp}/x.png"], "written into a folder"),
    (["apply", "{tmp}/photo.png", "{tmp}/photo.png", "-o", "{tmp}/x.png"], "a Hald image is square"),
    (["apply", "{tmp}/missing.cube", "{tmp}/photo.png", "-o", "{tmp}/x.png"], "No such file"),
    (["apply", "{tmp}/bad.cube", "{tmp}/photo.png", "-o", "{tmp}/x.png"], "line 2: table row"),
    (["apply", "{tmp}/bad.cube", "{tmp}/photo.png", "-o", "{tmp}/x.gif"], "use a .png, .jpg or .webp"),
    (["retouch", "{tmp}/bad.cube", "--prompt", "x", "-o", "{tmp}/x.cube"], "not an image"),
    (["retouch", "{tmp}/photo.png", "--prompt", "x", "--view", "Raw", "-o", "{tmp}/x.cube"], "add --input-space"),
    (["retouch", "{tmp}/photo.png", "--prompt", "x", "--input-space", "Apple Log", "--start-from", "{tmp}/x.cube",
      "-o", "{tmp}/x.cube"], "footage (--input-space) starts from the identity"),
    (["retouch", "{tmp}/photo.png", "--prompt", "x", "--input-space", "Raw", "-o", "{tmp}/x.cube"], "is data"),
    (["retouch", "{tmp}/photo.png", "--prompt", "x", "--lut-format", "3dl-lustre", "-o", "{tmp}/x.cube"],
     "--lut-format 3dl-lustre writes .3dl files: name the output x.3dl"),
    (["retouch", "{tmp}/photo.png", "--prompt", "x", "--mode", "bw", "--protect-skin", "-o", "{tmp}/x.cube"],
     "a black-and-white look removes it"),
    (["retouch", "{tmp}/photo.png", "--prompt", "x", "--input-space", "Apple Log", "--display", "Display P3 - Display",
      "--protect-skin", "-o", "{tmp}/x.cube"], "grade for an sRGB or Rec.709 display"),
])
def test_errors_are_one_clear_line(tmp_path, args, message):
    gradient_image().save(tmp_path / "photo.png")
    (tmp_path / "bad.cube").write_text("LUT_3D_SIZE 2\n0 0 x\n")
    out = cli(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr


def test_missing_weights_is_one_line(tmp_path):
    gradient_image().save(tmp_path / "photo.png")
    out = cli("retouch", tmp_path / "photo.png", "--prompt", "x", "-o", tmp_path / "x.cube", model="ViT-B-16")
    assert out.returncode == 1 and "CLIPDLUT_WEIGHTS_DIR" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_cli_offers_the_lut_sizes_the_service_does():
    from clipdlut.cli import _lut_size
    from clipdlut.serving.schemas import LutSize
    from clipdlut.table import OFFERED_SIZES

    assert typing.get_args(LutSize) == OFFERED_SIZES and [_lut_size(str(n)) for n in OFFERED_SIZES] == [17, 33, 65]
    for bad in ("2", "32", "66"):
        with pytest.raises(argparse.ArgumentTypeError, match="one of 17, 33, 65"):
            _lut_size(bad)


def test_apply_grades_photos_and_folders_into_a_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photos = {f"p{i}.png": gradient_image(80, 60, seed=i) for i in range(3)}
    for name, img in photos.items():
        img.save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not a JPEG")
    loose = tmp_path / "loose.png"
    gradient_image(50, 40, seed=7).save(loose)
    table = L.to_table(L.identity(16))[..., [2, 1, 0]]
    (tmp_path / "swap.png").write_bytes(write_hald(table))
    out = cli("apply", tmp_path / "swap.png", folder, loose, "-o", tmp_path / "out" / "graded", "--jobs", "2")
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0].startswith(f"error: {folder / 'broken.jpg'}: ") and "1 of 5" in errors[1]
    assert "wrote 4 of 5 photos" in out.stdout
    for name, img in [*photos.items(), ("loose.png", Image.open(loose))]:
        assert Image.open(tmp_path / "out" / "graded" / name).tobytes() == apply_table(img, table).tobytes()
    (tmp_path / "webp").mkdir()  # one photo into a folder that exists
    webp = cli("apply", tmp_path / "swap.png", loose, "-o", tmp_path / "webp", "--format", "webp", "-q")
    assert webp.returncode == 0 and Image.open(tmp_path / "webp" / "loose.webp").format == "WEBP"
    assert webp.stderr == ""  # -q: no progress bar


@pytest.mark.parametrize("inputs,output,message", [
    (["{tmp}/photo.png", "{tmp}/photo.png"], "{tmp}/x.png", "is a file name"),
    (["{tmp}/clip.mp4", "{tmp}/photo.png"], "{tmp}/out", "a video is graded on its own"),
    (["{tmp}/clip.mp4"], "{tmp}/x.png", "a video is written to a video file"),
    (["{tmp}/empty"], "{tmp}/out", "no photos"),
])
def test_apply_refuses_what_it_cannot_do_in_one_line(tmp_path, inputs, output, message):
    gradient_image().save(tmp_path / "photo.png")
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "id.cube").write_text("LUT_3D_SIZE 2\n" + "0 0 0\n1 0 0\n0 1 0\n1 1 0\n0 0 1\n1 0 1\n0 1 1\n1 1 1\n")
    paths = [i.format(tmp=tmp_path) for i in inputs]
    out = cli("apply", tmp_path / "id.cube", *paths, "-o", output.format(tmp=tmp_path))
    assert out.returncode == 1 and out.stderr.strip().startswith("error: ") and message in out.stderr, out.stderr
