"""``python -m bench.apply [--quick]``: applying a LUT at scale, measured as whole processes.

``python -m clipdlut apply`` against plain Pillow scripts doing the same work (read the ``.cube``, decode the
JPEG, Pillow's ``Color3DLUT``, encode at the same settings): one 12-megapixel photo, and a folder of 20 (the
plain script spreading them over the same cores with ``multiprocessing.Pool``). Each figure is the best of a
few runs, the two commands taking turns. Both write the same bytes, which is checked. Run alone, this section
is written into ``bench/results.json`` (and ``results.md``) beside the figures of the last ``python -m bench``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from clipdlut.cube import write_cube
from clipdlut.table import identity_table, trilinear

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
QUALITY = 95  # what clipdlut's encoder uses for JPEG (with 4:4:4 chroma), and so the plain scripts too

# The plain scripts: what someone would write with Pillow alone. (They read the .cube's rows, skipping its
# header, as our reader does.)
PLAIN_READ = """
import sys
import numpy as np
from PIL import Image, ImageFilter

def read_lut(path):
    rows = [line.split() for line in open(path) if line[:1].isdigit() or line[:1] in "+-."]
    n = round(len(rows) ** (1 / 3))
    return ImageFilter.Color3DLUT(n, np.array(rows, dtype=np.float64).reshape(n, n, n, 3))

def grade(src, dst, lut):
    Image.open(src).convert("RGB").filter(lut).save(dst, quality=QUALITY, subsampling=0)
""".replace("QUALITY", str(QUALITY))
PLAIN_ONE = PLAIN_READ + """
grade(sys.argv[2], sys.argv[3], read_lut(sys.argv[1]))
"""
PLAIN_FOLDER = PLAIN_READ + """
import os
from multiprocessing import Pool

def work(name):
    grade(os.path.join(sys.argv[2], name), os.path.join(sys.argv[3], name), LUT)

LUT = read_lut(sys.argv[1])
if __name__ == "__main__":
    os.makedirs(sys.argv[3], exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(work, sorted(os.listdir(sys.argv[2])), chunksize=1)
"""


def photo(index: int, width: int, height: int) -> Image.Image:
    """A photo of that size from scikit-image's, mirrored by ``index`` and with a little grain (a camera's
    JPEG has detail; a plain upscale would decode and encode unusually fast)."""
    rng = np.random.default_rng(index)
    base = getattr(data, PHOTOS[index % len(PHOTOS)])()[..., :3]
    img = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.int16)
    arr = arr[:, ::-1] if index // len(PHOTOS) % 2 else arr
    grain = rng.normal(0, 3, arr.shape[:2])[..., None]
    return Image.fromarray(np.clip(arr + grain, 0, 255).astype(np.uint8))


def look(n: int = 33) -> np.ndarray:
    """A smooth grade: the identity bent by a random 3-node field."""
    coarse = identity_table(3) + np.random.default_rng(0).normal(0, 0.06, (3, 3, 3, 3))
    return np.clip(trilinear(np.clip(coarse, 0, 1), identity_table(n)), 0, 1)


def best_of(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """The fastest wall time of each command (whole process), the commands taking turns."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=900)
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def at_scale(command: str, quick: bool = False) -> dict:
    """The section's figures (start-up, one photo, a folder), recorded as measured by ``command``."""
    width, height, count = (400, 300, 4) if quick else (4000, 3000, 20)
    runs_one, runs_folder = (1, 1) if quick else (5, 3)
    py, cores = sys.executable, os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as tmp:
        folder, out = Path(tmp) / "photos", Path(tmp) / "out"
        folder.mkdir()
        out.mkdir()
        for i in range(count):
            photo(i, width, height).save(folder / f"photo{i:02d}.jpg", quality=92)
        lut = Path(tmp) / "look.cube"
        lut.write_text(write_cube(look()), encoding="utf-8")
        scripts = {name: Path(tmp) / f"{name}.py" for name in ("plain_one", "plain_folder")}
        scripts["plain_one"].write_text(PLAIN_ONE)
        scripts["plain_folder"].write_text(PLAIN_FOLDER)
        first = folder / "photo00.jpg"
        startup = best_of({"help": [py, "-m", "clipdlut", "apply", "--help"]}, 3 if quick else 7)["help"]
        one = best_of({"plain": [py, str(scripts["plain_one"]), str(lut), str(first), str(out / "plain.jpg")],
                       "ours": [py, "-m", "clipdlut", "apply", str(lut), str(first), "-o", str(out / "ours.jpg")]},
                      runs_one)
        same_one = (out / "plain.jpg").read_bytes() == (out / "ours.jpg").read_bytes()
        many = best_of({"plain": [py, str(scripts["plain_folder"]), str(lut), str(folder), str(out / "plain")],
                        "ours": [py, "-m", "clipdlut", "apply", str(lut), str(folder), "-o", str(out / "ours"),
                                 "-q"]}, runs_folder)
        same_many = same_files(out / "plain", out / "ours")
    return {"command": command,
            "measured": time.strftime("%Y-%m-%d %H:%M"), "cores": cores, "megapixels": width * height / 1e6,
            "photos": count, "lut_size": 33, "runs": [runs_one, runs_folder], "startup_s": startup,
            "one": {"plain_s": one["plain"], "ours_s": one["ours"], "ratio": one["ours"] / one["plain"],
                    "same_bytes": same_one},
            "folder": {"plain_s": many["plain"], "ours_s": many["ours"], "ratio": many["ours"] / many["plain"],
                       "same_bytes": same_many}}


def lines(a: dict) -> list[str]:
    """The section in ``bench/results.md``."""
    mp = f"{a['megapixels']:.0f} MP" if a["megapixels"] >= 1 else f"{a['megapixels']:.2f} MP"
    same = "the same bytes" if a["one"]["same_bytes"] and a["folder"]["same_bytes"] else "DIFFERENT bytes"
    return ["", f"Applying a LUT at scale (`{a['command']}`, {a['measured']}): whole processes, "
            f"`python -m clipdlut apply` against a plain Pillow script doing the same work (read the {a['lut_size']}-"
            f"node `.cube`, decode, `Color3DLUT`, JPEG encode); best of {a['runs'][0]} runs for one photo, "
            f"{a['runs'][1]} for the folder; both wrote {same}. `apply --help` starts in {a['startup_s']:.2f} s.", "",
            "| job | plain Pillow | `clipdlut apply` | ours / plain |", "| --- | --- | --- | --- |",
            f"| one {mp} JPEG | {a['one']['plain_s']:.2f} s | {a['one']['ours_s']:.2f} s | "
            f"{a['one']['ratio']:.2f}x |",
            f"| a folder of {a['photos']} {mp} JPEGs, {a['cores']} processes | {a['folder']['plain_s']:.2f} s | "
            f"{a['folder']['ours_s']:.2f} s | {a['folder']['ratio']:.2f}x |"]


def main() -> None:
    from bench.__main__ import one_section

    one_section("apply", __doc__, "small photos, one run: a smoke run of this code", at_scale, lines)


if __name__ == "__main__":
    main()
