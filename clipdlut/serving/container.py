"""The Bento's container image: one definition, two variants (README, Deployment).

- ``gpu``: torch's CUDA build from PyPI, whose wheels carry the CUDA runtime, cuBLAS and cuDNN themselves; the only
  part of CUDA a container needs from outside is the driver, which the NVIDIA container toolkit mounts from the
  host. So both variants start from the same plain Debian base, and no CUDA base image is needed (measured in
  bench/results.md: the CUDA base would add its own copy of those libraries to the image's size).
- ``cpu``: torch's CPU build, from a wheelhouse in the Bento (``wheels/``, made by ``make container`` with the
  host's own pip: the package index serves only the CUDA build under this version); for API hosts and CPU machines.

The base is Debian bookworm with its Python 3.11 (``deploy/container/base-image.sh`` makes it from Debian's
packages where no image registry can be reached; elsewhere any image with the same packages does), so uv finds a
Python and downloads none. Every download of the build goes to the package index, through the CA bundle at the
system's path: a build behind a TLS-intercepting proxy mounts the host's bundle there.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import bentoml


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:  # (inside the image, where nothing is built: uv is not a package there)
        return None


TORCH = (_installed("torch") or "").split("+")[0]  # the torch of this environment (the Makefile's TORCH_VERSION)
UV = _installed("uv")  # the uv that installs the image's packages: the one that locked them (`bentoml build`)
CN_CLIP = "cn_clip==1.6.0"
VARIANTS = ("gpu", "cpu")
# the system's CA bundle, for pip, uv and Python alike (a build behind a proxy mounts the host's bundle over it)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
JOBS_DIR = "/home/bentoml/clipdlut"  # the job store's folder by default (BENTOML_HOME/clipdlut): mount a volume here
WHEELS = "wheels"  # the Bento's wheelhouse (the CPU variant's torch), next to pyproject.toml
TLS_ENVS = [{"name": "SSL_CERT_FILE", "value": CA_BUNDLE}, {"name": "PIP_CERT", "value": CA_BUNDLE},
            {"name": "UV_NATIVE_TLS", "value": "1"}]
MEMORY_ENVS = [{"name": "MALLOC_ARENA_MAX", "value": "2"}]  # (clipdlut.serving.memory: bounded by the work in flight)


def cpu_torch_wheel(root: Path = Path(".")) -> str:
    """The CPU torch wheel in the wheelhouse, relative to ``root`` (the build context)."""
    found = sorted((root / WHEELS).glob(f"torch-{TORCH}+cpu-*.whl"))
    if not found:
        raise FileNotFoundError(f"no torch {TORCH} CPU wheel in {WHEELS}/: `make container VARIANT=cpu` puts it there "
                                f"(pip download --no-deps -d {WHEELS} torch=={TORCH}, from an index that serves the "
                                "CPU build: https://download.pytorch.org/whl/cpu)")
    return str(found[-1].relative_to(root))


def image(variant: str, base: str) -> bentoml.images.Image:
    """The image of ``variant`` on ``base`` (an image with Debian bookworm's python3, python3-venv, python3-pip,
    ca-certificates and passwd)."""
    if variant not in VARIANTS:
        raise ValueError(f"CLIPDLUT_IMAGE_VARIANT={variant!r}: choose one of {', '.join(VARIANTS)}")
    torch = [f"./{cpu_torch_wheel()}"] if variant == "cpu" else [f"torch=={TORCH}"]
    # (distro: none of BentoML's, whose default first step would apt-get a compiler into the image)
    return (bentoml.images.Image(base_image=base, distro="debian-bookworm", python_version="3.11")
            .run("python3 -m pip install --break-system-packages --no-cache-dir --root-user-action=ignore "
                 + (f"uv=={UV}" if UV else "uv"))
            # (owned by the image's user: a volume mounted there starts with that owner)
            .run(f"mkdir -p {JOBS_DIR} && chown bentoml:bentoml {JOBS_DIR}")
            .python_packages(*torch)
            .pyproject_toml("pyproject.toml")
            .run(f"uv pip install --no-deps {CN_CLIP}"))  # (its declared torchvision is training-only: compat.py)
