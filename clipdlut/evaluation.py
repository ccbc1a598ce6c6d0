"""``python -m clipdlut eval``: grade a fixed set of real photos with a fixed set of prompts and measure every
result, to compare models, step counts and settings on the same ground.

The photos ship inside scikit-image (no download) plus one synthetic sky, a smooth ramp where any banding a
LUT causes shows, and two of them as camera log footage (S-Log3 S-Gamut3.Cine, ARRI LogC4: encoded by
OpenColorIO's inverse transform, graded with the input space set, measured on the display rendering). The
prompts cover warm and cool grades, film stocks, times of day, black and white and moods, in Chinese and
English. Three photos, astronaut (a face) and coffee and chelsea (no person), are graded a second time with skin
protected, and the report says how far each grade moved skin tones, with and without. Every job runs through
the library's own path (the batched optimizer, the ``.cube`` writer, Pillow's
rendering) and is measured with :mod:`clipdlut.quality`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipdlut import skin
from clipdlut.cube import read_cube
from clipdlut.export import lut_to_cube
from clipdlut.guidance import Guide
from clipdlut.imaging import working_copy
from clipdlut.optimizer import BatchedOptimizer, JobResult, JobSpec
from clipdlut.quality import Quality, delta_e_2000, measure_grade
from clipdlut.render import apply_table
from clipdlut.status import JobStatus
from clipdlut.viewing import Viewing, displayed, eight_bit, open_viewing


def sky(width: int = 512, height: int = 384) -> Image.Image:
    """A clear sky at dusk: a smooth vertical ramp from deep blue to a pale warm horizon (a banding probe)."""
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    top, horizon = np.array([22.0, 48.0, 120.0]), np.array([250.0, 196.0, 150.0])
    rows = top + (horizon - top) * t ** 1.6
    return Image.fromarray(np.broadcast_to(rows, (height, width, 3)).round().astype(np.uint8), "RGB")


def _skimage(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from skimage import data

        return Image.fromarray(getattr(data, name)()).convert("RGB")

    return load


@dataclass(frozen=True)
class Source:
    """One picture of the evaluation: a photo, or footage: that photo as a camera would have recorded it in
    ``input_space`` (OCIO's inverse of the display rendering, 8-bit), graded with that input space set."""

    load: Callable[[], Image.Image]
    input_space: str | None = None

    def __call__(self) -> Image.Image:
        """What is graded: the photo, or its log frame."""
        photo = self.load()
        if (viewing := self.viewing()) is None:
            return photo
        return eight_bit(viewing.from_display(np.asarray(photo, dtype=np.float64) / 255.0))

    def viewing(self) -> Viewing | None:
        return open_viewing(self.input_space) if self.input_space else None


# The pictures, by name: scikit-image's colour photos (in its wheel: no download), the synthetic sky, and two of
# the photos as log footage of two cameras.
IMAGES: dict[str, Source] = {
    "astronaut": Source(_skimage("astronaut")), "coffee": Source(_skimage("coffee")),
    "chelsea": Source(_skimage("chelsea")), "rocket": Source(_skimage("rocket")),
    "hubble": Source(_skimage("hubble_deep_field")), "sky": Source(sky),
    "coffee-slog3": Source(_skimage("coffee"), "S-Log3 S-Gamut3.Cine"),
    "chelsea-logc4": Source(_skimage("chelsea"), "ARRI LogC4"),
}


@dataclass(frozen=True)
class Prompt:
    kind: str
    text: str


PROMPTS: tuple[Prompt, ...] = (
    Prompt("warm", "温暖的金色黄昏"),
    Prompt("warm", "warm golden hour film look"),
    Prompt("cool", "冷色调的清晨"),
    Prompt("cool", "cool teal and orange blockbuster grade"),
    Prompt("film", "柯达胶片的复古色调"),
    Prompt("film", "faded Fujifilm slide film with soft greens"),
    Prompt("time of day", "赛博朋克风格的夜晚城市"),
    Prompt("time of day", "bright midday sun, crisp and clear"),
    Prompt("black and white", "黑白照片"),
    Prompt("black and white", "high-contrast black and white"),
    Prompt("mood", "忧郁的阴天"),
    Prompt("mood", "dreamy pastel, soft and airy"),
)
SKIN_PHOTOS = ("astronaut", "coffee", "chelsea")  # graded again with skin protected: a face, and two without one


@dataclass(frozen=True)
class Row:
    """One graded photo."""

    image: str
    prompt: Prompt
    directional: float  # cosine of the image edit with the source->target text direction
    source_target: float
    result_target: float
    quality: Quality
    seconds: float  # the job's wall time from joining the batch to its result
    graded: Image.Image
    skin: skin.SkinFigures  # how far the look moved the skin region's colours
    photo_skin: float | None  # mean CIEDE2000 of the photo's own skin pixels (None: it has none)
    protected: bool = False  # graded with protect_skin


def run(guide: Guide, *, images: Sequence[str] = tuple(IMAGES), prompts: Sequence[Prompt] = PROMPTS,
        steps: int = 100, lut_size: int = 33, seed: int = 0, batch: int = 8, safe_each_step: bool = False,
        protect: Sequence[str] = SKIN_PHOTOS, on_done: Callable[[Row], None] | None = None) -> list[Row]:
    """Grade every photo with every prompt (and those of ``protect`` again with skin protected), ``batch`` jobs at a
    time in one optimizer, and measure each. The optimizer runs as the service's and the CLI's do (the returned LUT
    repaired, not every step: ``safe_each_step``, see :class:`BatchedOptimizer`), so the report is of what users
    get."""
    photos = {name: IMAGES[name]() for name in images}
    viewings = {name: IMAGES[name].viewing() for name in images}  # (footage is graded as the display shows it)
    work = {name: displayed(working_copy(img), viewings[name]) for name, img in photos.items()}
    runs = [(p, n, False) for p in prompts for n in images] + [(p, n, True) for p in prompts for n in images
                                                                  if n in protect]
    pending = [(f"{i}:{name}", name, p, kept) for i, (p, name, kept) in enumerate(runs)]
    jobs: dict[str, tuple[str, Prompt, bool]] = {}
    opt = BatchedOptimizer(guide, safe_each_step=safe_each_step)
    # A finished job is measured on a thread of its own while the optimizer steps the others: the figures are
    # numpy and colour-science work, which lets go of the GIL (make eval on tiny here, 2 cores: a quarter sooner).
    with ThreadPoolExecutor(max_workers=1) as measuring:
        measured = []
        while pending or len(opt):
            while pending and len(opt) < batch:
                job_id, name, prompt, kept = pending.pop(0)
                jobs[job_id] = (name, prompt, kept)
                failed = opt.add([JobSpec(job_id, work[name], prompt.text, steps=steps, lut_size=lut_size,
                                          seed=seed, progress_every=steps, protect_skin=kept)])
                if failed:
                    raise RuntimeError(f"{name} / {prompt.text}: {failed[0].error}")
            for result in opt.step():
                name, prompt, kept = jobs.pop(result.job_id)
                if result.status != JobStatus.FINISHED or result.lut is None or result.scores is None:
                    raise RuntimeError(f"{name} / {prompt.text}: {result.error or result.status}")
                measured.append(measuring.submit(_row, result, name, prompt, kept, photos[name], viewings[name]))
                if on_done:
                    measured[-1].add_done_callback(lambda f: on_done(f.result()))
        return [f.result() for f in measured]


def _row(result: JobResult, name: str, prompt: Prompt, kept: bool, photo: Image.Image, viewing: Viewing | None
         ) -> Row:
    """The figures of one finished job (:func:`run` checked it has its LUT and scores)."""
    lut, s = result.lut, result.scores
    assert lut is not None and s is not None
    look = read_cube(lut_to_cube(lut, protect_skin=kept)).normalized()
    table = look if viewing is None else read_cube(lut_to_cube(lut, viewing=viewing, protect_skin=kept)).normalized()
    graded = apply_table(photo, table)
    shown = displayed(photo, viewing)
    # (footage's safety figures here are its look's, on the display's encoding: the table compares looks; the
    # display LUT around it has OCIO's transform's own steep places, README Footage)
    return Row(name, prompt, s.directional, s.source_target, s.result_target, measure_grade(shown, graded, look),
               result.seconds, graded, skin.figures(look), _photo_skin(shown, graded), kept)


def _photo_skin(source: Image.Image, graded: Image.Image) -> float | None:
    """The mean CIEDE2000 change of the photo's skin pixels (those in the skin region), None if it has none."""
    src = np.asarray(source.convert("RGB"))
    where = skin.in_region(src)
    if not where.any():
        return None
    before, after = src[where] / 255.0, np.asarray(graded.convert("RGB"))[where] / 255.0
    return float(np.mean(delta_e_2000(before, after)))


def _mean(values: Sequence[float | None]) -> float:
    """The mean of the figures that are defined (nan if none is)."""
    defined = [v for v in values if v is not None]
    return statistics.fmean(defined) if defined else float("nan")


def table(rows: Sequence[Row], title: str) -> str:
    """The markdown report: one line per prompt (means over the photos) and one for all of them, then the skin
    tones of the photos graded both ways."""
    kept = [r for r in rows if r.protected]
    rows = [r for r in rows if not r.protected]
    lines = [f"# {title}", "", "| # | kind | prompt | directional | target before → after | SSIM | colour shift ΔE "
             "| min own step | max slope | safe | s/job |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[Prompt, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.prompt, []).append(row)

    def line(label: str, kind: str, text: str, rs: Sequence[Row]) -> str:
        q = [r.quality for r in rs]
        return (f"| {label} | {kind} | {text} | {_mean([r.directional for r in rs]):+.3f} "
                f"| {_mean([r.source_target for r in rs]):.3f} → {_mean([r.result_target for r in rs]):.3f} "
                f"| {_mean([x.ssim for x in q]):.3f} | {_mean([x.color_shift for x in q]):.1f} "
                f"| {min(x.min_own_step for x in q):.2f} | {max(x.max_slope for x in q):.2f} "
                f"| {sum(x.safe for x in q)}/{len(q)} | {_mean([r.seconds for r in rs]):.1f} |")

    for i, (prompt, rs) in enumerate(groups.items(), 1):
        lines.append(line(str(i), prompt.kind, prompt.text, rs))
    lines.append(line("all", "", f"{len(groups)} prompts × {len(rows) // max(len(groups), 1)} photos", rows))
    lines += ["", "directional: cosine between the image's change and the source→target text direction in CLIP "
              "space (higher: the grade went the prompt's way). target: CLIP similarity of the photo to the prompt "
              "before and after. SSIM: of the luminance, original against graded (1: content untouched). colour "
              "shift: mean CIEDE2000 ΔE (about 1 is just noticeable). min own step (8-bit levels, -1 or "
              "more) and max slope (4 or less): the LUT's worst nodes, the colour-safety guarantees. s/job: wall "
              "time of a job from joining the batch to its result."]
    return "\n".join(lines + _skin_lines(rows, kept)) + "\n"


def _skin_lines(rows: Sequence[Row], kept: Sequence[Row]) -> list[str]:
    """The skin section: per photo graded both ways, its skin, and how far the grades moved skin tones."""
    names = list(dict.fromkeys(r.image for r in kept))
    if not names:
        return []
    lines = ["", "## Skin tones", "", "| photo | skin pixels | photo's skin ΔE, off → on | skin hue shift (max), "
             "off → on | skin ΔE (max), off → on | directional, off → on |", "|---|---|---|---|---|---|"]
    for name in names:
        off, on = ([r for r in group if r.image == name] for group in (rows, kept))
        source = np.asarray(IMAGES[name].load().convert("RGB"))
        share = float(skin.in_region(source).mean())
        photo = "none" if off[0].photo_skin is None else \
            f"{_mean([r.photo_skin for r in off]):.1f} → {_mean([r.photo_skin for r in on]):.1f}"
        lines.append(f"| {name} | {share:.0%} | {photo} "
                     f"| {max(r.skin.hue_shift for r in off):.1f}° → {max(r.skin.hue_shift for r in on):.1f}° "
                     f"| {max(r.skin.delta_e for r in off):.1f} → {max(r.skin.delta_e for r in on):.1f} "
                     f"| {_mean([r.directional for r in off]):+.3f} → {_mean([r.directional for r in on]):+.3f} |")
    lines += ["", f"Each photo graded with every prompt, without and with `protect_skin`. skin pixels: the share of "
              f"the photo in the skin region (Chai and Ngan's skin map: a cat's fur and coffee can be skin-coloured). "
              f"photo's skin ΔE: mean CIEDE2000 change of those pixels. skin hue shift and ΔE: the worst of the "
              f"region's {len(skin.region_colours(skin.FIGURE_STEP))} skin colours over the prompts (protected: at "
              f"most {skin.HUE_DEGREES:g}° and {skin.DELTA_E:g}). directional: how far the look still went the "
              f"prompt's way."]
    return lines


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # (Pillow before 10.1: one fixed size)
        return ImageFont.load_default()


def contact_sheet(rows: Sequence[Row], cell: int = 160) -> Image.Image:
    """A grid: the originals on top, then one row of graded photos per prompt (labelled with its number and
    kind; the table gives its text)."""
    rows = [r for r in rows if not r.protected]
    names = list(dict.fromkeys(r.image for r in rows))
    prompts = list(dict.fromkeys(r.prompt for r in rows))
    label_w, pad = 120, 4
    sheet = Image.new("RGB", (label_w + len(names) * (cell + pad), (len(prompts) + 1) * (cell + pad)), "white")
    draw, font = ImageDraw.Draw(sheet), _font(14)

    def put(img: Image.Image, col: int, line: int) -> None:
        thumb = img.copy()
        thumb.thumbnail((cell, cell), Image.Resampling.BICUBIC)
        sheet.paste(thumb, (label_w + col * (cell + pad) + (cell - thumb.width) // 2,
                            line * (cell + pad) + (cell - thumb.height) // 2))

    draw.text((6, cell // 2), "original", fill="black", font=font)
    for col, name in enumerate(names):
        put(IMAGES[name](), col, 0)
    for line, prompt in enumerate(prompts, 1):
        draw.text((6, line * (cell + pad) + cell // 2 - 10), f"{line}. {prompt.kind}", fill="black", font=font)
        for r in rows:
            if r.prompt == prompt:
                put(r.graded, names.index(r.image), line)
    return sheet


def write(rows: Sequence[Row], out_dir: Path, title: str) -> tuple[Path, Path]:
    """Write ``eval.md`` and ``contact-sheet.png`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, png = out_dir / "eval.md", out_dir / "contact-sheet.png"
    md.write_text(table(rows, title), encoding="utf-8")
    contact_sheet(rows).save(png, optimize=True)
    return md, png
