import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from clipdlut.models import (
    MODELS,
    TINY_CONFIG,
    WeightsNotFound,
    architecture_of,
    build_tiny,
    checkpoint_path,
    compute_dtype,
    load_model,
)

pytestmark = pytest.mark.unit


def test_tiny_model_is_small_frozen_eval_fp32():
    m = load_model("tiny", device="cpu")
    params = list(m.model.parameters())
    assert sum(p.numel() for p in params) < 1_000_000
    assert not any(p.requires_grad for p in params)
    assert not m.model.training
    assert all(p.dtype == torch.float32 for p in params)
    assert m.resolution == TINY_CONFIG["image_resolution"] and m.name == "tiny"


def test_the_tiny_model_as_a_checkpoint_file_loads_as_the_tiny_model(tmp_path, monkeypatch):
    """``import-model tiny`` writes this file; a container loads it as real weights are loaded (by file name)."""
    monkeypatch.setenv("CLIPDLUT_WEIGHTS_DIR", str(tmp_path))
    path = checkpoint_path("tiny")  # (written, never downloaded)
    assert path == tmp_path / MODELS["tiny"].file
    loaded = load_model(str(path), device="cpu")
    assert loaded.name == "tiny" and loaded.resolution == TINY_CONFIG["image_resolution"]
    tiny = build_tiny().state_dict().values()
    assert all(torch.equal(x, y) for x, y in zip(loaded.model.state_dict().values(), tiny))


def test_tiny_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_tiny(), build_tiny()
    assert torch.rand(1).item() == before.item()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_env_variable_picks_the_model(monkeypatch):
    monkeypatch.setenv("CLIPDLUT_CLIP_MODEL", "tiny")
    assert load_model(device="cpu").name == "tiny"


def test_missing_weights_fail_fast_with_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDLUT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: never the real Hub
    start = time.monotonic()
    with pytest.raises(WeightsNotFound) as e:
        load_model("ViT-B-16", device="cpu")
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert str(tmp_path / "clip_cn_vit-b-16.pt") in msg
    assert "OFA-Sys/chinese-clip-vit-base-patch16" in msg and "CLIPDLUT_WEIGHTS_DIR" in msg


def test_offline_setting_skips_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFound, match="HF_HUB_OFFLINE"):
        checkpoint_path("RN50", tmp_path)


def test_existing_checkpoint_is_used_without_network(tmp_path):
    (tmp_path / MODELS["RN50"][1]).write_bytes(b"x")
    assert checkpoint_path("RN50", tmp_path, download=False) == tmp_path / "clip_cn_rn50.pt"


def test_checkpoint_path_errors_are_clear(tmp_path, monkeypatch):
    bad = tmp_path / "clip_cn_rn50.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable Chinese-CLIP checkpoint"):
        load_model(str(bad), device="cpu")
    torch.save({"weights": {}}, bad)
    with pytest.raises(ValueError, match="no 'state_dict'"):
        load_model(str(bad), device="cpu")
    other = tmp_path / "mine.pt"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="CLIPDLUT_CLIP_ARCH"):
        architecture_of(other)
    monkeypatch.setenv("CLIPDLUT_CLIP_ARCH", "ViT-L-14")
    assert architecture_of(other) == "ViT-L-14"
    with pytest.raises(ValueError, match="not a model name"):
        load_model("ViT-Z-99", device="cpu")


def test_dtypes():
    assert compute_dtype(torch.device("cpu")) == torch.float32
    assert load_model("tiny", device="cpu").dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU machine)")
def test_cuda_computes_in_reduced_precision_with_fp32_weights():
    m = load_model("tiny", device="cuda")
    assert m.dtype in (torch.bfloat16, torch.float16)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in m.model.parameters())


def test_cn_clip_imports_when_torchvision_is_broken(tmp_path):
    """A torchvision that fails to import (a CUDA build on a CPU torch) must not break cn_clip."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    code = textwrap.dedent("""
        import sys
        from clipdlut.compat import import_cn_clip
        clip = import_cn_clip()
        assert clip.tokenize(["你好"]).shape == (1, 52)
        assert not any(m.startswith("torchvision") for m in sys.modules), "stand-ins must not linger"
        try:
            clip.image_transform(224)(None)
        except RuntimeError as e:
            assert "torchvision" in str(e)
        else:
            raise AssertionError("the stand-in transform must refuse to run")
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
