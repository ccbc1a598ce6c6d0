"""Grading a video (clipdlut/video.py) with the real ffmpeg binary imageio-ffmpeg ships: its frames against Pillow's
``Color3DLUT`` on the same decoded frames, the audio, the filter graph's escaping, the errors."""

import os
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from skimage import data

from clipdlut.cube import write_cube
from clipdlut.lut import to_table
from clipdlut.render import pillow_lut
from clipdlut.table import blend_table, identity_table
from clipdlut.video import escape_filter_value, ffmpeg, grade_video, probe
from tests.conftest import random_smooth_lut

pytestmark = pytest.mark.unit

W, H, FPS, SECONDS = 320, 240, 25, 2
# In RGB, ffmpeg's frames are Pillow's to one level (its float arithmetic against Pillow's fixed point), and equal
# for all but a few percent of the values (1.4% measured): README, "Applying a LUT to many photos or a video".
MAX_LEVELS, MAX_SHARE_DIFFERENT = 1, 0.05


def frames() -> list[np.ndarray]:
    """Two seconds of a real photo panning sideways."""
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((W, H), Image.Resampling.BICUBIC))
    return [np.roll(photo, 5 * i, axis=1) for i in range(FPS * SECONDS)]


def encode(path: Path, codec: list[str], audio: list[str]) -> Path:
    """Our frames as a video with a 440 Hz sine for sound."""
    cmd = [ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{W}x{H}", "-r", str(FPS), "-i", "-", "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}",
           *codec, *audio, "-shortest", str(path)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames()), check=True, timeout=120)
    return path


def decoded(path: Path) -> np.ndarray:
    """Every frame as 8-bit RGB (ffmpeg's own conversion from the stream's pixel format)."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    assert tuple(meta["size"]) == (W, H)
    return np.stack([np.frombuffer(f, np.uint8).reshape(H, W, 3) for f in reader])


def pcm(path: Path) -> bytes:
    r = subprocess.run([ffmpeg(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0:a", "-f", "s16le",
                        "-"], capture_output=True, check=True, timeout=60)
    return r.stdout


def pillow(video_frames: np.ndarray, table: np.ndarray) -> np.ndarray:
    lut = pillow_lut(table)
    return np.stack([np.asarray(Image.fromarray(f).filter(lut)) for f in video_frames])


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "clipdlut", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def rgb_video(tmp_path_factory) -> Path:
    """Lossless RGB frames (H.264 RGB at QP 0) and FLAC audio in Matroska."""
    return encode(tmp_path_factory.mktemp("video") / "rgb.mkv", ["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"],
                  ["-c:a", "flac"])


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory) -> Path:
    """What a phone or camera writes: H.264 4:2:0 and AAC in MP4."""
    return encode(tmp_path_factory.mktemp("video") / "clip.mp4",
                  ["-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p"], ["-c:a", "aac"])


@pytest.mark.parametrize("strength", [1.0, 2.0])  # 2: the table leaves [0, 1]; ffmpeg and Pillow both clip the output
def test_lossless_frames_are_pillows_to_one_level(tmp_path, rgb_video, strength):
    table = to_table(random_smooth_lut(33, 5))
    cube = tmp_path / "look.cube"
    cube.write_text(write_cube(table))
    out = cli("apply", cube, rgb_video, "-o", tmp_path / "graded.mkv", "--lossless", "--strength", strength)
    assert out.returncode == 0, out.stderr
    assert "100%" in out.stderr  # the progress bar reached the end
    source, graded = decoded(rgb_video), decoded(tmp_path / "graded.mkv")
    assert len(graded) == len(source) == FPS * SECONDS
    diff = np.abs(pillow(source, blend_table(table, strength)).astype(int) - graded.astype(int))
    assert diff.max() <= MAX_LEVELS and (diff > 0).mean() < MAX_SHARE_DIFFERENT
    assert pcm(tmp_path / "graded.mkv") == pcm(rgb_video)


def test_an_identity_lut_gives_the_frames_back_exactly(tmp_path, rgb_video):
    grade_video(rgb_video, tmp_path / "same.mkv", identity_table(17), lossless=True)
    assert np.array_equal(decoded(tmp_path / "same.mkv"), decoded(rgb_video))


def test_a_camera_video_keeps_its_format_and_sound_and_matches_pillow_up_to_the_codec(tmp_path, camera_video):
    """Default settings: H.264 CRF 16 in the input's 4:2:0, the audio copied. Against Pillow on the decoded input
    frames the difference is mostly the 4:2:0 re-encode's own (an identity LUT shows it: mean absolute levels)."""
    gentle = to_table(random_smooth_lut(33, 2, amount=0.1))
    source = decoded(camera_video)
    errors = {}
    for name, table in (("identity", identity_table(33)), ("gentle", gentle)):
        graded = tmp_path / f"{name}.mp4"
        grade_video(camera_video, graded, table)
        assert probe(graded).pix_fmt == "yuv420p"
        assert pcm(graded) == pcm(camera_video)  # copied, not re-encoded
        errors[name] = np.abs(decoded(graded).astype(int) - pillow(source, table).astype(int)).mean()
    assert errors["identity"] < 2.0  # (the re-encode alone: 1.5 levels measured)
    assert errors["gentle"] < errors["identity"] + 1.0  # (0.7 more measured)


def test_webm_is_vp9_and_opus(tmp_path, camera_video):
    grade_video(camera_video, tmp_path / "graded.webm", identity_table(2))
    info = subprocess.run([ffmpeg(), "-hide_banner", "-i", str(tmp_path / "graded.webm")], capture_output=True,
                          text=True).stderr
    assert "Video: vp9" in info and "Audio: opus" in info


def test_the_lut_path_is_escaped_for_the_filter_graph(tmp_path, camera_video):
    assert escape_filter_value("/a b/c") == "/a b/c"
    assert escape_filter_value(r"C:\x") == r"C\\:\\\\x"  # as ffmpeg's documentation escapes, level by level
    assert escape_filter_value("it's [a],b;c") == r"it\\\'s \[a\]\,b\;c"
    weird = tmp_path / "it's [a], b;c:d\\e"
    weird.mkdir()
    cube = tmp_path / "look.cube"
    cube.write_text(write_cube(identity_table(5)))
    out = cli("apply", cube, camera_video, "-o", weird / "graded.mp4", "-q", env={**os.environ, "TMPDIR": str(weird)})
    assert out.returncode == 0, out.stderr
    assert len(decoded(weird / "graded.mp4")) == FPS * SECONDS and list(weird.iterdir()) == [weird / "graded.mp4"]


def test_errors_name_the_problem(tmp_path, camera_video):
    table = identity_table(2)
    with pytest.raises(ValueError, match="not a video ffmpeg can read"):
        grade_video(tmp_path / "missing.mp4", tmp_path / "out.mp4", table)
    with pytest.raises(ValueError, match="is the input video"):
        grade_video(camera_video, camera_video, table)
    with pytest.raises(RuntimeError, match="ffmpeg could not grade"):
        grade_video(camera_video, tmp_path / "no-such-folder" / "out.mp4", table)
