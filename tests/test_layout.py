"""The layout: the library core (clipdlut/) works without BentoML; serving code lives in clipdlut/serving/."""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.unit
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in (ROOT / "clipdlut").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """What a module imports, anywhere in it (a function's import too): the project's modules and top-level
    names of others."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(name.split(".")[:-node.level] + [node.module])
            subs = {f"{base}.{alias.name}" for alias in node.names} & known
            found |= subs or {base}
    return found


def test_the_package_has_no_import_loop_and_its_core_never_imports_serving_code():
    """Read from the source, so an import inside a function counts as much as one at the top."""
    found = modules()
    graph = {name: {i for i in imports(name, path, set(found)) if i in found} for name, path in found.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        pytest.fail(f"an import loop: {' -> '.join(e.args[1])}")
    for name, path in found.items():
        if not name.startswith("clipdlut.serving"):
            bad = {i for i in imports(name, path, set(found)) if i.split(".")[0] == "bentoml"
                   or i.startswith("clipdlut.serving")}
            assert not bad, (name, bad)


def test_no_function_is_longer_than_a_screen():
    """Functions short enough to read at once (the library, the serving code, service.py)."""
    long = []
    for path in [*(ROOT / "clipdlut").rglob("*.py"), ROOT / "service.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_library_core_imports_neither_bentoml_nor_the_serving_package():
    core = sorted(p.stem for p in (ROOT / "clipdlut").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert {"lut", "cube", "optimizer", "engine", "cli", "safety"} <= set(core)
    probe = ("import sys\n" + "".join(f"import clipdlut.{m}\n" for m in core)
             + "print(sorted(m for m in sys.modules\n"
             + "             if m.split('.')[0] == 'bentoml' or m.startswith('clipdlut.serving')))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_applying_a_lut_or_a_retouch_mistake_never_imports_torch(tmp_path):
    """`apply` (its help, one photo, a folder) runs without torch: it starts in a fraction of a second (README).
    A `retouch` command line that cannot be done is answered before torch is imported too."""
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 100, 50)).save(tmp_path / "photo.png")
    (tmp_path / "look.cube").write_text("LUT_3D_SIZE 2\n" + "0 0 0\n1 0 0\n0 1 0\n1 1 0\n0 0 1\n1 0 1\n0 1 1\n1 1 1\n")
    runs = {("apply", "--help"): 0, ("apply", "look.cube", "photo.png", "-o", "out.jpg"): 0,
            ("apply", "look.cube", ".", "-o", "folder", "-q"): 0, ("retouch", "--help"): 0,
            ("retouch", "photo.png", "-o", "look.cube"): 1}  # (no --prompt and no --reference)
    for argv, code in runs.items():
        probe = ("import runpy, sys\n"
                 f"sys.argv = ['clipdlut'] + {list(argv)!r}\n"
                 "try:\n    runpy.run_module('clipdlut', run_name='__main__')\n"
                 "except SystemExit as e:\n    assert (e.code or 0) == " + str(code) + ", e.code\n"
                 "print('torch' in sys.modules, file=sys.stderr)")
        r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1] == "False", (argv, r.stderr[-1000:])
    assert (tmp_path / "out.jpg").exists() and (tmp_path / "folder" / "photo.png").exists()


def test_make_lint_passes():
    """What `make lint` runs: ruff on the tree, mypy on clipdlut/, service.py and bench/ (settings in
    pyproject.toml)."""
    bin_dir = Path(sys.executable).parent
    for command in ([str(bin_dir / "ruff"), "check", "."], [str(bin_dir / "mypy")]):
        r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
