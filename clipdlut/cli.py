"""``python -m clipdlut``: grade a photo from a prompt, or apply a LUT to photos, a folder or a video, from the
shell; add a client of the service. ``apply`` and ``clients`` import no torch (they start in a fraction of a second);
the other commands import it when used."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdlut import batch, clients, limits, video
from clipdlut.cube import read_cube, write_cube
from clipdlut.formats import BY_SUFFIX, FORMATS, LutFormatName
from clipdlut.hald import read_hald
from clipdlut.imaging import output_format
from clipdlut.options import DEFAULT_LR, DEFAULT_LUT_SIZE, DEFAULT_SOURCE_PROMPT, DEFAULT_STEPS, MODES, PINS
from clipdlut.table import MAX_STRENGTH, OFFERED_SIZES, blend_table
from clipdlut.viewing import LUT_KINDS, LutKind, Viewing, displayed, open_viewing

if TYPE_CHECKING:
    from PIL import Image

EXIT_FAILED = 1


def _format_for(path: Path) -> str:
    try:
        return output_format(path.suffix.lstrip(".") or "png")
    except ValueError:
        raise ValueError(f"cannot write {path.name}: use a .png, .jpg or .webp file name") from None


def _lut_format(args: argparse.Namespace) -> LutFormatName:
    """The LUT file format the output's suffix (or ``--lut-format``, for the flavours that share one) asks for."""
    fmt = args.lut_format or BY_SUFFIX.get(args.output.suffix.lower(), "cube")  # (any other name: a .cube)
    if args.lut_format and FORMATS[fmt].suffix != args.output.suffix.lower():
        raise ValueError(f"--lut-format {fmt} writes {FORMATS[fmt].suffix} files: name the output "
                         f"{args.output.with_suffix(FORMATS[fmt].suffix).name}")
    return fmt


def _viewing(args: argparse.Namespace) -> Viewing | None:
    """The footage's viewing (``--input-space``), or None for photos (sRGB in and out)."""
    if args.input_space is None:
        if args.display or args.view or args.lut_kind != "display" or args.ocio_config:
            raise ValueError("--display, --view, --lut-kind and --ocio-config are for footage: add --input-space")
        return None
    if args.start_from is not None:
        raise ValueError("--start-from refines a photo's look; footage (--input-space) starts from the identity")
    return open_viewing(args.input_space, args.display, args.view, args.ocio_config)


def _retouch(args: argparse.Namespace) -> None:
    lut_format = _lut_format(args)  # (a wrong name fails now, not after the optimization)
    viewing = _viewing(args)
    sources = _retouch_sources(args)
    series = len(sources) > 1
    image_format = _format_for(args.image) if args.image and not series else None
    tasks = batch.plan(sources, args.image) if args.image is not None and series else []  # (name clashes: now)
    prompt = limits.clean_prompt(args.prompt, "--prompt") if args.prompt is not None else ""
    source_prompt = limits.clean_prompt(args.source_prompt, "--source-prompt")
    # (torch is imported once the command line is known to be doable: a mistake is answered in a moment)
    from clipdlut import skin
    from clipdlut.export import describe_look, lut_to_cube
    from clipdlut.formats import convert
    from clipdlut.imaging import decode_image, working_copy
    from clipdlut.lut import from_table

    if args.protect_skin:
        skin.check(args.mode, viewing.display if viewing else None)
    decoded = [_gradable(decode_image(p.read_bytes()), p) for p in sources]
    reference = working_copy(_gradable(decode_image(args.reference.read_bytes()), args.reference).rgb) \
        if args.reference else None
    start = from_table(_read_lut_file(args.start_from)) if args.start_from else None
    pins = {name: getattr(args, name) for name in PINS}
    result, model = _optimize(args, [displayed(working_copy(d.rgb), viewing) for d in decoded], series, prompt,
                              source_prompt,
                              reference=reference, start=start, **pins)
    comments = [*describe_look(prompt, source_prompt, reference=reference is not None,
                               start_from=args.start_from and args.start_from.name, photos=len(sources),
                               mode=args.mode),
                f"model: {model}, steps: {args.steps}, seed: {args.seed}, strength: {args.strength}"]
    def cube(kind: LutKind) -> str:
        return lut_to_cube(result.lut, strength=args.strength, title=(prompt or "CLIP-DLUT")[:64],
                           comments=comments, neutral=args.mode == "bw", viewing=viewing, kind=kind, **pins)

    text = cube(args.lut_kind)
    args.output.write_bytes(convert(text, lut_format, protect_skin=args.protect_skin))
    print(f"wrote {args.output}")
    _write_graded(args, decoded, text if args.lut_kind == "display" else cube("display"), image_format, tasks)
    look = text if viewing is None else lut_to_cube(result.lut, strength=args.strength, neutral=args.mode == "bw",
                                                    **pins)  # (footage: skin is on the display's encoding)
    f = skin.figures(read_cube(look).normalized())
    print(f"skin tones{' (protected)' if args.protect_skin else ''}: hue moved at most {f.hue_shift:.1f} degrees, "
          f"CIEDE2000 at most {f.delta_e:.1f}, over {f.colours} skin colours")
    s = result.scores
    print(f"CLIP similarity to the target look: {s.source_target:.4f} -> {s.result_target:.4f} "
          f"(direction {s.directional:+.4f}{', mean of the series' if series else ''}), {result.seconds:.1f} s")


def _retouch_sources(args: argparse.Namespace) -> list[Path]:
    """The photos to fit a look to, once the command line asks for something that can be done."""
    sources = batch.photos_in(args.inputs)
    if not 1 <= len(sources) <= limits.MAX_PHOTOS:
        raise ValueError(f"a look is fitted to 1 to {limits.MAX_PHOTOS} photos; {len(sources)} found in "
                         f"{', '.join(map(str, args.inputs))}")
    if args.prompt is None and args.reference is None:
        raise ValueError("say what look to aim for: --prompt, --reference, or both")
    if args.image is not None and len(sources) > 1 and args.image.suffix.lower() in batch.WRITE_FORMATS:
        raise ValueError(f"the graded photos of a series are written into a folder; {args.image} is a file name")
    return sources


def _optimize(args: argparse.Namespace, photos: list[Image.Image], series: bool, prompt: str, source_prompt: str,
              **extra: Any) -> tuple[Any, str]:
    """One job on the optimizer with a progress bar: its finished result and the model's name."""
    from tqdm import tqdm

    from clipdlut.guidance import Guide
    from clipdlut.models import load_model
    from clipdlut.optimizer import BatchedOptimizer, JobSpec
    from clipdlut.status import JobStatus

    guide = Guide(load_model(args.model, device=args.device))
    bar = tqdm(total=args.steps, unit="step", file=sys.stderr, disable=args.quiet)

    def on_progress(p):
        bar.update(p.iteration - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}")

    opt = BatchedOptimizer(guide, on_progress=on_progress)
    spec = JobSpec("cli", photos if series else photos[0], prompt, source_prompt, steps=args.steps,
                   lut_size=args.lut_size, seed=args.seed, lr=args.lr, progress_every=1, mode=args.mode, **extra)
    failed = opt.add([spec])
    result = failed[0] if failed else opt.run()["cli"]
    bar.close()
    if result.status != JobStatus.FINISHED or result.lut is None or result.scores is None:
        raise RuntimeError(result.error or result.status)
    return result, guide.name


def _write_graded(args: argparse.Namespace, decoded: list, text: str, image_format: str | None,
                  tasks: list[batch.Task]) -> None:
    """The graded photo (``--image``), or a series' graded photos into the ``--image`` folder."""
    from clipdlut.imaging import encode_image
    from clipdlut.render import render

    if image_format is not None:
        data = encode_image(render(decoded[0], text), image_format, **decoded[0].kept())
        args.image.write_bytes(data)
        print(f"wrote {args.image}")
    elif args.image is not None:
        args.image.mkdir(parents=True, exist_ok=True)
        table = read_cube(text).normalized()
        for task in tasks:
            batch.grade_file(task, table, threads=None)
        print(f"wrote {len(decoded)} graded photos to {args.image}")


def _gradable(decoded, path: Path):
    """``decoded`` if the photo at ``path`` is within the limits of a photo to grade (the service's own rule)."""
    limits.check_gradable(decoded.size, str(path))
    return decoded


def _read_lut_file(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return read_hald(data)
    return read_cube(data).normalized()


def _apply(args: argparse.Namespace) -> None:
    videos = [p for p in args.inputs if video.is_video(p)]
    if videos and len(args.inputs) > 1:
        raise ValueError(f"a video is graded on its own: apply LUT {videos[0]} -o OUT{videos[0].suffix}")
    if videos and not video.is_video(args.output):
        raise ValueError(f"a video is written to a video file ({', '.join(video.VIDEO_SUFFIXES)}), not {args.output}")
    one_photo = not videos and len(args.inputs) == 1 and not args.inputs[0].is_dir() and not args.output.is_dir()
    fmt = output_format(args.format) if args.format else _format_for(args.output) if one_photo else None
    table = blend_table(_read_lut_file(args.lut), args.strength)
    if args.cube:
        args.cube.write_text(write_cube(table), encoding="utf-8")
        print(f"wrote {args.cube}")
    if videos:
        _apply_video(args, table)
    elif one_photo:
        batch.grade_file(batch.Task(args.inputs[0], args.output, fmt or "PNG"), table, threads=None)
        print(f"wrote {args.output}")
    else:
        _apply_many(args, table, fmt)


def _apply_many(args: argparse.Namespace, table: np.ndarray, fmt: str | None) -> None:
    from tqdm import tqdm

    out: Path = args.output
    if out.exists() and not out.is_dir() or not out.exists() and out.suffix.lower() in batch.WRITE_FORMATS:
        raise ValueError(f"several photos or a folder are written into a folder; {out} is a file name")
    sources = batch.photos_in(args.inputs)
    if not sources:
        raise ValueError(f"no photos ({', '.join(batch.READ_SUFFIXES)}) in {', '.join(map(str, args.inputs))}")
    tasks = batch.plan(sources, out, fmt)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    outcomes = batch.grade_all(tasks, table, args.jobs)
    with tqdm(total=len(tasks), unit="photo", file=sys.stderr, disable=args.quiet) as bar:
        for outcome in outcomes:
            if outcome.error is not None:
                failed += 1
                bar.write(f"error: {outcome.task.source}: {outcome.error}", file=sys.stderr)
            bar.update()
    print(f"wrote {len(tasks) - failed} of {len(tasks)} photos to {out}")
    if failed:
        raise RuntimeError(f"{failed} of {len(tasks)} photos could not be graded (each is named above)")


def _apply_video(args: argparse.Namespace, table: np.ndarray) -> None:
    from tqdm import tqdm

    bars: list[tqdm] = []  # made at the first progress report, so an unreadable input shows no bar

    def progress(fraction: float) -> None:
        if not bars:
            bars.append(tqdm(total=100, file=sys.stderr, disable=args.quiet,
                             bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]"))
        bars[0].update(round(100 * fraction, 1) - bars[0].n)

    try:
        video.grade_video(args.inputs[0], args.output, table, crf=args.crf, lossless=args.lossless,
                          on_progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(f"wrote {args.output}")


def _eval(args: argparse.Namespace) -> None:
    import time

    from clipdlut import evaluation
    from clipdlut.evaluation import IMAGES
    from clipdlut.guidance import Guide
    from clipdlut.models import load_model

    args.images = list(IMAGES) if args.images is None else args.images
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


def _crf(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 63:
        raise argparse.ArgumentTypeError("CRF goes from 0 (best) to 51 (H.264) or 63 (VP9)")
    return v


def _parents() -> dict[str, argparse.ArgumentParser]:
    """The options several commands share, each defined once: the model, the job's shape, the strength, quiet."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=None,
                       help="CLIP model name, 'tiny' or a checkpoint path (default: $CLIPDLUT_CLIP_MODEL or ViT-B-16)")
    model.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--steps", type=_positive, default=DEFAULT_STEPS,
                     help=f"optimizer steps (default {DEFAULT_STEPS})")
    job.add_argument("--lut-size", type=_lut_size, default=DEFAULT_LUT_SIZE,
                     help=f"LUT nodes per side: 17, 33 or 65 (default {DEFAULT_LUT_SIZE})")
    job.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same LUT")
    strength = argparse.ArgumentParser(add_help=False)
    strength.add_argument("--strength", type=_strength, default=1.0,
                          help="blend with the identity (a black-and-white LUT: with the plain conversion), "
                               f"0..{MAX_STRENGTH:g} (default 1)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress bar or line per job")
    return {"model": model, "job": job, "strength": strength, "quiet": quiet}


def _retouch_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("inputs", type=Path, nargs="+", metavar="PHOTO",
                   help=f"the photo to grade; or a series (up to {limits.MAX_PHOTOS} photos, or folders of them) to "
                        "fit one LUT to")
    r.add_argument("--prompt", help="the look to aim for, e.g. 赛博朋克风格的夜晚城市, at most "
                   f"{limits.MAX_PROMPT_CHARS} characters (may be left out with --reference)")
    r.add_argument("--reference", type=Path, metavar="PHOTO", help="a photo whose look to aim for (with or without "
                   "--prompt): its CLIP features and its L*a*b* colour statistics")
    r.add_argument("--start-from", type=Path, metavar="LUT", help="refine a look: start from this .cube (or Hald "
                   "PNG) instead of the identity, e.g. with --prompt 更暖一点")
    r.add_argument("--mode", choices=list(MODES), default="color",
                   help="; ".join(f"{k}: {v}" for k, v in MODES.items()) + " (default color)")
    r.add_argument("--source-prompt", default=DEFAULT_SOURCE_PROMPT, help="what the photo looks like now (at most "
                   f"{limits.MAX_PROMPT_CHARS} characters)")
    r.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"Adam learning rate (default {DEFAULT_LR:g})")
    for name, help_text in PINS.items():
        r.add_argument("--" + name.replace("_", "-"), action="store_true", help=help_text)
    r.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.cube",
                   help="where to write the LUT; its suffix picks the format: " + ", ".join(
                       f"{suffix} ({fmt})" for suffix, fmt in BY_SUFFIX.items()) + "; any other name: .cube")
    r.add_argument("--lut-format", choices=list(FORMATS), help="the LUT format, where two share a suffix: "
                   "resolve-cube (.cube), 3dl-lustre (.3dl)")
    r.add_argument("--image", type=Path, metavar="OUT.jpg|DIR",
                   help="also write the graded full-resolution photo (a series: into this folder, each under its "
                        "own name)")
    f = r.add_argument_group("footage", "frames in a camera's encoding, viewed through OpenColorIO (default: photos, "
                             "sRGB in and out)")
    f.add_argument("--input-space", metavar="NAME", help="the frames' colour space in the OCIO config, e.g. "
                   "'S-Log3 S-Gamut3.Cine', 'ARRI LogC4', 'V-Log V-Gamut', 'Apple Log'")
    f.add_argument("--display", metavar="NAME", help="the display graded for (default: the config's, 'sRGB - Display' "
                   "in the built-in ACES studio config)")
    f.add_argument("--view", metavar="NAME", help="the view on that display (default: the display's default view)")
    f.add_argument("--lut-kind", choices=list(LUT_KINDS), default="display",
                   help="; ".join(f"{k}: {v}" for k, v in LUT_KINDS.items()) + " (default display)")
    f.add_argument("--ocio-config", metavar="PATH", help="an OCIO config of your own (default: $OCIO, else the "
                   "ACES studio config built into OpenColorIO)")


def _apply_arguments(a: argparse.ArgumentParser) -> None:
    a.add_argument("lut", type=Path, metavar="LUT", help="a .cube file or a HaldCLUT PNG")
    a.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                   help="a photo; or several photos and folders of photos; or one video "
                        f"({', '.join(video.VIDEO_SUFFIXES)})")
    a.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="for one photo, the output image (.png/.jpg/.webp); for several photos or a folder, the "
                        "output folder (created; each photo keeps its name); for a video, the output video")
    a.add_argument("--format", choices=("png", "jpeg", "webp"),
                   help="photos' output format (default: one photo's from OUT's name; in a folder, each photo's "
                        "own when PNG, JPEG or WebP, else PNG)")
    a.add_argument("-j", "--jobs", type=_positive, default=None,
                   help="photos graded at once, one process each (default: one per core)")
    a.add_argument("--crf", type=_crf, default=None,
                   help=f"video quality, lower is better (default {video.X264.crf} for H.264, {video.VP9.crf} for "
                        "VP9 in a .webm)")
    a.add_argument("--lossless", action="store_true",
                   help="video: keep the graded frames in 8-bit RGB, losslessly coded (large files; for masters and "
                        "for comparing with Pillow)")
    a.add_argument("--cube", type=Path, help="also write the LUT (at this strength) as a .cube file")


def _eval_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--batch", type=_positive, default=8, help="jobs optimized together (default 8)")
    e.add_argument("--images", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=None,
                   help="comma-separated names of scikit-image's photos (default: all of the evaluation's photos; "
                        "a wrong name is answered with the list)")
    e.add_argument("--prompts", type=_positive, default=None, help="use only the first N of the prompts (default all)")
    e.add_argument("-o", "--out", type=Path, default=Path("eval-results"), metavar="DIR",
                   help="where to write eval.md and contact-sheet.png (default eval-results)")


def _weight(text: str) -> float:
    v = float(text)
    if not 0 < v <= clients.MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"a weight is above 0 and at most {clients.MAX_WEIGHT:g}")
    return v


def _clients_arguments(c: argparse.ArgumentParser) -> None:
    actions = c.add_subparsers(dest="action", required=True)
    a = actions.add_parser("add", help="a new client with a random key: the key is printed once, the file keeps its "
                           "SHA-256")
    a.add_argument("name", help="the client's name (letters, digits, '_', '.', '-'; up to 64)")
    a.add_argument("--file", type=Path, default=os.environ.get("CLIPDLUT_CLIENTS") or None,
                   help="the clients file (default: $CLIPDLUT_CLIENTS); created if missing")
    a.add_argument("--max-open-jobs", type=_positive, help="its jobs queued or running at once (default: only the "
                   "service's own limit)")
    a.add_argument("--jobs-per-hour", type=_positive, help="its jobs submitted in any hour (default: no bound)")
    a.add_argument("--weight", type=_weight, default=1.0, help="its share of the GPUs when clients compete "
                   "(default 1)")
    a.add_argument("--operator", action="store_true", help="it may read /metrics, which shows every client's "
                   "figures (for the service's operator: a Prometheus scraper's key)")


def _clients(args: argparse.Namespace) -> None:
    if args.file is None:
        raise ValueError("name the clients file: --file PATH, or set CLIPDLUT_CLIENTS")
    key = clients.add(args.file, args.name, args.max_open_jobs, args.jobs_per_hour, args.weight, args.operator)
    print(f"client {args.name!r} added to {args.file}; its key is below, shown this once (the file keeps only its "
          "hash): send it as 'Authorization: Bearer <key>'", file=sys.stderr)
    print(key)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clipdlut", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    shared = _parents()
    commands = (
        ("retouch", "optimize a LUT for a photo or a series from a prompt and/or a reference photo",
         ("model", "job", "strength", "quiet"), _retouch_arguments, _retouch),
        ("apply", "apply a .cube or Hald PNG LUT to a photo, many photos or folders (in parallel), or a video",
         ("strength", "quiet"), _apply_arguments, _apply),
        ("eval", "grade a fixed set of photos with a fixed set of prompts and measure every result",
         ("model", "job", "quiet"), _eval_arguments, _eval),
        ("clients", "the service's clients: `clients add NAME` makes one with a new key", (), _clients_arguments,
         _clients),
    )
    for name, help_text, parents, define, func in commands:
        command = sub.add_parser(name, help=help_text, parents=[shared[n] for n in parents])
        define(command)
        command.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (OSError, ValueError, RuntimeError) as e:  # (every error of ours is one of these, with its message)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0
