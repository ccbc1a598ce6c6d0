"""The container next to the process: the CPU image built from nothing by the README's commands (its size and the
build's time), and the optimizer's cold start in a container (`start-http-server --service-name
clipdlut-optimizer`, as Kubernetes and BentoCloud start it) with the tiny model packaged in the image, and with
ViT-B-16's architecture from a checkpoint file on a volume: seconds from `podman run` to ready and to the first
finished job. The process's own cold start is `serving.cold_start` in the same run. Needs podman (and mmdebstrap);
without them the section says why."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import serving
from tests.containers import Podman, build_as_the_readme_says, podman_missing
from tests.live import free_port

IMAGE = "clipdlut:cpu"  # (what the README's `make container VARIANT=cpu` tags)
OPTIMIZER = ("start-http-server", "--service-name", "clipdlut-optimizer")


def cold_start(podman: Podman, label: str, *flags: str, steps: int = 3) -> dict:
    """An optimizer container started now; seconds to ready and to a first job (sent again until taken)."""
    port = free_port()
    name = f"cold-{port}"
    started = time.perf_counter()
    podman("run", "--detach", f"--name={name}", f"--env=PORT={port}", *flags, IMAGE, *OPTIMIZER)
    try:
        ready_at, finished_at = serving.first_job(f"http://127.0.0.1:{port}", steps)
    finally:
        podman("rm", "--force", "--time=0", name, check=False)
    return {"model": label, "steps": steps, "to_ready_s": ready_at - started, "to_first_job_s": finished_at - started}


def run(quick: bool) -> dict:
    """The image's build and size, and the optimizer's cold starts in a container."""
    if reason := podman_missing():
        return {"skipped": reason}
    with tempfile.TemporaryDirectory() as folder:
        podman = Podman(Path(folder) / "podman")
        try:
            t0 = time.perf_counter()
            build_as_the_readme_says(podman, Path(folder) / "home")
            built_s = time.perf_counter() - t0
            sizes = {tag: int(podman("image", "inspect", "--format={{.Size}}", tag).stdout) / 1e6
                     for tag in (IMAGE, "clipdlut-base:bookworm")}
            rows = [cold_start(podman, "tiny (packaged in the image)")]
            if not quick:
                checkpoint = serving.write_random_checkpoint("ViT-B-16", Path(folder))
                rows.append(cold_start(podman, "ViT-B-16 (checkpoint file on a volume)",
                                       f"--volume={checkpoint}:/weights/{checkpoint.name}:ro",
                                       f"--env=CLIPDLUT_CLIP_MODEL=/weights/{checkpoint.name}"))
        finally:
            podman.clean()
    return {"image": IMAGE, "build_s": built_s, "image_mb": sizes[IMAGE],
            "base_mb": sizes["clipdlut-base:bookworm"], "cold_start": rows}


def lines(r: dict, process: list[dict]) -> list[str]:
    """The section of bench/results.md: the container's figures next to the process's (``process``: the cold start
    rows of the same run)."""
    if "skipped" in r:
        return ["", f"The container: not measured ({r['skipped']})."]
    by_model = {row["model"].split(" ")[0]: row for row in process}
    out = ["", f"The container (`{r['image']}`, the CPU variant, built from nothing by the README's commands in "
           f"{r['build_s']:.0f} s: {r['image_mb']:.0f} MB, of which the Debian base {r['base_mb']:.0f} MB). The "
           "optimizer's cold start in a container next to the process's:", "",
           "| model | container: run to ready | to the first job | process: start to ready | to the first job |",
           "| --- | --- | --- | --- | --- |"]
    for row in r["cold_start"]:
        p = by_model.get(row["model"].split(" ")[0], {})
        nan = float("nan")
        out.append(f"| {row['model']}, {row['steps']} steps | {row['to_ready_s']:.1f} s | "
                   f"{row['to_first_job_s']:.1f} s | {p.get('to_ready_s', nan):.1f} s | "
                   f"{p.get('to_first_job_s', nan):.1f} s |")
    return out
