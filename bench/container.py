"""The container next to the process: the CPU image built from nothing by the README's commands (its size and the
build's time), and the optimizer's cold start in a container (`start-http-server --service-name
clipdlut-optimizer`, as Kubernetes and BentoCloud start it) with the tiny model packaged in the image, and with
ViT-B-16's architecture from a checkpoint file on a volume: seconds from `podman run` to ready and to the first
finished job. The process's own cold start is `serving.cold_start` in the same run. Needs podman (and mmdebstrap);
without them the section says why."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench import serving
from tests.containers import Podman, build_as_the_readme_says, podman_missing
from tests.live import free_port

IMAGE = "clipdlut:cpu"  # (what the README's `make container VARIANT=cpu` tags)
GPU_RECORD = Path(__file__).resolve().parent / "gpu_image.json"  # `python -m bench.container gpu-image`, by hand
# What torch's CUDA build brings inside the GPU image, measured in the image itself
_PROBE = """
import glob, json, os, subprocess, torch
def mb(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs) / 1e6
site = os.path.dirname(os.path.dirname(torch.__file__))
lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cuda.so")
links = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "torch_mb": mb(os.path.dirname(torch.__file__)), "nvidia_wheels_mb": mb(os.path.join(site, "nvidia")),
                  "unresolved_libraries": [l.split()[0] for l in links.splitlines() if "not found" in l],
                  "cudart_from": next((l.split("=>")[1].split()[0] for l in links.splitlines() if "libcudart" in l),
                                      None)}))
"""
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
    rows of the same run), and the GPU image as recorded by hand."""
    out = [""]
    if "skipped" in r:
        out.append(f"The container: not measured in this run ({r['skipped']}).")
    else:
        by_model = {row["model"].split(" ")[0]: row for row in process}
        nan = float("nan")
        out += [f"The container (`{r['image']}`, the CPU variant, built from nothing by the README's commands in "
                f"{r['build_s']:.0f} s: {r['image_mb']:.0f} MB, of which the Debian base {r['base_mb']:.0f} MB). "
                "The optimizer's cold start in a container next to the process's:", "",
                "| model | container: run to ready | to the first job | process: start to ready | to the first job |",
                "| --- | --- | --- | --- | --- |"]
        for row in r["cold_start"]:
            p = by_model.get(row["model"].split(" ")[0], {})
            out.append(f"| {row['model']}, {row['steps']} steps | {row['to_ready_s']:.1f} s | "
                       f"{row['to_first_job_s']:.1f} s | {p.get('to_ready_s', nan):.1f} s | "
                       f"{p.get('to_first_job_s', nan):.1f} s |")
    if GPU_RECORD.exists():
        g = json.loads(GPU_RECORD.read_text())
        out += ["", f"The GPU variant (`{g['image']}`, built by hand with `make container`, recorded with "
                f"`{g['command']}` on {g['recorded']}): {g['image_mb']:.0f} MB, of which torch {g['torch_mb']:.0f} MB "
                f"and the CUDA libraries its wheels bring (CUDA {g['cuda']}, cuDNN {g['cudnn']}) "
                f"{g['nvidia_wheels_mb']:.0f} MB. torch loads the CUDA runtime from those wheels "
                f"(`{g['cudart_from'].split('site-packages/')[-1]}`) and nothing it links is missing from the image "
                f"({len(g['unresolved_libraries'])} unresolved libraries): only the driver comes from the host, so "
                "no CUDA base image is needed (one would add a second, unused copy of these libraries)."]
    return out


def record_gpu_image(tag: str = "clipdlut:gpu") -> dict:
    """The GPU image's size and what its CUDA libraries are (built by hand: `make container`, several GB from the
    package index), written to ``bench/gpu_image.json`` for the results."""
    podman = Podman.default()
    size = int(podman("image", "inspect", "--format={{.Size}}", tag).stdout) / 1e6
    probe = podman("run", "--rm", "--entrypoint=/app/.venv/bin/python", tag, "-c", _PROBE, timeout=300).stdout
    record = {"image": tag, "image_mb": size, **json.loads(probe.strip().splitlines()[-1]),
              "recorded": time.strftime("%Y-%m-%d"), "command": f"python -m bench.container gpu-image {tag}"}
    GPU_RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["gpu-image"]:
        raise SystemExit("usage: python -m bench.container gpu-image [TAG]   (after `make container`)")
    print(json.dumps(record_gpu_image(*sys.argv[2:3]), indent=1))
