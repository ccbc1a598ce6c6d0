"""Regenerate the README's figures:

- ``docs/before-after.png``: a real photo (scikit-image's ``rocket``: a dusk sky, where banding would show), the
  graded photo, and the LUT as a Hald image, with its safety figures;
- ``docs/footage.jpg``: a log frame (scikit-image's ``coffee`` encoded into S-Log3 S-Gamut3.Cine by OpenColorIO's
  inverse transform), its plain technical conversion (the `display` LUT at strength 0: OCIO's S-Log3 -> sRGB
  display, ACES 2.0 SDR view), and the graded result (the `display` LUT at full strength);
- ``docs/skin.jpg``: a face (scikit-image's ``astronaut``) under a deliberately wrong look (every hue turned by
  60 degrees around the grey axis, as a runaway grade might), made safe without and with ``protect_skin``, with
  each LUT's skin figures.

``python docs/make_figure.py [--model tiny] [--steps 150]``. With the offline ``tiny`` model the looks are
arbitrary (random weights); with ``ViT-B-16`` they follow the prompts.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from clipdlut import skin
from clipdlut.cube import read_cube
from clipdlut.evaluation import IMAGES
from clipdlut.export import lut_to_cube
from clipdlut.guidance import Guide
from clipdlut.hald import write_hald
from clipdlut.imaging import decode_image, encode_image, working_copy
from clipdlut.lut import identity
from clipdlut.models import load_model
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.quality import measure_grade
from clipdlut.render import apply_table, render
from clipdlut.viewing import displayed

OUT = Path(__file__).with_name("before-after.png")
FOOTAGE_OUT = Path(__file__).with_name("footage.jpg")
SKIN_OUT = Path(__file__).with_name("skin.jpg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompt", default="温暖的金色黄昏胶片")
    p.add_argument("--footage-prompt", default="冷色调的电影感夜景")
    args = p.parse_args()
    guide = Guide(load_model(args.model, device="cpu"))
    before_after(guide, args)
    footage(guide, args)
    skin_tones()


def before_after(guide: Guide, args: argparse.Namespace) -> None:
    photo = IMAGES["rocket"]()
    decoded = decode_image(encode_image(photo, "PNG"))
    opt = BatchedOptimizer(guide)
    # 36 nodes = 6^2: the LUT is exactly a level-6 Hald image
    opt.add([JobSpec("figure", working_copy(photo), args.prompt, steps=args.steps, lut_size=36, seed=0)])
    result = opt.run()["figure"]
    cube = lut_to_cube(result.lut)
    graded = render(decoded, cube)
    q = measure_grade(photo, graded, read_cube(cube).normalized())
    hald = Image.open(io.BytesIO(write_hald(read_cube(cube).table)))
    hald = hald.resize((photo.height, photo.height), Image.Resampling.NEAREST)
    captions = [(photo, "before"), (graded, f"after ({guide.name} model, {args.steps} steps)"),
                (hald, f"the LUT: slope <= {q.max_slope:.1f}, no inversions")]
    _side_by_side(captions).save(OUT, optimize=True)
    print(f"wrote {OUT}")


def footage(guide: Guide, args: argparse.Namespace) -> None:
    source = IMAGES["coffee-slog3"]
    frame, viewing = source(), source.viewing()
    opt = BatchedOptimizer(guide)
    opt.add([JobSpec("figure", displayed(working_copy(frame), viewing), args.footage_prompt, steps=args.steps,
                     seed=0)])
    lut = opt.run()["figure"].lut

    def through(strength: float) -> Image.Image:
        return apply_table(frame, read_cube(lut_to_cube(lut, strength=strength, viewing=viewing)).normalized())

    panels = [(frame, "the S-Log3 frame"), (through(0.0), "display LUT at strength 0: OCIO's transform"),
              (through(1.0), f"graded ({guide.name} model, {args.steps} steps)")]
    sheet = _side_by_side(panels)
    sheet.thumbnail((1500, 1500))
    sheet.save(FOOTAGE_OUT, quality=88, optimize=True)
    print(f"wrote {FOOTAGE_OUT}")


def skin_tones(degrees: float = 60.0) -> None:
    photo = IMAGES["astronaut"]()
    t = math.radians(degrees)  # (Rodrigues' rotation about the grey axis (1, 1, 1): hue turns, greys stay)
    c, s, k = math.cos(t), math.sin(t), (1 - math.cos(t)) / 3
    q = s / math.sqrt(3)
    turn = torch.tensor([[c + k, k - q, k + q], [k + q, c + k, k - q], [k - q, k + q, c + k]], dtype=torch.float64)
    look = torch.einsum("oc,bcxyz->boxyz", turn, identity(33, dtype=torch.float64)).clamp(0, 1)
    panels = [(photo, "before")]
    for protect in (False, True):
        cube = read_cube(lut_to_cube(look, protect_skin=protect)).normalized()
        f = skin.figures(cube)
        panels.append((apply_table(photo, cube), f"hue turned {degrees:g} deg, {'with' if protect else 'without'} "
                       f"protect_skin: skin hue <= {f.hue_shift:.0f} deg, dE <= {f.delta_e:.1f}"))
    _side_by_side(panels, font_size=14).save(SKIN_OUT, quality=88, optimize=True)
    print(f"wrote {SKIN_OUT}")


def _side_by_side(panels: list[tuple[Image.Image, str]], font_size: int = 16) -> Image.Image:
    """Pictures in a row on white, each under its caption (Latin only: a prompt goes in the README's caption)."""
    pad, label = 12, 26
    width = sum(img.width for img, _ in panels) + pad * (len(panels) + 1)
    sheet = Image.new("RGB", (width, max(img.height for img, _ in panels) + pad * 2 + label), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=font_size)
    x0 = pad
    for img, text in panels:
        sheet.paste(img, (x0, pad + label))
        draw.text((x0, pad), text, fill="black", font=font)
        x0 += img.width + pad
    return sheet


if __name__ == "__main__":
    main()
