"""Fixtures that build tiny models and images in code (no downloads, no files in the repo)."""

from __future__ import annotations

import io
import re
import time
import urllib.parse

import numpy as np
import pytest
import torch
from PIL import Image

from clipdlut.guidance import Guide
from clipdlut.models import load_model


@pytest.fixture(scope="session")
def guide() -> Guide:
    """The tiny random Chinese-CLIP model on CPU."""
    return Guide(load_model("tiny", device="cpu"))


def gradient_image(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A colourful, smooth test photo with some noise: every channel varies across the frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = x / max(w - 1, 1)
    g = y / max(h - 1, 1)
    b = 0.5 + 0.5 * np.sin(6 * r + 3 * g + seed)
    arr = np.stack([r, g, b], -1) * 220 + rng.normal(0, 8, (h, w, 3)) + 16
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def all_levels_image() -> Image.Image:
    """All 256^3 ... too many; instead every 8-bit level on every channel, plus random colours."""
    rng = np.random.default_rng(1)
    levels = np.arange(256, dtype=np.uint8)
    rows = [np.stack([levels, levels, levels], -1), np.stack([levels, levels[::-1], levels], -1),
            rng.integers(0, 256, (256, 3), dtype=np.uint8), rng.integers(0, 256, (256, 3), dtype=np.uint8)]
    return Image.fromarray(np.stack(rows), "RGB")


def random_smooth_lut(n: int, seed: int, amount: float = 0.25) -> torch.Tensor:
    """A random LUT: identity plus a smooth random field (low-frequency), kept within [0, 1]."""
    from clipdlut.lut import identity

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 3, 3, 3, generator=g, dtype=torch.float64) * amount
    field = torch.nn.functional.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)
    return (identity(n, dtype=torch.float64) + field).clamp(0, 1)


def wait(predicate, timeout: float = 120.0, every: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def wait_ready(get, status: int = 200, timeout: float = 120.0, alive=lambda: None, every: float = 0.1):
    """The tests' one readiness wait: poll ``get("/readyz")`` (a test client's ``get``, or one on a server's URL)
    until it answers ``status``; the last response. ``alive`` fails the wait at once (by raising) when what is
    being waited for has died; a connection refused is a server still starting."""
    import httpx

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        alive()
        try:
            last = get("/readyz")
            if last.status_code == status:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(every)
    raise AssertionError(f"/readyz never answered {status}; last: "
                         f"{last.status_code if last is not None else 'no answer'} {last.text[:300] if last else ''}")


def on(url: str, timeout: float = 2.0):
    """A ``get(path)`` on the server at ``url`` (for :func:`wait_ready`)."""
    import httpx

    return lambda path: httpx.get(url + path, timeout=timeout)


async def until(fetch, check=bool, timeout: float = 120.0, every: float = 0.02):
    """Poll ``fetch`` (a value or an awaitable of one) until ``check`` accepts it (returned), or fail."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if inspect.isawaitable(value):
            value = await value
        if check(value):
            return value
        await asyncio.sleep(every)
    raise AssertionError("timed out")


def png_bytes(img: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **params)
    return buf.getvalue()


@pytest.fixture
def photo() -> Image.Image:
    return gradient_image()


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The ``service`` module, imported once with the test settings (it reads them at import)."""
    import importlib

    home = tmp_path_factory.mktemp("bentoml")
    mp = pytest.MonkeyPatch()
    for name, value in {"BENTOML_HOME": str(home), "CLIPDLUT_CLIP_MODEL": "tiny",
                        "CLIPDLUT_STORE": str(home / "jobs.db"), "CLIPDLUT_MAX_PIXELS": "1000000",
                        "CLIPDLUT_MAX_BODY_MB": "2", "CLIPDLUT_PROGRESS_EVERY": "2"}.items():
        mp.setenv(name, value)
    from _bentoml_impl.tasks.result import Sqlite3Store
    from bentoml._internal.configuration.containers import BentoMLContainer

    Sqlite3Store.init_db(BentoMLContainer.result_store_file.get())
    module = importlib.import_module("service")
    yield module
    mp.undo()


@pytest.fixture(scope="session")
def client(service):
    """Both services in-process behind Starlette's test client, once the model is loaded."""

    from starlette.testclient import TestClient

    with TestClient(service.Retouch.to_asgi()) as c:
        wait_ready(c.get, timeout=60)
        yield c


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    """podman with an image store of its own for the session: every image is built here, from nothing."""
    from tests.containers import Podman

    engine = Podman(tmp_path_factory.mktemp("podman"))
    yield engine
    engine.clean()


@pytest.fixture(scope="session")
def built(podman, tmp_path_factory) -> dict[str, str]:
    """The CPU image, built by the README's commands (tiny weights from a file); the environment they ran in."""
    from tests.containers import build_as_the_readme_says

    return build_as_the_readme_says(podman, tmp_path_factory.mktemp("bentoml-home"))


@pytest.fixture(scope="session")
def redis_image(podman, tmp_path_factory) -> str:
    """Debian's redis-server as an image (the Redis of the scale-out and of the Kubernetes manifests)."""
    from tests.containers import redis_image

    return redis_image(podman, tmp_path_factory.mktemp("redis-image"))


def camera_jpeg(img: Image.Image) -> tuple[bytes, dict]:
    """A JPEG as a camera writes it (EXIF: make, model, date taken, GPS; rotated 90 degrees by its orientation tag),
    and the EXIF a graded copy must keep (the orientation upright, as the pixels are then)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS R5", 6
    exif.get_ifd(0x8769)[0x9003] = "2026:12:06 10:00:00"
    exif.get_ifd(0x8825).update({1: "N", 2: (39.0, 54.0, 0.0)})
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue(), {"make": "Canon", "model": "EOS R5", "taken": "2026:12:06 10:00:00", "gps": "N"}


def kept_exif(data: bytes) -> dict:
    exif = Image.open(io.BytesIO(data)).getexif()
    return {"make": exif.get(0x010F), "model": exif.get(0x0110), "taken": exif.get_ifd(0x8769).get(0x9003),
            "gps": exif.get_ifd(0x8825).get(1), "orientation": exif.get(0x0112, 1)}


def page_files(get) -> dict[str, bytes]:
    """Every file the landing page and the web page load, fetched with ``get(path) -> response``, each asserted to
    come from the service itself (no CDN: the page works offline and in a container) and to be served."""
    found, todo = {}, ["/", "/ui/"]
    while todo:
        path = todo.pop()
        r = get(path)
        assert r.status_code == 200, (path, r.status_code)
        found[path] = r.content
        text = r.content.decode("utf-8", "replace") if not path.endswith((".png", ".jpg")) else ""
        refs = re.findall(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)=["']?([^"' >]+)""", text)
        refs += re.findall(r"""^import\b[^;]*?\bfrom\s+["']([^"']+)["']""", text, re.M)
        for ref in refs:
            if ref.startswith("data:"):
                continue
            assert "//" not in ref, f"{path} loads {ref} from elsewhere"
            target = urllib.parse.urljoin(path, ref)
            if target not in found and target not in todo:
                todo.append(target)
    return found
