"""Real servers in subprocesses for end-to-end tests: ``bentoml serve`` (one host or split, each service on a
host of its own) and a reverse proxy from Debian's packages standing in for the platform's router."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psutil

from tests.conftest import on, wait_ready

ROOT = Path(__file__).resolve().parent.parent
# Each server (and container) stands for a host of its own, but here several share two cores with the tests, and
# torch's threads spin while they wait for a core: with two threads each, two optimizers stepped the scale-out
# test's jobs twenty times slower. So every one started here runs torch on one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_host(folder: Path) -> Path:
    """A folder standing in for a host of its own: a copy of the code, and its own BentoML home and TMPDIR."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("service.py", "pyproject.toml"):  # what the Bento carries (bentofile.yaml's include)
        shutil.copy2(ROOT / name, folder / name)
    # (with the compiled modules, times kept so they stay valid: each of a server's three processes would
    # otherwise compile the package again, a third of a second apiece)
    shutil.copytree(ROOT / "clipdlut", folder / "clipdlut", dirs_exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    return folder


class Server:
    """A running ``bentoml serve``: its URL, its log file, and its process tree."""

    def __init__(self, home: Path, env: dict[str, str], port: int | None = None, target: str = "service:Retouch",
                 cwd: Path = ROOT):
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "serve.log"
        self.target = target
        self.cwd = cwd
        # (only the settings given here: not the CLIPDLUT_ variables an in-process fixture has set for the session)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLIPDLUT_")}
        self.env = {**inherited, "BENTOML_HOME": str(home), "CLIPDLUT_STORE": str(home / "jobs.db"),
                    "CLIPDLUT_CLIP_MODEL": "tiny", "HF_ENDPOINT": "http://127.0.0.1:9", **ONE_THREAD, **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        bentoml = Path(sys.executable).parent / "bentoml"
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([str(bentoml), "serve", self.target, "--port", str(self.port)],
                                     cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0, status: int = 200) -> httpx.Response:
        """Wait until ``/readyz`` answers ``status`` (see :func:`tests.conftest.wait_ready`); the last response."""
        def alive() -> None:
            assert self.proc.poll() is None, f"the server exited:\n{self.log()}"

        try:
            return wait_ready(on(self.url), status, timeout, alive)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole tree (BentoML's workers run in sessions of their own), as a lost host would be."""
        if self.proc is None:
            return
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return self.kill()  # (no worker may outlive its test)
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        for p in children:  # workers left behind by an arbiter that did not stop them
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


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


def host(folder: Path, target: str, **env: str) -> Server:
    """A server on a host of its own (see :func:`own_host`): nothing on disk shared with any other."""
    own_host(folder)
    (folder / "bentoml").mkdir(exist_ok=True)
    return Server(folder / "bentoml", {"TMPDIR": str(folder / "tmp"), "CLIPDLUT_STORE": str(folder / "jobs.db"),
                                       **env}, target=target, cwd=folder)


@contextmanager
def split(folder: Path, api_env: dict[str, str] | None = None, **optimizer_env: str
          ) -> Iterator[tuple[Server, Server]]:
    """The two services on two hosts of their own: (api, optimizer), the API pointed at the optimizer by URL."""
    with ExitStack() as stack:
        optimizer = host(folder / "optimizer-host", "service:Optimizer", **optimizer_env).start()
        stack.callback(optimizer.stop)
        api = host(folder / "api-host", "service:Retouch", CLIPDLUT_OPTIMIZER_URL=optimizer.url,
                   **{**optimizer_env, **(api_env or {})}).start()
        stack.callback(api.stop)
        optimizer.wait_ready()
        api.wait_ready()
        yield api, optimizer


class _Daemon:
    """A server from Debian's packages on ``self.port`` of 127.0.0.1: started, waited for, killed."""

    port: int
    proc: subprocess.Popen | None = None

    def _spawn(self, args: list[str]):
        if self.proc is not None and self.proc.poll() is None:  # (started already: one process, never a lost one)
            return self
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"{Path(args[0]).name} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Proxy(_Daemon):
    """HAProxy (Debian's package) in front of several servers, on a free port: the platform's router."""

    def __init__(self, folder: Path, backends: list[str], rules: str = ""):
        """``rules``: HAProxy ``http-request`` lines of the frontend (e.g. answers the router gives itself)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "haproxy.cfg"
        servers = "\n".join(f"  server r{i} {b.removeprefix('http://')} check inter 500 fall 2 rise 1"
                            for i, b in enumerate(backends))
        self.config.write_text(f"""global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  retries 3
  option redispatch
frontend router
  bind 127.0.0.1:{self.port}
{rules}
  default_backend replicas
backend replicas
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
{servers}
""")

    def start(self) -> Proxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return self._spawn([binary, "-f", str(self.config), "-db"])


def optimizer_in_flight(url: str) -> float:
    """The optimizer's in-flight ``optimize`` requests (BentoML's own gauge on its ``/metrics``): its running jobs."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(
        r'^bentoml_service_request_in_progress\{[^}]*endpoint="/optimize"[^}]*\} (\S+)$', text, re.M))


def haproxy_missing() -> str | None:
    """Why the proxy tests cannot run here (None when they can)."""
    if shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists():
        return None
    return "haproxy is not installed (make test installs it with apt where it can)"


class RedisServer(_Daemon):
    """Debian's ``redis-server`` on a free port of 127.0.0.1, with AOF persistence in ``folder`` (as the README
    asks of a production Redis), for the tests of the Redis job store."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return self._spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                            "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
                            "--protected-mode", "yes"])


def redis_missing() -> str | None:
    """Why the Redis tests cannot run here (None when they can)."""
    if shutil.which("redis-server") or Path("/usr/bin/redis-server").exists():
        return None
    return "redis-server is not installed (make test installs it with apt where it can)"
