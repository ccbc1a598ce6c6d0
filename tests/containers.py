"""Containers for the container tests: podman (Debian's package) with a storage of its own per test session, so every
image is built from nothing by the project's own commands, and containers started as a platform starts them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.conftest import on, wait_ready
from tests.live import ONE_THREAD, free_port

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "container" / "containers.conf"


def podman_missing() -> str | None:
    """Why the container tests cannot run here (None when they can)."""
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make test installs podman, runc, catatonit and mmdebstrap with apt " \
                   "where it can)"
    return None


class Podman:
    """podman with this project's settings (``containers.conf``) and an image store under ``folder``."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        storage = folder / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{folder / "graph"}"\n'
                           f'runroot = "{folder / "run"}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONF), "CONTAINERS_STORAGE_CONF": str(storage)}

    @classmethod
    def default(cls) -> Podman:
        """podman with this project's settings and the image store the environment names (the machine's own)."""
        engine = cls.__new__(cls)
        engine.env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONF))}
        return engine

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        return r

    def run(self, image: str, name: str, *args: str, env: dict[str, str] | None = None,
            volumes: tuple[str, ...] = ()) -> Container:
        """A detached container of ``image`` named ``name`` (the entrypoint's arguments ``args``), listening on a
        free port of the host (``PORT``, as platforms set it)."""
        port = free_port()
        flags = [f"--env=PORT={port}", *(f"--env={k}={v}" for k, v in {**ONE_THREAD, **(env or {})}.items()),
                 *(f"--volume={v}" for v in volumes)]
        self("run", "--detach", f"--name={name}", *flags, image, *args)
        return Container(self, name, port)

    def clean(self) -> None:
        """Every container and image of this store gone (its overlay mounts too)."""
        self("rm", "--all", "--force", "--time=0", check=False)
        self("system", "reset", "--force", check=False, timeout=300)


class Container:
    """A running container: its URL on the host, its log, and how it stops."""

    def __init__(self, podman: Podman, name: str, port: int):
        self.podman, self.name, self.port = podman, name, port
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        def alive() -> None:
            state = self.podman("inspect", "--format={{.State.Running}}", self.name).stdout.strip()
            assert state == "true", f"{self.name} exited:\n{self.logs()[-3000:]}"

        try:
            wait_ready(on(self.url), timeout=timeout, alive=alive, every=0.5)
        except AssertionError as e:
            raise AssertionError(f"{self.name}: {e}\n{self.logs()[-3000:]}") from None

    def logs(self) -> str:
        r = self.podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def stop(self, grace_s: int = 30) -> tuple[float, int]:
        """``podman stop``: SIGTERM to PID 1, SIGKILL after ``grace_s``; (seconds it took, exit code)."""
        t0 = time.monotonic()
        self.podman("stop", f"--time={grace_s}", self.name, timeout=grace_s + 60)
        took = time.monotonic() - t0
        return took, int(self.podman("inspect", "--format={{.State.ExitCode}}", self.name).stdout.strip())

    def kill(self) -> None:
        """SIGKILL the whole container, as a lost host would be."""
        self.podman("kill", "--signal=KILL", self.name)

    def user(self) -> str:
        """The user its main process runs as."""
        return self.podman("top", self.name, "user").stdout.splitlines()[1].strip()


def readme_block() -> list[str]:
    """The README's container commands (the Deployment block that builds the CPU image), continuations joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "make container VARIANT=cpu" in b)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]


def sh(command: str, env: dict[str, str], timeout: float = 1200) -> str:
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def build_as_the_readme_says(podman: Podman, home: Path) -> dict[str, str]:
    """The README's commands up to the image, with the tiny model's checkpoint standing in for real weights; the
    environment they ran in (BentoML home, weights folder, podman's store), for the README's `podman run`."""
    env = {**podman.env, "BENTOML_HOME": str(home), "CLIPDLUT_WEIGHTS_DIR": str(home / "weights"),
           "BENTOML_DO_NOT_TRACK": "true", "CLIPDLUT_CLIP_MODEL": "tiny"}
    for line in readme_block():
        if line.startswith("export CLIPDLUT_CLIP_MODEL="):
            continue  # (the test's model: tiny, from a checkpoint file as real weights are)
        if line.startswith(("make ", ".venv/")):
            sh(line, env)
    return env


def redis_image(podman: Podman, folder: Path, tag: str = "clipdlut-test-redis") -> str:
    """Debian's redis-server in an image of its own, made as the base is (from Debian's packages)."""
    sh(f"mmdebstrap --quiet --variant=apt --include=redis-server bookworm {folder}/rootfs.tar && "
       f"podman import --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' {folder}/rootfs.tar {tag} >/dev/null",
       podman.env, timeout=600)
    return tag
