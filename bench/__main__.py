"""``python -m bench [--device cpu|cuda] [--quick]``: run every benchmark, write results JSON and a table.

Every comparison is a ratio of two measurements taken in this run on this machine. Weights are random
(cost does not depend on them). ``--quick`` uses the tiny model only (a smoke run of the code, seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from bench import apply, container, fairness, render, serving, soak, steps
from clipdlut.guidance import Guide
from clipdlut.models import load_model, load_random

HERE = Path(__file__).resolve().parent


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "torch": torch.__version__, "device": str(device),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def continuous_batching(tiny: Guide, photo: Image.Image, loads: tuple[float, ...], quick: bool) -> dict:
    """Continuous batching against lock-step on the same Poisson arrivals. A load is a fraction of the measured
    capacity in full batches (lock-step's own capacity is lower: a batch runs until its longest job ends)."""
    max_batch, small = 8, photo.resize((96, 64))  # the simulated jobs' working image
    step_1, step_full = (steps.ours(tiny, small, b, views=serving.VIEWS, repeat=15, lut_size=serving.LUT_SIZE)["step_s"]
                         for b in (1, max_batch))
    capacity = max_batch / (serving.MEAN_STEPS * step_full)  # jobs per second
    n, seeds = (12, (0,)) if quick else (80, (0, 1))
    rows = []
    for load in loads:
        raw = [serving.simulate(tiny, small, continuous, n, load * capacity, max_batch, seed)
               for seed in seeds for continuous in (False, True)]  # interleaved: a slow spell hits both modes
        lock, cont = (serving.summarize([r for r in raw if r["mode"] == mode]) for mode in ("lock-step", "continuous"))
        per_seed = [serving.summarize([c])["p95_latency_s"] / serving.summarize([ls])["p95_latency_s"]
                    for ls, c in zip(raw[::2], raw[1::2])]
        rows.append({"load": load, "arrival_rate_per_s": load * capacity, "runs": [lock, cont],
                     "p95_continuous_vs_lockstep": cont["p95_latency_s"] / lock["p95_latency_s"],
                     "p95_continuous_vs_lockstep_per_seed": per_seed,
                     "throughput_continuous_vs_lockstep": (cont["throughput_jobs_per_min"]
                                                           / lock["throughput_jobs_per_min"])})
    return {"model": "tiny", "jobs": n * len(seeds), "seeds": list(seeds), "max_batch": max_batch,
            "views": serving.VIEWS, "lut_size": serving.LUT_SIZE, "steps": [serving.MIN_STEPS, serving.MAX_STEPS],
            "step_s_1_job": step_1,
            f"step_s_{max_batch}_jobs": step_full, "capacity_jobs_per_s": capacity, "loads": rows}


def run(device: torch.device, quick: bool) -> dict:
    """Every section, in an order that keeps each one's figures clean: the millisecond-scale tiny-model timings
    first, in a small process; each big model's peak memory before its larger batches."""
    photo = render.photo(1200, 800)
    sizes = (1, 2, 4) if quick else (1, 2, 4, 8, 16)
    cpu = device.type == "cpu"
    # Big-model steps take seconds on a CPU: the targets' rows there are the median of 3 calls, the rest one
    # call on a model already warmed up by those; on a GPU every row is the median of 5.
    key, rest = (2, 2) if quick else (3, 1) if cpu else (5, 5)
    rest_warmup = 0 if cpu and not quick else 1
    results: dict = {"machine": machine(device), "quick": quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "section_s": {}}
    clock = time.perf_counter()

    def lap(section: str) -> None:
        nonlocal clock
        results["section_s"][section] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    tiny = Guide(load_model("tiny", device=device))
    results["scaling"] = {"tiny": steps.scaling(tiny, photo, sizes, repeat=5)}  # tiny steps: the median of 5
    lap("scaling_tiny")
    # (a CPU run has time for one load only)
    results["continuous_batching"] = continuous_batching(tiny, photo, (0.5,) if cpu else (0.5, 0.65), quick)
    lap("continuous_batching")
    results["render"] = render.render_12mp(os.cpu_count() or 1, rounds=1 if quick else 9)  # (quick: a smoke run)
    lap("render")
    results["apply"] = apply.at_scale("python -m bench" + (" --quick" if quick else ""), quick)
    lap("apply")

    default_name, original_name = ("tiny", "tiny") if quick else ("ViT-B-16", "ViT-L-14-336")
    default = tiny if quick else Guide(load_random(default_name, device))
    ours_default = steps.job_cost(steps.ours(default, photo, 1, repeat=key))
    if not quick:
        # (on CPU a step costs in proportion to the jobs in it: 16 adds minutes and nothing to learn)
        results["scaling"][default_name] = steps.scaling(default, photo, sizes[:4] if cpu else sizes, repeat=rest,
                                                         warmup=rest_warmup)
    del default
    lap("default_model")

    # The original ran fp32; ours computes in the serving dtype (bf16 autocast on a GPU), on the same weights.
    loaded = tiny.loaded if quick else load_random(original_name, device)
    original = steps.original(Guide(dataclasses.replace(loaded, dtype=torch.float32)), photo, repeat=key)
    big = Guide(loaded)
    same_1 = steps.job_cost(steps.ours(big, photo, 1, views=1, repeat=key))
    same_default = steps.job_cost(steps.ours(big, photo, 1, repeat=rest, warmup=rest_warmup))
    del big, loaded
    results["cost"] = {
        "models": {"ours_default": default_name, "original": original_name},
        "original": original, "ours_default": ours_default,
        "ours_same_model_1_view": same_1, "ours_same_model_default_views": same_default,
        "job_cheaper_default_vs_default": original["job_s"] / ours_default["job_s"],
        "step_cheaper_default_vs_default": original["step_s"] / ours_default["step_s"],
        "step_cheaper_same_model_1_view": original["step_s"] / same_1["step_s"],
        "step_cheaper_same_model_default_views": original["step_s"] / same_default["step_s"],
    }
    lap("original_model")
    rows = (("one host", "sqlite"), ("split", "redis")) if quick else (
        ("one host", "sqlite"), ("one host", "redis"), ("split", "sqlite"), ("split", "redis"))
    # (quick: a smoke run of the code, with jobs of 5 steps. The users' first jobs share a batch and end together,
    # about 3.5 s in here and past 4 s on a busy machine: a 4 s row once saw none end)
    load: dict = {"seconds": 8, "steps": 5} if quick else {"seconds": 30}
    results["service_overhead"] = [serving.locust_overhead(topology, store, **load) for topology, store in rows]
    lap("service_overhead")
    results["cold_start"] = [serving.cold_start("tiny", "tiny")]
    if not quick:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = serving.write_random_checkpoint(default_name, Path(folder))
            results["cold_start"].append(serving.cold_start(str(checkpoint), f"{default_name} (checkpoint file)"))
    lap("cold_start")
    results["fairness"] = fairness.run("python -m bench" + (" --quick" if quick else ""), quick)
    lap("fairness")
    # (the container tests build and run the same image; a quick run leaves its minutes out)
    results["container"] = {"skipped": "a --quick run builds no image"} if quick else container.run(quick)
    lap("container")
    results["soak"] = serving.soak(**({"seconds": 6, "steps": 5} if quick else {"seconds": 180}))
    lap("soak")
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return results


def table(r: dict) -> str:
    """The markdown the README shows."""
    m, c = r["machine"], r["cost"]
    mem = "allocated" if m["device"].startswith("cuda") else "RSS of the process"
    lines = [f"Machine: {m['processor']}, {m['cpu_cores']} cores, {m.get('gpu', 'no GPU')}, torch {m['torch']}, "
             f"device `{m['device']}`; run {r['started']}{' (quick)' if r['quick'] else ''}, "
             f"{sum(r['section_s'].values()) / 60:.1f} min.", "",
             "| cost | original system | ours | ours cheaper by |", "| --- | --- | --- | --- |",
             f"| one step, default vs default ({c['models']['original']} + MLP field vs "
             f"{c['models']['ours_default']}) | {c['original']['step_s']:.3f} s | {c['ours_default']['step_s']:.3f} s "
             f"| {c['step_cheaper_default_vs_default']:.1f}x |",
             f"| one default job ({c['original']['steps']} vs {c['ours_default']['steps']} steps) | "
             f"{c['original']['job_s']:.0f} s | {c['ours_default']['job_s']:.1f} s | "
             f"{c['job_cheaper_default_vs_default']:.1f}x |",
             f"| one step, same model ({c['models']['original']}), 1 view | {c['original']['step_s']:.3f} s | "
             f"{c['ours_same_model_1_view']['step_s']:.3f} s | {c['step_cheaper_same_model_1_view']:.2f}x |",
             f"| one step, same model, our default {c['ours_same_model_default_views']['views']} views | "
             f"{c['original']['step_s']:.3f} s | {c['ours_same_model_default_views']['step_s']:.3f} s | "
             f"{c['step_cheaper_same_model_default_views']:.2f}x |",
             f"| peak {mem}, one job (model included) | {c['original']['peak_mib']:.0f} MiB | "
             f"{c['ours_default']['peak_mib']:.0f} MiB | |", "",
             f"| batch scaling | jobs | step | job-steps/s | vs 1 job | peak {mem} |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model, rows in r["scaling"].items():
        lines += [f"| {model} | {row['jobs']} | {row['step_s']:.3f} s | {row['job_steps_per_s']:.2f} | "
                  f"{row['speedup_vs_1']:.2f}x | {row['peak_mib']:.0f} MiB |" for row in rows]
    rd = r["render"]
    lines += ["", f"Rendering {rd['megapixels']:.0f} MP: one Pillow `Color3DLUT` call "
              f"{rd['pillow_single_call_s']:.3f} s; "
              + ", ".join(f"ours on {k.split('_')[1]} thread(s) {v:.2f}x of it"
                          for k, v in rd.items() if k.endswith("_vs_pillow")) + "."]
    lines += apply.lines(r["apply"])
    cb = r["continuous_batching"]
    full = cb[f"step_s_{cb['max_batch']}_jobs"]
    lines += ["", f"Continuous batching against lock-step: the same {cb['jobs']} Poisson arrivals through each "
              f"({len(cb['seeds'])} arrival sequences, run in turn with each mode), tiny "
              f"model, {cb['steps'][0]}-{cb['steps'][1]} steps a job, at most {cb['max_batch']} jobs a batch; a step "
              f"takes {cb['step_s_1_job'] * 1000:.0f} ms with 1 job and {full * 1000:.0f} ms with {cb['max_batch']} "
              f"(capacity {cb['capacity_jobs_per_s']:.1f} jobs/s in full batches). Load is arrivals over that "
              "capacity.", "",
              "| load | mode | p50 latency | p95 latency | throughput | p95 continuous / lock-step |",
              "| --- | --- | --- | --- | --- | --- |"]
    for ld in cb["loads"]:
        for x in ld["runs"]:
            each = " / ".join(f"{v:.2f}" for v in ld["p95_continuous_vs_lockstep_per_seed"])
            ratio = (f"{ld['p95_continuous_vs_lockstep']:.2f} (each sequence: {each})"
                     if x["mode"] == "continuous" else "")
            lines.append(f"| {ld['load']:.0%} | {x['mode']} | {x['p50_latency_s']:.2f} s | {x['p95_latency_s']:.2f} s "
                         f"| {x['throughput_jobs_per_min']:.0f} jobs/min | {ratio} |")
    so = r["service_overhead"]
    lines += ["", f"Service overhead (tiny model, locust, {so[0]['users']} users, {so[0]['seconds']} s a row; split: "
              "the optimizer served alone, the API pointed at it by URL, each with a home of its own; job store: a "
              "SQLite file, or a local redis-server with AOF):", "",
              "| topology | job store | submit p50 | submit p99 | status p50 | status p99 | jobs/min | failures |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {x['topology']} | {x['store']} | {x['submit_p50_ms']:.0f} ms | {x['submit_p99_ms']:.0f} ms | "
              f"{x['status_p50_ms']:.0f} ms | {x['status_p99_ms']:.0f} ms | {x['jobs_per_min']:.0f} | {x['failures']} |"
              for x in so]
    lines += ["", "Cold start of the optimizer (a scale from zero: the process starts, a job waiting for it is sent "
              "again until taken):", "", "| model | process start to ready | to the first finished job |",
              "| --- | --- | --- |"]
    lines += [f"| {x['model']}, {x['steps']} steps | {x['to_ready_s']:.1f} s | {x['to_first_job_s']:.1f} s |"
              for x in r["cold_start"]]
    if "container" in r:
        lines += container.lines(r["container"], r["cold_start"])
    if "fairness" in r:
        lines += fairness.lines(r["fairness"])
    sk = r["soak"]
    failed = "; ".join(f"{n} \"{reason}\"" for reason, n in sk["failed"].items()) or "none"
    lines += ["", f"Soak (tiny model, one host, locust {sk['users']} users for {sk['seconds']} s, the optimizer "
              f"SIGKILLed halfway, `/readyz` probed every 0.25 s): {sk['accepted']} jobs accepted, {sk['finished']} "
              f"finished, {sk['cancelled']} cancelled, failed: {failed}; {sk['lost']} lost. {sk['streams_resent']} "
              f"job streams broke and were sent again; {sk['calls_dropped']} one-shot calls between the services "
              f"dropped. Readiness: p50 {sk['ready_p50_ms']:.0f} ms, p99 {sk['ready_p99_ms']:.0f} ms, max "
              f"{sk['ready_max_ms']:.0f} ms over {sk['ready_probes']} probes ({sk['not_ready_probes']} answered "
              f"not ready, while the optimizer restarted); before the kill, p99 {sk['ready_p99_before_kill_ms']:.0f} "
              f"ms over {sk['probes_before_kill']} probes."]
    lines += ["", *soak.section()]  # (the last `python -m bench.soak`: an hour, run apart)
    return "\n".join(lines).rstrip("\n") + "\n"


def one_section(name: str, doc: str | None, quick_help: str, measure: Callable[[str, bool], dict],
                lines: Callable[[dict], list[str]]) -> None:
    """``python -m bench.<name> [--quick] [--out]``: measure one section on its own, print it, and put it into the
    recorded results (``python -m bench.apply``, ``python -m bench.fairness``)."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", type=Path, default=HERE / "results.json",
                   help="the results JSON to write this section into (default bench/results.json)")
    args = p.parse_args()
    section = measure(f"python -m bench.{name}" + (" --quick" if args.quick else ""), args.quick)
    print("\n".join(lines(section)))
    record(args.out, name, section)


def record(out: Path, name: str, section: dict) -> None:
    """Put one section, measured on its own, into the recorded results at ``out`` and write their table again;
    nothing when there are none yet."""
    if not out.exists():
        return
    results = json.loads(out.read_text(encoding="utf-8"))
    results[name] = section
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(table(results), encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.md')}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="tiny model only: a smoke run of the benchmark code")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results[-cuda].json)")
    args = p.parse_args()
    device = torch.device(args.device)
    out = args.out or HERE / ("results.json" if device.type == "cpu" else f"results-{device.type}.json")
    results = run(device, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(table(results), encoding="utf-8")
    print(table(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
