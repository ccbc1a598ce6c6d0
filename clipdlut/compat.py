"""Importing ``cn_clip`` on installs without a working torchvision.

``cn_clip.clip.utils`` imports five names from ``torchvision.transforms`` at module level, only for its
own PIL preprocessing, which clipdlut does not use (see :meth:`clipdlut.guidance.Guide.preprocess`). On a CPU
machine the registry's torchvision is a CUDA build that fails to import against a CPU torch, and
installing it would replace torch with a multi-GB CUDA build, so clipdlut installs ``cn_clip`` without
its dependencies. When torchvision cannot be imported, inert stand-ins for those five names are placed
in ``sys.modules`` just for the import of ``cn_clip`` and removed right after; calling one raises.
"""

from __future__ import annotations

import sys
import threading
import types

_LOCK = threading.Lock()


class _Unavailable:
    """Stands in for a torchvision transform: constructible, but fails when applied."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object):
        raise RuntimeError("cn_clip's PIL transforms need torchvision, which is not usable here; "
                           "use clipdlut.guidance.Guide.preprocess instead")


def _torchvision_works() -> bool:
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:  # absent (ImportError) or a build for another torch (RuntimeError, OSError)
        for name in [m for m in list(sys.modules) if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_cn_clip() -> types.ModuleType:
    """``cn_clip.clip``, imported whether or not torchvision works here (safe from any thread)."""
    with _LOCK:
        return _import_cn_clip()


def _import_cn_clip() -> types.ModuleType:
    if "cn_clip.clip" in sys.modules or _torchvision_works():
        import cn_clip.clip
        return cn_clip.clip
    transforms = types.ModuleType("torchvision.transforms")
    vars(transforms).update(dict.fromkeys(("Compose", "ToTensor", "Normalize", "Resize"), _Unavailable),
                            InterpolationMode=types.SimpleNamespace(BICUBIC="bicubic"))
    package = types.ModuleType("torchvision")
    vars(package)["transforms"] = transforms
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, transforms
    try:
        import cn_clip.clip
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.transforms"]
    return cn_clip.clip
