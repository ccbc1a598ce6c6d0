"""``python -m clipdlut``: grade a photo from a prompt, or apply a LUT to a photo, from the shell."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipdlut.cube import CubeError, read_cube, write_cube
from clipdlut.evaluation import IMAGES
from clipdlut.export import lut_to_cube
from clipdlut.hald import LutImageError, read_hald
from clipdlut.imaging import ImageError, decode_image, encode_image, output_format, working_copy
from clipdlut.models import MODELS, WeightsNotFound
from clipdlut.optimizer import DEFAULT_SOURCE_PROMPT, DEFAULT_STEPS, JobSpec
from clipdlut.safety import PINS
from clipdlut.status import JobStatus
from clipdlut.table import MAX_STRENGTH, OFFERED_SIZES

EXIT_FAILED = 1


def _format_for(path: Path) -> str:
    try:
        return output_format(path.suffix.lstrip(".") or "png")
    except ValueError:
        raise ValueError(f"cannot write {path.name}: use a .png, .jpg or .webp file name") from None


def _retouch(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from clipdlut.guidance import Guide
    from clipdlut.models import load_model
    from clipdlut.optimizer import BatchedOptimizer

    image_format = _format_for(args.image) if args.image else None
    decoded = decode_image(Path(args.input).read_bytes())
    guide = Guide(load_model(args.model, device=args.device))
    bar = tqdm(total=args.steps, unit="step", file=sys.stderr, disable=args.quiet)

    def on_progress(p):
        bar.update(p.iteration - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}")

    opt = BatchedOptimizer(guide, on_progress=on_progress)
    pins = {name: getattr(args, name) for name in PINS}
    spec = JobSpec("cli", working_copy(decoded.rgb), args.prompt, args.source_prompt, steps=args.steps,
                   lut_size=args.lut_size, seed=args.seed, lr=args.lr, progress_every=1, **pins)
    failed = opt.add([spec])
    result = failed[0] if failed else opt.run()["cli"]
    bar.close()
    if result.status != JobStatus.FINISHED or result.lut is None or result.scores is None:
        raise RuntimeError(result.error or result.status)
    comments = [f"prompt: {args.prompt}", f"source prompt: {args.source_prompt}",
                f"model: {guide.name}, steps: {args.steps}, seed: {args.seed}, strength: {args.strength}"]
    text = lut_to_cube(result.lut, strength=args.strength, title=args.prompt[:64], comments=comments, **pins)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    if image_format is not None:
        from clipdlut.render import render
        data = encode_image(render(decoded, text), image_format, decoded.alpha, decoded.icc_profile)
        args.image.write_bytes(data)
        print(f"wrote {args.image}")
    s = result.scores
    print(f"CLIP similarity to the prompt: {s.source_target:.4f} -> {s.result_target:.4f} "
          f"(direction {s.directional:+.4f}), {result.seconds:.1f} s")


def _read_lut_file(path: Path):
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return read_hald(data)
    return read_cube(data).normalized()


def _apply(args: argparse.Namespace) -> None:
    from clipdlut.render import apply_table, blend_table

    fmt = _format_for(args.output)
    table = _read_lut_file(args.lut)
    decoded = decode_image(Path(args.input).read_bytes())
    out = apply_table(decoded.rgb, blend_table(table, args.strength))
    args.output.write_bytes(encode_image(out, fmt, decoded.alpha, decoded.icc_profile))
    print(f"wrote {args.output}")
    if args.cube:
        args.cube.write_text(write_cube(blend_table(table, args.strength)), encoding="utf-8")
        print(f"wrote {args.cube}")


def _eval(args: argparse.Namespace) -> None:
    import time

    from clipdlut import evaluation
    from clipdlut.guidance import Guide
    from clipdlut.models import load_model

    unknown = set(args.images) - set(IMAGES)
    if unknown:
        raise ValueError(f"unknown photo(s) {sorted(unknown)}; choose from {', '.join(IMAGES)}")
    guide = Guide(load_model(args.model, device=args.device))
    prompts = evaluation.PROMPTS[:args.prompts]
    total = len(args.images) * len(prompts)

    def done(row) -> None:
        if not args.quiet:
            print(f"{row.image:>10} | {row.prompt.text[:40]:<40} | directional {row.directional:+.3f} | SSIM "
                  f"{row.quality.ssim:.3f} | ΔE {row.quality.color_shift:.1f} | safe {row.quality.safe}",
                  file=sys.stderr)

    t0 = time.perf_counter()
    rows = evaluation.run(guide, images=args.images, prompts=prompts, steps=args.steps, lut_size=args.lut_size,
                          seed=args.seed, batch=args.batch, on_done=done)
    wall = time.perf_counter() - t0
    title = (f"CLIP-DLUT evaluation: {guide.name}, {args.steps} steps, LUT {args.lut_size}, seed {args.seed}, "
             f"{total} jobs in {wall:.0f} s ({args.batch} at a time, {guide.device})")
    md, png = evaluation.write(rows, args.out, title)
    print(f"wrote {md} and {png}")


def _import_model(args: argparse.Namespace) -> None:
    from clipdlut.serving.modelstore import import_weights

    tag = import_weights(args.name, args.source)
    print(f"stored {args.name} as {tag}; `bentoml build` now packages it with the service")


def _lut_size(text: str) -> int:
    n = int(text)
    if n not in OFFERED_SIZES:  # (as the service: the sizes every .cube consumer expects)
        raise argparse.ArgumentTypeError(f"LUT size must be one of {', '.join(map(str, OFFERED_SIZES))}")
    return n


def _strength(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= MAX_STRENGTH:
        raise argparse.ArgumentTypeError(f"strength must be between 0 and {MAX_STRENGTH:g}")
    return v


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clipdlut", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("retouch", help="optimize a LUT for a photo from a text prompt")
    r.add_argument("input", metavar="IMAGE", help="the photo to grade")
    r.add_argument("--prompt", required=True, help="the look to aim for, e.g. 赛博朋克风格的夜晚城市")
    r.add_argument("--source-prompt", default=DEFAULT_SOURCE_PROMPT, help="what the photo looks like now")
    r.add_argument("--steps", type=_positive, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})")
    r.add_argument("--lut-size", type=_lut_size, default=33, help="LUT nodes per side: 17, 33 or 65 (default 33)")
    r.add_argument("--strength", type=_strength, default=1.0,
                   help=f"blend with the identity, 0..{MAX_STRENGTH:g} (default 1)")
    r.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same LUT")
    r.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default 0.005)")
    for name, help_text in PINS.items():
        r.add_argument("--" + name.replace("_", "-"), action="store_true", help=help_text)
    r.add_argument("--model", default=None,
                   help="CLIP model name, 'tiny' or a checkpoint path (default: $CLIPDLUT_CLIP_MODEL or ViT-B-16)")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    r.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.cube", help="where to write the LUT")
    r.add_argument("--image", type=Path, metavar="OUT.jpg", help="also write the graded full-resolution image")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_retouch)
    a = sub.add_parser("apply", help="apply a .cube or Hald PNG LUT to a photo")
    a.add_argument("lut", type=Path, metavar="LUT", help="a .cube file or a HaldCLUT PNG")
    a.add_argument("input", metavar="IMAGE", help="the photo")
    a.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output image (.png/.jpg/.webp)")
    a.add_argument("--strength", type=_strength, default=1.0,
                   help=f"blend with the identity, 0..{MAX_STRENGTH:g} (default 1)")
    a.add_argument("--cube", type=Path, help="also write the LUT (at this strength) as a .cube file")
    a.set_defaults(func=_apply)
    e = sub.add_parser("eval", help="grade a fixed set of photos with a fixed set of prompts and measure every result")
    e.add_argument("--model", default=None,
                   help="CLIP model name, 'tiny' or a checkpoint path (default: $CLIPDLUT_CLIP_MODEL or ViT-B-16)")
    e.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    e.add_argument("--steps", type=_positive, default=DEFAULT_STEPS,
                   help=f"optimizer steps per job (default {DEFAULT_STEPS})")
    e.add_argument("--lut-size", type=_lut_size, default=33, help="LUT nodes per side: 17, 33 or 65 (default 33)")
    e.add_argument("--seed", type=int, default=0, help="random seed of every job")
    e.add_argument("--batch", type=_positive, default=8, help="jobs optimized together (default 8)")
    e.add_argument("--images", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=list(IMAGES), help=f"comma-separated photos (default: all of {', '.join(IMAGES)})")
    e.add_argument("--prompts", type=_positive, default=None, help="use only the first N of the prompts (default all)")
    e.add_argument("-o", "--out", type=Path, default=Path("eval-results"), metavar="DIR",
                   help="where to write eval.md and contact-sheet.png (default eval-results)")
    e.add_argument("-q", "--quiet", action="store_true", help="no line per job")
    e.set_defaults(func=_eval)
    m = sub.add_parser("import-model", help="put Chinese-CLIP weights into BentoML's model store for `bentoml build`")
    m.add_argument("name", choices=list(MODELS), help="the model the service will use ($CLIPDLUT_CLIP_MODEL)")
    m.add_argument("--from", dest="source", type=Path, metavar="FILE",
                   help="a checkpoint file you have (default: the weights folder, else download from the Hub)")
    m.set_defaults(func=_import_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (OSError, ValueError, ImageError, CubeError, LutImageError, WeightsNotFound, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0
