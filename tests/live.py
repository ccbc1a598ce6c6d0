"""A real ``bentoml serve service:Retouch`` in a subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running server: its URL, its log file, and its process group."""

    def __init__(self, home: Path, env: dict[str, str], port: int | None = None):
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "serve.log"
        self.env = {**os.environ, "BENTOML_HOME": str(home), "CLIPDLUT_STORE": str(home / "jobs.db"),
                    "CLIPDLUT_CLIP_MODEL": "tiny", "HF_ENDPOINT": "http://127.0.0.1:9", **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        bentoml = Path(sys.executable).parent / "bentoml"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([str(bentoml), "serve", "service:Retouch", "--port", str(self.port)],
                                     cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0, status: int = 200) -> httpx.Response:
        """Poll ``/readyz`` until it answers ``status``; the last response."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited:\n{self.log()}"
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == status:
                    return r
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"/readyz never answered {status}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextmanager
def serving(home: Path, ready: bool = True, **env: str) -> Iterator[Server]:
    """Start a server (tiny model unless told otherwise), wait until ready, stop it afterwards."""
    server = Server(home, env).start()
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        server.stop()
