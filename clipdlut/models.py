"""Loading Chinese-CLIP models: by name, from a checkpoint file, or the tiny random model for tests.

One setting picks the model: ``CLIPDLUT_CLIP_MODEL`` is a name (``ViT-B-16``, ...), ``tiny``, or a path
to a checkpoint file. Weights are looked up in ``CLIPDLUT_WEIGHTS_DIR`` (default ``~/.cache/clip``, the
same folder ``cn_clip`` uses) and downloaded from the Hugging Face Hub only when the Hub is reachable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch

from clipdlut.compat import import_cn_clip

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16"
TINY = "tiny"
HUB_ORG = "OFA-Sys"


class ModelSpec(NamedTuple):
    """One Chinese-CLIP model: where its weights are released, its checkpoint's file name, its architecture in
    cn_clip, and its input resolution (fixed by the model)."""

    repo: str | None  # OFA-Sys/<repo> on the Hugging Face Hub (None: not released, never downloaded)
    file: str
    arch: str | None  # cn_clip's architecture name (None: cn_clip's CLIP built from TINY_CONFIG)
    resolution: int


MODELS: dict[str, ModelSpec] = {
    "ViT-B-16": ModelSpec("chinese-clip-vit-base-patch16", "clip_cn_vit-b-16.pt",
                          "ViT-B-16@RoBERTa-wwm-ext-base-chinese", 224),
    "ViT-L-14": ModelSpec("chinese-clip-vit-large-patch14", "clip_cn_vit-l-14.pt",
                          "ViT-L-14@RoBERTa-wwm-ext-base-chinese", 224),
    "ViT-L-14-336": ModelSpec("chinese-clip-vit-large-patch14-336px", "clip_cn_vit-l-14-336.pt",
                              "ViT-L-14-336@RoBERTa-wwm-ext-base-chinese", 336),
    "ViT-H-14": ModelSpec("chinese-clip-vit-huge-patch14", "clip_cn_vit-h-14.pt",
                          "ViT-H-14@RoBERTa-wwm-ext-large-chinese", 224),
    "RN50": ModelSpec("chinese-clip-rn50", "clip_cn_rn50.pt", "RN50@RBT3-chinese", 224),
    # the tiny random model as a checkpoint file (`import-model tiny` writes it): it stands in for released
    # weights where a file must travel (the model store, a container image)
    TINY: ModelSpec(None, "clip_cn_tiny.pt", None, 32),
}
RELEASED = [name for name, spec in MODELS.items() if spec.repo is not None]
# A model of the real architecture with random weights, under 1 M parameters: colours it produces
# are meaningless, but every line of the guidance code runs.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32, "image_resolution": 32, "vision_layers": 2, "vision_width": 64, "vision_patch_size": 8,
    "vocab_size": 21128, "text_attention_probs_dropout_prob": 0.0, "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.0, "text_hidden_size": 32, "text_initializer_range": 0.02,
    "text_intermediate_size": 64, "text_max_position_embeddings": 64, "text_num_attention_heads": 2,
    "text_num_hidden_layers": 2, "text_type_vocab_size": 2,
}
TINY_SEED = 20240601


class WeightsNotFound(RuntimeError):
    """The checkpoint is not on disk and cannot be downloaded; the message says where to put it."""


@dataclass
class LoadedModel:
    """A frozen fp32 CLIP model in eval mode, with what the guidance needs to know about it.

    ``dtype`` is the precision it computes in: the guidance runs it under autocast to that dtype. (Casting
    the weights instead fails: cn_clip's LayerNorm feeds float32 activations to its own weights.)
    """

    model: Any  # cn_clip's CLIP (an nn.Module with encode_image and encode_text; cn_clip ships no types)
    name: str
    resolution: int
    device: torch.device
    dtype: torch.dtype


def weights_dir() -> Path:
    """Where checkpoints are looked for and downloaded to."""
    return Path(os.environ.get("CLIPDLUT_WEIGHTS_DIR") or Path.home() / ".cache" / "clip")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 on CUDA where supported, else fp16; fp32 (no autocast) on CPU, where
    reduced-precision matmuls are slower on most processors."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_tiny(seed: int = TINY_SEED) -> torch.nn.Module:
    """cn_clip's own ``CLIP`` class with :data:`TINY_CONFIG` and seeded random weights."""
    clip = import_cn_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return clip.model.CLIP(**TINY_CONFIG)


def load_random(name: str, device: str | torch.device | None = None, seed: int = 0) -> LoadedModel:
    """A named architecture with seeded random weights, frozen, computing in the serving dtype: for
    benchmarks, whose cost does not depend on weight values (and whose weights cannot be downloaded
    everywhere)."""
    clip = import_cn_clip()
    device = torch.device(device) if device else default_device()
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        model = clip.utils.create_model(MODELS[name].arch, None)
    model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    return LoadedModel(model=model, name=name, resolution=MODELS[name][3], device=device, dtype=compute_dtype(device))


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"{host} is not reachable: {e}"


def checkpoint_path(name: str, directory: Path | None = None, download: bool = True) -> Path:
    """The local checkpoint of a named model, downloading it once if the Hub can be reached.

    Fails within seconds (never retries for minutes) with a message that says where to put the file.
    """
    repo, filename, _, _ = MODELS[name]
    directory = directory or weights_dir()
    path = directory / filename
    if path.is_file():
        return path
    if repo is None:  # (the tiny model: written, never downloaded)
        return save_tiny(path)
    reason = "downloads are disabled"
    if download:
        ok, reason = _hub_reachable()
        if ok:
            try:
                from huggingface_hub import hf_hub_download
                directory.mkdir(parents=True, exist_ok=True)
                return Path(hf_hub_download(f"{HUB_ORG}/{repo}", filename=filename, local_dir=str(directory)))
            except Exception as e:  # the Hub answers but the file cannot be had
                reason = f"download failed: {e}"
    raise WeightsNotFound(
        f"Chinese-CLIP weights for {name} are not at {path} and cannot be downloaded ({reason}). "
        f"Download {filename} from https://huggingface.co/{HUB_ORG}/{repo} and put it at {path}, "
        f"or set CLIPDLUT_WEIGHTS_DIR to the folder that holds it, "
        f"or set CLIPDLUT_CLIP_MODEL=tiny for an offline smoke run with meaningless colours.")


def architecture_of(path: Path) -> str:
    """The model name of a checkpoint file, from its official file name or ``CLIPDLUT_CLIP_ARCH``."""
    arch = os.environ.get("CLIPDLUT_CLIP_ARCH")
    if arch:
        if arch not in MODELS:
            raise ValueError(f"CLIPDLUT_CLIP_ARCH={arch!r} is not one of {', '.join(MODELS)}")
        return arch
    for name, (_, filename, _, _) in MODELS.items():
        if path.name == filename:
            return name
    raise ValueError(f"cannot tell the architecture of {path.name}: name the file as released "
                     f"({', '.join(m[1] for m in MODELS.values())}) or set CLIPDLUT_CLIP_ARCH to one of "
                     f"{', '.join(MODELS)}")


def save_tiny(path: Path) -> Path:
    """Write the tiny model's checkpoint (its seeded weights, in fp32: loading it gives exactly :func:`build_tiny`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": build_tiny().state_dict()}, path)
    return path


def _from_checkpoint(path: Path, name: str) -> torch.nn.Module:
    clip = import_cn_clip()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable Chinese-CLIP checkpoint: {e}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Chinese-CLIP checkpoint (no 'state_dict' inside)")
    if MODELS[name].arch is None:  # (the tiny model: cn_clip's CLIP of TINY_CONFIG, these weights)
        model = build_tiny()
        model.load_state_dict(checkpoint["state_dict"])
        return model
    with contextlib.redirect_stdout(io.StringIO()):  # cn_clip prints its config
        return clip.utils.create_model(MODELS[name].arch, checkpoint)


def load_model(spec: str | None = None, device: str | torch.device | None = None,
               directory: Path | None = None, download: bool = True) -> LoadedModel:
    """Load the model named by ``spec`` (default ``CLIPDLUT_CLIP_MODEL``, else ``ViT-B-16``).

    The result is in eval mode with every parameter frozen and fp32; it computes in fp32 on CPU and
    under bf16 (else fp16) autocast on CUDA.
    """
    spec = spec or os.environ.get("CLIPDLUT_CLIP_MODEL") or DEFAULT_MODEL
    device = torch.device(device) if device else default_device()
    if spec == TINY:
        model, name, source = build_tiny(), TINY, "its seeded random weights"
    elif spec in MODELS:
        name = spec
        path = checkpoint_path(spec, directory, download)
        model, source = _from_checkpoint(path, spec), str(path)
    elif Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        name = architecture_of(path)
        model, source = _from_checkpoint(path, name), str(path)
    else:
        raise ValueError(f"CLIP model {spec!r} is not a model name ({', '.join(MODELS)}) or an existing checkpoint "
                         "file")
    resolution = MODELS[name].resolution
    dtype = compute_dtype(device)
    model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    log.info("loaded CLIP %s from %s on %s, computing in %s", name, source, device, dtype)
    return LoadedModel(model=model, name=name, resolution=resolution, device=device, dtype=dtype)
