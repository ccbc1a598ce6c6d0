"""``python -m bench.soak``: does any process's memory grow with the jobs it has run? (Apart from ``make bench``: it
takes an hour.)

Two topologies under the project's locust users (both APIs, 512 px photos, tiny model), each until ``--jobs`` jobs
have ended or ``--minutes`` have passed: ``one host`` (``bentoml serve service:Retouch``, the SQLite store) and
``redis, two API replicas`` (Redis, two API replicas behind HAProxy, one optimizer). The resident memory of every
process of every server is sampled every ``--every`` seconds; after a warm-up (the first quarter of the jobs), the
growth per 1,000 jobs of each process is the slope of a least-squares line through its samples against the jobs
ended so far. Results: ``bench/soak.json`` and a section of ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import psutil

from tests.live import Proxy, RedisServer, Server, host

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOAD = {"LOAD_STEPS": "20", "LOAD_IMAGE_SIDE": "512"}
SOAK = HERE / "soak.json"
TITLE = "## Soak: memory per job"
WARM_UP = 0.25  # the share of the jobs whose samples are left out of the slope (caches fill, pools grow)


def kind(process: psutil.Process) -> str:
    """What a process of a server is: the API's worker, the optimizer's, BentoML's arbiter, Redis, the router."""
    line = " ".join(process.cmdline())
    if "redis-server" in line:
        return "redis"
    if "haproxy" in line:
        return "router"
    if "clipdlut-optimizer" in line:
        return "optimizer"
    return "api" if "--worker-id" in line else "arbiter"


class Sampler:
    """The RSS of each process of the given trees every ``every`` seconds, and the jobs ended by then."""

    def __init__(self, roots: dict[str, int], jobs_ended, every: float):
        self.roots, self.jobs_ended, self.every = roots, jobs_ended, every
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            rss: dict[str, float] = {}
            for name, pid in self.roots.items():
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for p in procs:
                    try:
                        rss[f"{name} {kind(p)} {p.pid}"] = p.memory_info().rss / 2**20
                    except psutil.NoSuchProcess:
                        pass
            self.samples.append({"t": time.time(), "jobs": self.jobs_ended(), "rss_mb": rss})


class Locust:
    """The project's locust users against ``url``, with the full stats history (the jobs ended over time)."""

    def __init__(self, url: str, folder: Path, users: int, minutes: float, env: dict[str, str]):
        self.prefix = folder / "locust"
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "locustfile.py"),
                                      "--headless", "-u", str(users), "-r", str(users), "-t", f"{int(minutes * 60)}s",
                                      "--host", url, "--csv", str(self.prefix), "--csv-full-history",
                                      "--only-summary"], cwd=ROOT, env={**os.environ, **env, **LOAD},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def jobs_ended(self) -> int:
        """Jobs ended so far (finished or failed: each is one JOB request), from locust's history."""
        try:
            rows = list(csv.DictReader(open(f"{self.prefix}_stats_history.csv")))
        except (OSError, csv.Error):
            return 0
        latest: dict[str, int] = {}
        for row in rows:
            if row.get("Type") == "JOB":
                latest[row["Name"]] = int(row["Total Request Count"])
        return sum(latest.values())

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # (locust stops its users and writes its summary)
        self.proc.wait(timeout=120)
        rows = [r for r in csv.DictReader(open(f"{self.prefix}_stats.csv")) if r["Type"] == "JOB"]
        return {"jobs": sum(int(r["Request Count"]) for r in rows),
                "failed_jobs": sum(int(r["Failure Count"]) for r in rows)}


def _pid(server: Server | RedisServer | Proxy) -> int:
    assert server.proc is not None, "started"
    return server.proc.pid


def growth(samples: list[dict]) -> dict[str, dict]:
    """Per process: its RSS after the warm-up and at the end, and the slope in MB per 1,000 jobs after the warm-up."""
    total = samples[-1]["jobs"]
    after = [s for s in samples if s["jobs"] >= WARM_UP * total]
    out = {}
    for name in sorted(samples[-1]["rss_mb"]):
        points = [(s["jobs"], s["rss_mb"][name]) for s in after if name in s["rss_mb"]]
        if len(points) < 3 or points[-1][0] == points[0][0]:
            continue
        jobs, rss = np.array(points, dtype=float).T
        slope = float(np.polyfit(jobs, rss, 1)[0]) * 1000
        out[name] = {"kind": name.split()[1], "rss_after_warm_up_mb": float(rss[0]), "rss_end_mb": float(rss[-1]),
                     "rss_max_mb": float(rss.max()), "mb_per_1000_jobs": slope}
    return out


def run(topology: str, jobs: int, minutes: float, users: int, every: float, folder: Path) -> dict:
    """One topology until ``jobs`` jobs have ended or ``minutes`` have passed."""
    with ExitStack() as stack:
        roots: dict[str, int] = {}
        if topology == "one host":
            api = Server(folder / "api", {}).start()
            stack.callback(api.stop)
            api.wait_ready()
            url, roots["api-host"] = api.url, _pid(api)
        else:
            store = RedisServer(folder / "redis").start()
            stack.callback(store.stop)
            optimizer = host(folder / "optimizer", "service:Optimizer").start()
            stack.callback(optimizer.stop)
            apis = [host(folder / f"api-{i}", "service:Retouch", CLIPDLUT_OPTIMIZER_URL=optimizer.url,
                         CLIPDLUT_STORE=store.url).start() for i in range(2)]
            for api in apis:
                stack.callback(api.stop)
            for server in (optimizer, *apis):
                server.wait_ready()
            router = Proxy(folder, [a.url for a in apis]).start()
            stack.callback(router.stop)
            url = router.url
            roots.update({"redis-host": _pid(store), "optimizer-host": _pid(optimizer), "api-host-0": _pid(apis[0]),
                          "api-host-1": _pid(apis[1]), "router": _pid(router)})
        load = Locust(url, folder, users, minutes, {})
        started = time.monotonic()
        with Sampler(roots, load.jobs_ended, every) as sampler:
            while load.proc.poll() is None and load.jobs_ended() < jobs:
                time.sleep(5)
            counts = load.stop()
    return {"topology": topology, "users": users, "minutes": (time.monotonic() - started) / 60, **counts,
            "samples": sampler.samples, "processes": growth(sampler.samples)}


def summary(results: list[dict]) -> list[str]:
    """The section of bench/results.md."""
    lines = [f"{TITLE} (`python -m bench.soak`)", "",
             f"Each topology under the project's locust users (both APIs, {LOAD['LOAD_IMAGE_SIDE']} px photos, "
             f"{LOAD['LOAD_STEPS']} steps, tiny model); RSS of every process sampled throughout; growth is the slope "
             f"of RSS against jobs ended, after the first {WARM_UP:.0%} of the jobs.", "",
             "| topology | minutes | jobs (failed) | process | RSS after warm-up | at the end | MB per 1,000 jobs |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, p in r["processes"].items():
            if p["kind"] == "arbiter":  # (BentoML's process supervisor: a few MB that never move)
                continue
            lines.append(f"| {r['topology']} | {r['minutes']:.1f} | {r['jobs']} ({r['failed_jobs']}) | "
                         f"{name.rsplit(' ', 1)[0]} | {p['rss_after_warm_up_mb']:.0f} MB | {p['rss_end_mb']:.0f} MB | "
                         f"{p['mb_per_1000_jobs']:+.1f} |")
    if any(p["kind"] == "redis" for r in results for p in r["processes"].values()):
        lines += ["", "Redis grows by what it is meant to keep: each finished job's result files until "
                      "`CLIPDLUT_RETENTION_S` (README, Scaling out, sizes it)."]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="stop a topology once this many jobs have ended")
    parser.add_argument("--minutes", type=float, default=30.0, help="... or once this long has passed")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between RSS samples")
    parser.add_argument("--topology", choices=["one host", "redis"], action="append",
                        help="run only this one (default: both)")
    args = parser.parse_args(argv)
    results = []
    for topology in args.topology or ["one host", "redis"]:
        with tempfile.TemporaryDirectory() as folder:
            name = topology if topology == "one host" else "redis, two API replicas"
            results.append(run(name, args.jobs, args.minutes, args.users, args.every, Path(folder)))
        print("\n".join(summary(results[-1:])), flush=True)
    command = "python -m bench.soak" + (f" {' '.join(argv or sys.argv[1:])}" if (argv or sys.argv[1:]) else "")
    SOAK.write_text(json.dumps({"command": command, "finished": time.strftime("%Y-%m-%d %H:%M"),
                                "machine": f"{os.cpu_count()} cores", "results": results}, indent=1) + "\n")
    path = HERE / "results.md"  # (its soak section replaced; `make bench` writes the rest, and this section from SOAK)
    head = path.read_text().split(f"\n{TITLE}")[0].rstrip("\n") if path.exists() else ""
    path.write_text(head + "\n\n" + "\n".join(section()) + "\n")


def section() -> list[str]:
    """The soak section of bench/results.md, from the last run's ``bench/soak.json`` (none before a first run)."""
    if not SOAK.exists():
        return []
    last = json.loads(SOAK.read_text())
    return summary(last["results"]) + ["", f"Command: `{last['command']}` (finished {last['finished']}, "
                                           f"{last['machine']})."]


if __name__ == "__main__":
    main()
