"""The layout: the library core (clipdlut/) works without BentoML; serving code lives in clipdlut/serving/."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.unit


def test_the_library_core_imports_neither_bentoml_nor_the_serving_package():
    core = sorted(p.stem for p in (ROOT / "clipdlut").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert {"lut", "cube", "optimizer", "engine", "cli", "safety"} <= set(core)
    probe = ("import sys\n" + "".join(f"import clipdlut.{m}\n" for m in core)
             + "print(sorted(m for m in sys.modules\n"
             + "             if m.split('.')[0] == 'bentoml' or m.startswith('clipdlut.serving')))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_applying_a_lut_never_imports_torch(tmp_path):
    """`apply` (its help, one photo, a folder) runs without torch: it starts in a fraction of a second (README)."""
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 100, 50)).save(tmp_path / "photo.png")
    (tmp_path / "look.cube").write_text("LUT_3D_SIZE 2\n" + "0 0 0\n1 0 0\n0 1 0\n1 1 0\n0 0 1\n1 0 1\n0 1 1\n1 1 1\n")
    runs = [["apply", "--help"], ["apply", "look.cube", "photo.png", "-o", "out.jpg"],
            ["apply", "look.cube", ".", "-o", "folder", "-q"]]
    for argv in runs:
        probe = ("import runpy, sys\n"
                 f"sys.argv = ['clipdlut'] + {argv!r}\n"
                 "try:\n    runpy.run_module('clipdlut', run_name='__main__')\n"
                 "except SystemExit as e:\n    assert not e.code, e.code\n"
                 "print('torch' in sys.modules, file=sys.stderr)")
        r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1] == "False", argv
    assert (tmp_path / "out.jpg").exists() and (tmp_path / "folder" / "photo.png").exists()


def test_make_lint_passes():
    """What `make lint` runs: ruff on the tree, mypy on clipdlut/ and service.py (settings in pyproject.toml)."""
    bin_dir = Path(sys.executable).parent
    for command in ([str(bin_dir / "ruff"), "check", "."], [str(bin_dir / "mypy")]):
        r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
