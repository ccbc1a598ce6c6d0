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


def test_make_lint_passes():
    """What `make lint` runs: ruff on the tree, mypy on clipdlut/ and service.py (settings in pyproject.toml)."""
    bin_dir = Path(sys.executable).parent
    for command in ([str(bin_dir / "ruff"), "check", "."], [str(bin_dir / "mypy")]):
        r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
