"""``python -m bench.safety [--steps N] [--model tiny]``: how to make every LUT safe, chosen by measurement.

The same jobs (the evaluation's photos and prompts, fixed seeds) run under each mechanism in this run:

- none: no repair at all, the LUT as the guidance left it (what the guarantees have to fix);
- at the end: optimize freely, repair the returned LUT (and each preview) once (the default: it costs the
  guidance least, and nothing per step);
- each step: repair after every update, so the guidance only ever sees safe LUTs;

and, repairing at the end, with the smoothness weight raised against the ripples a noisy critic leaves
(the default weight, 0.03, was chosen from these rows). Per mechanism:
the CLIP directional score of the returned LUT, the step time (a ratio against "at the end", the cheapest),
the worst invariants, and how much the graded sky ramp wiggles (total variation of its central column over
its end-to-end change, worst channel: 1 is a clean ramp). Writes ``bench/safety.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from clipdlut.cube import read_cube
from clipdlut.evaluation import IMAGES, PROMPTS
from clipdlut.export import lut_to_cube
from clipdlut.guidance import Guide
from clipdlut.imaging import working_copy
from clipdlut.losses import LossWeights
from clipdlut.lut import identity
from clipdlut.models import load_model
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.render import apply_table
from clipdlut.safety import make_safe, measure

HERE = Path(__file__).resolve().parent
IMAGE_NAMES = ("sky", "astronaut", "coffee")


def ripple(img) -> float:
    """Total variation of the central column over its end-to-end change, worst channel (1: a clean ramp)."""
    col = np.asarray(img, dtype=np.float64)[:, img.width // 2, :]
    return float((np.abs(np.diff(col, axis=0)).sum(0) / np.maximum(np.abs(col[-1] - col[0]), 1.0)).max())


def variant(guide: Guide, mechanism: str, smoothness: float, steps: int, prompts: int) -> dict:
    """Run every job under one mechanism; its figures."""
    photos = {name: IMAGES[name]() for name in IMAGE_NAMES}
    weights = LossWeights(smoothness=smoothness)
    specs = [JobSpec(f"{name}:{i}", working_copy(photos[name]), p.text, steps=steps, lut_size=33, seed=i,
                     weights=weights, progress_every=steps)
             for i, p in enumerate(PROMPTS[:prompts]) for name in IMAGE_NAMES]
    unrepaired: dict[str, torch.Tensor] = {}

    def last_state(p) -> None:  # (the final report comes before the returned LUT is repaired)
        unrepaired[p.job_id] = identity(33) + opt.state(p.job_id).delta

    opt = BatchedOptimizer(guide, on_progress=last_state, safe_each_step=mechanism == "each step")
    opt.add(specs)
    step_times, results = [], {}
    while len(opt):
        t0 = time.perf_counter()
        for r in opt.step():
            results[r.job_id] = r
        step_times.append(time.perf_counter() - t0)
    luts, ripples = [], []
    for job_id, r in results.items():
        lut = unrepaired[job_id] if mechanism == "none" else r.lut
        assert lut is not None and r.scores is not None, r.error  # (every job of the benchmark finishes)
        luts.append(lut)
        if job_id.startswith("sky:"):
            table = read_cube(lut_to_cube(lut)).normalized() if mechanism != "none" else \
                lut[0].permute(1, 2, 3, 0).double().clamp(0, 1).numpy()
            ripples.append(ripple(apply_table(photos["sky"], table)))
    inv = measure(torch.cat(luts))
    directional = [r.scores.directional for r in results.values() if r.scores is not None]
    if mechanism == "none":  # its scores are of the repaired LUT: score the unrepaired one instead
        directional = [_directional(guide, specs, results, unrepaired)]
    return {"mechanism": mechanism, "smoothness": smoothness, "jobs": len(specs),
            "directional": statistics.fmean(directional), "step_s": statistics.median(step_times[1:]),
            "min_own_step": inv.min_own_step, "max_slope": inv.max_slope, "min_value": inv.min_value,
            "max_value": inv.max_value, "sky_ripple": statistics.fmean(ripples),
            "repaired_changes_by": max(float((make_safe(u) - u).abs().max()) for u in unrepaired.values())}


@torch.no_grad()
def _directional(guide: Guide, specs, results, luts: dict[str, torch.Tensor]) -> float:
    """Mean directional score of LUTs (as the optimizer scores its results), for the unrepaired ones."""
    from clipdlut.lut import apply
    from clipdlut.tensors import to_tensor

    values = []
    for spec in specs:
        img = to_tensor(spec.image).unsqueeze(0).to(guide.device)
        src, out = (guide.encode_pixels(guide.preprocess(x)) for x in (img, apply(luts[spec.job_id], img)))
        text = guide.encode_text([spec.target_prompt, spec.source_prompt])
        values.append(float(torch.nn.functional.cosine_similarity(out[0] - src[0], text[0] - text[1], dim=0)))
    return statistics.fmean(values)


def table(rows: list[dict], command: str, model: str, steps: int) -> str:
    base = next(r for r in rows if r["mechanism"] == "at the end")["step_s"]
    lines = [f"Measured with `{command}` ({model} model, {steps} steps, LUT 33, {rows[0]['jobs']} jobs: photos "
             f"{', '.join(IMAGE_NAMES)} x the first prompts of the evaluation; {time.strftime('%Y-%m-%d')}).", "",
             "| mechanism | smoothness | directional | step | step vs at the end | min own step | max slope "
             "| values | sky ripple | repair moved a node by |", "|" + " --- |" * 10]
    lines += [f"| {r['mechanism']} | {r['smoothness']:g} | {r['directional']:+.3f} | {r['step_s'] * 1000:.0f} ms | "
              f"{r['step_s'] / base:.2f}x | {r['min_own_step']:.1f} levels | {r['max_slope']:.2f} | "
              f"{r['min_value']:.2f}..{r['max_value']:.2f} | {r['sky_ripple']:.1f} | "
              f"{r['repaired_changes_by'] * 255:.0f} levels |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.safety", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--out", type=Path, default=HERE / "safety.md")
    args = ap.parse_args()
    guide = Guide(load_model(args.model))
    rows = [variant(guide, m, s, args.steps, args.prompts)
            for m, s in (("none", 1e-3), ("at the end", 1e-3), ("each step", 1e-3), ("at the end", 0.01),
                         ("at the end", 0.03), ("at the end", 0.1))]
    command = f"python -m bench.safety --model {args.model} --steps {args.steps} --prompts {args.prompts}"
    args.out.write_text(table(rows, command, guide.name, args.steps), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
