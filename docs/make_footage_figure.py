"""Regenerate ``docs/footage.jpg`` for the README: a log frame (scikit-image's ``coffee`` encoded into S-Log3
S-Gamut3.Cine by OpenColorIO's inverse transform), its plain technical conversion (the `display` LUT at strength 0:
OCIO's S-Log3 -> sRGB display, ACES 2.0 SDR view), and the graded result (the `display` LUT at full strength).

``python docs/make_footage_figure.py [--model tiny] [--steps 150]``. With the offline ``tiny`` model the look is
arbitrary (random weights); with ``ViT-B-16`` it follows the prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clipdlut.cube import read_cube
from clipdlut.evaluation import IMAGES
from clipdlut.export import lut_to_cube
from clipdlut.guidance import Guide
from clipdlut.imaging import working_copy
from clipdlut.models import load_model
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.render import apply_table
from clipdlut.viewing import displayed

OUT = Path(__file__).with_name("footage.jpg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompt", default="冷色调的电影感夜景")
    args = p.parse_args()
    source = IMAGES["coffee-slog3"]
    frame, viewing = source(), source.viewing()
    guide = Guide(load_model(args.model, device="cpu"))
    opt = BatchedOptimizer(guide)
    opt.add([JobSpec("figure", displayed(working_copy(frame), viewing), args.prompt, steps=args.steps, seed=0)])
    lut = opt.run()["figure"].lut

    def through(strength: float) -> Image.Image:
        return apply_table(frame, read_cube(lut_to_cube(lut, strength=strength, viewing=viewing)).normalized())

    panels = [(frame, "the S-Log3 frame"), (through(0.0), "display LUT at strength 0: OCIO's transform"),
              (through(1.0), f"graded ({guide.name} model, {args.steps} steps)")]
    pad, label, w, h = 12, 26, frame.width, frame.height
    sheet = Image.new("RGB", (w * 3 + pad * 4, h + pad * 2 + label), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)  # Latin only: the prompt goes in the README caption
    for i, (img, text) in enumerate(panels):
        x0 = pad + i * (w + pad)
        sheet.paste(img, (x0, pad + label))
        draw.text((x0, pad), text, fill="black", font=font)
    sheet.thumbnail((1500, 1500))
    sheet.save(OUT, quality=88, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
