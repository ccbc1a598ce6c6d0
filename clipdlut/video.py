"""Grading a video with one LUT through ffmpeg's ``lut3d`` filter (trilinear, as Pillow interpolates), with the
audio copied and a progress callback. The ffmpeg binary is the one imageio-ffmpeg ships.

In RGB (``--lossless``) the frames are Pillow's ``Color3DLUT`` on the decoded input frames to one level (the
README has the figures). Otherwise ffmpeg converts each frame to RGB for ``lut3d`` and back for the encoder,
which adds that encoder's own loss (4:2:0 chroma, CRF), as encoding Pillow's frames would.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdlut.cube import write_cube

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")


@dataclass(frozen=True)
class Encoder:
    """How a container's video is encoded: the codec, its default CRF, its pixel formats and extra options."""

    codec: str
    crf: int
    pix_fmts: frozenset[str]
    options: tuple[str, ...] = ()
    audio: tuple[str, ...] = ("-c:a", "copy")


# CRF 16 (x264) and 20 (VP9) look the same as their input to the eye at a few times the size of a web encode.
X264 = Encoder("libx264", 16, frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le",
                                          "yuv444p10le", "yuvj420p", "yuvj422p", "yuvj444p"}), ("-preset", "medium"))
VP9 = Encoder("libvpx-vp9", 20, frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le",
                                            "yuv444p10le"}), ("-b:v", "0", "-row-mt", "1"),
              ("-c:a", "libopus", "-b:a", "160k"))  # WebM holds Opus or Vorbis audio only
DEFAULT_PIX_FMT = "yuv420p"  # what every player decodes, for inputs in a format the encoder does not take


@dataclass(frozen=True)
class Probe:
    """What ffmpeg says about a video before grading it."""

    duration_s: float | None
    pix_fmt: str | None


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def ffmpeg() -> str:
    """The path of imageio-ffmpeg's ffmpeg binary (or ``IMAGEIO_FFMPEG_EXE``'s)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_lines(text: str, count: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def probe(path: Path) -> Probe:
    """The duration and pixel format of ``path``'s first video stream; ``ValueError`` if it has none."""
    r = subprocess.run([ffmpeg(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True,
                       errors="replace")
    stream = re.search(r"Stream #\d+:\d+.*?: Video: [^,]+, (\w+)", r.stderr)
    if stream is None:
        raise ValueError(f"{path} is not a video ffmpeg can read: {_last_lines(r.stderr, 1)}")
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", r.stderr)
    seconds = None if duration is None else (int(duration[1]) * 60 + int(duration[2])) * 60 + float(duration[3])
    return Probe(duration_s=seconds, pix_fmt=stream[1])


def half_level(pix_fmt: str | None) -> float:
    """Half a level of ``pix_fmt``'s bit depth: ``lut3d`` truncates its output to that depth where Pillow
    rounds, so the table we hand it is raised by this much, and then it rounds too (float formats: 0)."""
    name = (pix_fmt or "").removesuffix("le").removesuffix("be")
    if re.search(r"f(16|32)$", name):
        return 0.0
    digits = re.search(r"(\d+)$", name)
    n = int(digits[1]) if digits and not name.startswith("nv") else 8  # (nv12: 8 bits, 4:2:0)
    bits = 16 if n in (48, 64) else n if 9 <= n <= 16 else 8  # rgb48, rgba64: 16 bits a channel; rgb24: 8
    return 0.5 / (2**bits - 1)


def escape_filter_value(text: str) -> str:
    """``text`` as one option value inside a ``-vf`` filter graph: escaped for the option parser (``\\ ' :``),
    then for the graph parser (``\\ ' [ ] , ;``), as ffmpeg's documentation on filter graph escaping says."""
    value = re.sub(r"([\\':])", r"\\\1", text)
    return re.sub(r"([\\'\[\],;])", r"\\\1", value)


def command(source: Path, target: Path, cube_path: Path, pix_fmt: str | None, crf: int | None = None,
            lossless: bool = False) -> list[str]:
    """The ffmpeg command line: the first video stream through ``lut3d``, every audio stream copied (WebM:
    Opus), the encoder chosen by ``target``'s container. ``lossless``: 8-bit RGB frames, losslessly coded."""
    encoder = VP9 if target.suffix.lower() == ".webm" else X264
    if lossless:
        video = (["-c:v", "libvpx-vp9", "-lossless", "1", "-row-mt", "1", "-pix_fmt", "gbrp"] if encoder is VP9
                 else ["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"])
    else:
        fmt = pix_fmt if pix_fmt in encoder.pix_fmts else DEFAULT_PIX_FMT
        video = ["-c:v", encoder.codec, "-crf", str(encoder.crf if crf is None else crf), *encoder.options,
                 "-pix_fmt", fmt]
    graph = f"lut3d=file={escape_filter_value(str(cube_path))}:interp=trilinear"
    return [ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1", "-y",
            "-i", str(source), "-map", "0:v:0", "-map", "0:a?", "-vf", graph, *video, *encoder.audio, str(target)]


def grade_video(source: Path, target: Path, table: np.ndarray, *, crf: int | None = None, lossless: bool = False,
                on_progress: Callable[[float], None] | None = None) -> None:
    """Write ``source`` graded by ``table[b, g, r, c]`` (unit domain) to ``target``. ``on_progress`` is called
    with the fraction of the video done as the encode goes (not at all when ffmpeg cannot tell its duration).
    Raises ``ValueError`` for an unreadable input, ``RuntimeError`` when ffmpeg
    fails (with its message)."""
    if target.resolve() == source.resolve():
        raise ValueError(f"{target} is the input video: choose another output file")
    info = probe(source)
    with tempfile.TemporaryDirectory(prefix="clipdlut-") as folder, tempfile.TemporaryFile("w+") as errors:
        cube_path = Path(folder) / "lut.cube"
        # Unclipped: ffmpeg, like Pillow, interpolates values outside [0, 1] and clips the result (strength > 1).
        cube_path.write_text(write_cube(table + half_level(info.pix_fmt), clip=False), encoding="utf-8")
        cmd = command(source, target, cube_path, info.pix_fmt, crf, lossless)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, text=True) as p:
            assert p.stdout is not None
            for line in p.stdout:
                key, _, value = line.strip().partition("=")
                if key == "out_time_us" and value.lstrip("-").isdigit() and on_progress and info.duration_s:
                    on_progress(min(1.0, max(0, int(value)) / 1e6 / info.duration_s))
        if p.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"ffmpeg could not grade {source}: {_last_lines(errors.read())}")
