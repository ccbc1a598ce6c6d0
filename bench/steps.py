"""Optimizer cost: one step and one job, ours against the original system's computation; batch scaling;
peak memory."""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable

import psutil
import torch
from PIL import Image

from bench.baseline import STEPS as ORIGINAL_STEPS
from bench.baseline import OriginalJob
from clipdlut.guidance import Guide
from clipdlut.imaging import working_copy
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.options import DEFAULT_STEPS
from clipdlut.serving.settings import Settings
from clipdlut.tensors import to_tensor

DEFAULTS = Settings()
PROMPTS = ["赛博朋克风格的夜晚城市", "温暖的金色黄昏胶片", "冷色调的清晨", "复古胶片"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeat: int = 2) -> float:
    """Median wall time of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones (the device is synchronised
    around each): the median, so that one call slowed by another process does not move the figure."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PeakMemory:
    """Peak resident memory of the process (CPU) or peak allocated memory (CUDA) while the block runs, MiB.

    On CPU the figure is the whole process: the model included, and what the C allocator still holds from
    earlier measurements after it has been asked to hand freed memory back (glibc's ``malloc_trim``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cpu" and sys.platform == "linux":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss / 2**20

        def sample() -> None:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def ours(guide: Guide, photo: Image.Image, jobs: int, views: int = DEFAULTS.views, repeat: int = 2,
         lut_size: int = 33, warmup: int = 1) -> dict:
    """Seconds per step of a batch of ``jobs`` jobs with the service's defaults, and the peak memory."""
    working = working_copy(photo, DEFAULTS.working_size)
    opt = BatchedOptimizer(guide)
    opt.add([JobSpec(f"j{i}", working, PROMPTS[i % len(PROMPTS)], steps=10**6, lut_size=lut_size, views=views,
                     seed=i, progress_every=10**6) for i in range(jobs)])
    with PeakMemory(guide.device) as mem:
        step = seconds_per_call(opt.step, guide.device, warmup=warmup, repeat=repeat)
    return {"jobs": jobs, "views": views, "step_s": step, "job_steps_per_s": jobs / step, "peak_mib": mem.peak}


def original(guide: Guide, photo: Image.Image, repeat: int = 2) -> dict:
    """Seconds per step of the original system's computation (batch 1, fp32) and its peak memory."""
    job = OriginalJob(guide, to_tensor(photo), PROMPTS[0])
    with PeakMemory(guide.device) as mem:
        step = seconds_per_call(job.step, guide.device, repeat=repeat)
    return {"jobs": 1, "step_s": step, "job_s": step * ORIGINAL_STEPS, "steps": ORIGINAL_STEPS,
            "peak_mib": mem.peak}


def job_cost(step: dict, steps: int = DEFAULT_STEPS) -> dict:
    """One default job, from the cost of a step (a job is its steps; admission is one forward)."""
    return {**step, "steps": steps, "job_s": step["step_s"] * steps}


def scaling(guide: Guide, photo: Image.Image, sizes: tuple[int, ...], repeat: int = 1,
            warmup: int = 1) -> list[dict]:
    """Throughput (job-steps per second) with 1, 2, 4, ... jobs in one batch, and the gain over 1 job."""
    rows = [ours(guide, photo, n, repeat=repeat, warmup=warmup) for n in sizes]
    for row in rows:
        row["speedup_vs_1"] = row["job_steps_per_s"] / rows[0]["job_steps_per_s"]
    return rows
