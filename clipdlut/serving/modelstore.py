"""CLIP weights in BentoML's model store, so a Bento carries them and a container never downloads.

``python -m clipdlut.serving.modelstore ViT-B-16`` (``make import-model``) copies the checkpoint (from a
file, the weights folder or the Hub) into the store as ``clipdlut-clip-vit-b-16``; ``bentoml build`` then
packages it with the service, which loads it from there first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import bentoml

from clipdlut.models import MODELS, checkpoint_path

PREFIX = "clipdlut-clip-"


def model_tag(name: str) -> str:
    """The model store name of a Chinese-CLIP model: ``ViT-L-14-336`` -> ``clipdlut-clip-vit-l-14-336``."""
    if name not in MODELS:
        raise ValueError(f"{name!r} is not a model name ({', '.join(MODELS)})")
    return PREFIX + name.lower()


def import_weights(name: str, source: Path | None = None) -> str:
    """Store the checkpoint of ``name`` (from ``source``, else the weights folder or the Hub); returns the tag."""
    tag = model_tag(name)
    repo, filename, arch, resolution = MODELS[name]
    path = Path(source) if source else checkpoint_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    with bentoml.models.create(tag, labels={"family": "chinese-clip"},
                               metadata={"model": name, "architecture": arch or "clipdlut.models.TINY_CONFIG",
                                         "resolution": resolution,
                                         "file": filename,
                                         "source": f"OFA-Sys/{repo}" if repo else "the tiny random model"}) as model:
        shutil.copyfile(path, model.path_of(filename))
    return str(model.tag)


def reference(name: str) -> bentoml.models.BentoModel | None:
    """A reference to the stored weights of ``name`` for a service class, or None when none are stored.

    Declared on the optimizer service, it makes ``bentoml build`` package the weights (the tiny model's too, once
    imported: it stands in for real weights in the container tests).
    """
    if name not in MODELS:
        return None
    ref = bentoml.models.BentoModel(model_tag(name))
    return ref if ref.stored is not None else None


def stored_checkpoint(ref: bentoml.models.BentoModel | None) -> Path | None:
    """The checkpoint file behind a stored model reference (inside a Bento: the packaged copy)."""
    if ref is None:
        return None
    stored = ref.stored
    return Path(stored.path_of(stored.info.metadata["file"])) if stored is not None else None


def main(argv: list[str] | None = None) -> int:
    """``python -m clipdlut.serving.modelstore NAME [--from FILE]``: put weights into the model store."""
    p = argparse.ArgumentParser(prog="python -m clipdlut.serving.modelstore",
                                description="Put Chinese-CLIP weights into BentoML's model store for `bentoml build`.")
    p.add_argument("name", choices=list(MODELS), help="the model the service will use ($CLIPDLUT_CLIP_MODEL)")
    p.add_argument("--from", dest="source", type=Path, metavar="FILE",
                   help="a checkpoint file you have (default: the weights folder, else download from the Hub)")
    args = p.parse_args(argv)
    try:
        tag = import_weights(args.name, args.source)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"stored {args.name} as {tag}; `bentoml build` now packages it with the service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
