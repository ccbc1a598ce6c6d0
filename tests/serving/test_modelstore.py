"""CLIP weights in BentoML's model store, and a Bento that packages them with the GPU service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from clipdlut.serving.modelstore import model_tag

ROOT = Path(__file__).resolve().parent.parent.parent


def run(args: list[str], home: Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "COLUMNS": "1000", **env}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def checkout(folder: Path) -> Path:
    """What a clean checkout gives ``bentoml build`` (bentofile.yaml's include), without what a run of the CPU
    variant leaves in this one (``wheels/``: a 180 MB torch wheel the GPU Bento must not carry)."""
    folder.mkdir()
    for name in ("service.py", "pyproject.toml", "bentofile.yaml"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "clipdlut", folder / "clipdlut", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.mark.unit
def test_model_tags():
    assert model_tag("ViT-L-14-336") == "clipdlut-clip-vit-l-14-336"
    assert model_tag("tiny") == "clipdlut-clip-tiny"  # (its checkpoint stands in for real weights in a container)
    with pytest.raises(ValueError, match="not a model name"):
        model_tag("ViT-X")


@pytest.mark.unit
def test_import_command_stores_the_checkpoint_and_the_service_prefers_it(tmp_path):
    checkpoint = tmp_path / "mine.pt"
    checkpoint.write_bytes(os.urandom(4096))
    r = run([sys.executable, "-m", "clipdlut.serving.modelstore", "RN50", "--from", str(checkpoint)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "clipdlut-clip-rn50:" in r.stdout
    probe = ("from clipdlut.serving import modelstore as m; p = m.stored_checkpoint(m.reference('RN50')); "
             "print(p); print(m.reference('ViT-B-16'))")
    r = run([sys.executable, "-c", probe], tmp_path)
    stored, other = r.stdout.split()
    assert Path(stored).name == "clip_cn_rn50.pt"  # the released name: the architecture is known from it
    assert Path(stored).read_bytes() == checkpoint.read_bytes()
    assert other == "None"
    r = run([sys.executable, "-m", "clipdlut.serving.modelstore", "RN50", "--from", str(tmp_path / "missing.pt")],
            tmp_path)
    assert r.returncode == 1 and "missing.pt is not a file" in r.stderr


@pytest.mark.e2e
def test_bentoml_build_declares_the_gpu_a_debian_image_and_packages_stored_weights(tmp_path):
    """The GPU variant: torch's CUDA build from the index (its wheels carry CUDA), on the plain Debian base; no
    script from a web site, no Python downloaded by uv."""
    checkpoint = tmp_path / "clip_cn_rn50.pt"
    checkpoint.write_bytes(b"weights")
    assert run([sys.executable, "-m", "clipdlut.serving.modelstore", "RN50", "--from", str(checkpoint)],
               tmp_path).returncode == 0
    bentoml = str(Path(sys.executable).parent / "bentoml")
    src = checkout(tmp_path / "src")
    r = run([bentoml, "build"], tmp_path, src, CLIPDLUT_CLIP_MODEL="RN50", CLIPDLUT_GPU_TYPE="nvidia-a100-80gb")
    assert r.returncode == 0, r.stdout + r.stderr
    path = Path(run([bentoml, "get", "clipdlut:latest", "-o", "path"], tmp_path).stdout.strip())
    bento = yaml.safe_load((path / "bento.yaml").read_text())
    assert not list(path.rglob("*.whl"))  # (the GPU image takes torch from the index)
    optimizer = next(s for s in bento["services"] if s["name"] == "clipdlut-optimizer")
    assert optimizer["config"]["resources"] == {"gpu": 1, "gpu_type": "nvidia-a100-80gb"}
    assert optimizer["config"]["workers"] == 1
    assert {"name": "CLIPDLUT_CLIP_MODEL", "value": "RN50", "stage": "all"} in bento["envs"]
    assert [m["tag"].split(":")[0] for m in optimizer["models"]] == ["clipdlut-clip-rn50"]
    dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
    assert next(line for line in dockerfile.splitlines() if line.startswith("FROM")) == \
        "FROM clipdlut-base:bookworm AS base-container"
    assert "curl" not in dockerfile and "uv python install" not in dockerfile and "| sh" not in dockerfile
    requirements = (path / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "nvidia-cudnn-cu13" in requirements  # (CUDA 13, in wheels)
    assert "cn_clip" in dockerfile and "--no-deps" in dockerfile
    # the weights travel with the Bento (export, push and containerize copy the referenced models)
    assert run([bentoml, "export", "clipdlut:latest", str(tmp_path / "out.bento")], tmp_path).returncode == 0
    with tarfile.open(tmp_path / "out.bento") as archive:
        (member,) = [m for m in archive.getmembers() if m.name.endswith("/clip_cn_rn50.pt")]
        assert archive.extractfile(member).read() == b"weights"
