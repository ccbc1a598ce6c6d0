"""Regenerate ``docs/before-after.png`` for the README: photo, graded photo, and the LUT as a Hald image.

``python docs/make_figure.py [--model tiny] [--steps 150]``. With the offline ``tiny`` model the look is
arbitrary (random weights); with ``ViT-B-16`` it follows the prompt.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipdlut.cube import lut_to_cube, read_cube
from clipdlut.guidance import Guide
from clipdlut.hald import write_hald
from clipdlut.imaging import decode_image, encode_image, working_copy
from clipdlut.models import load_model
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.render import render

OUT = Path(__file__).with_name("before-after.png")


def scene(w: int = 480, h: int = 320) -> Image.Image:
    """A synthetic landscape: sky, sun, hills and water, with enough colours to show a grade."""
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    sky = np.stack([0.45 + 0.4 * y, 0.6 + 0.3 * y, 0.95 - 0.2 * y], -1)
    hills = np.stack([0.25 + 0.2 * x, 0.5 - 0.1 * y, 0.2 + 0.1 * x], -1)
    water = np.stack([0.15 + 0.2 * x, 0.35 + 0.1 * y, 0.55 + 0.2 * y], -1)
    ridge = 0.55 + 0.08 * np.sin(9 * x) + 0.04 * np.sin(23 * x)
    img = np.where((y > ridge)[..., None], hills, sky)
    img = np.where((y > 0.8)[..., None], water, img)
    sun = ((x - 0.72) ** 2 * 2.2 + (y - 0.28) ** 2) < 0.006
    img[sun] = (1.0, 0.92, 0.7)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompt", default="温暖的金色黄昏胶片")
    args = p.parse_args()
    photo = scene()
    decoded = decode_image(encode_image(photo, "PNG"))
    guide = Guide(load_model(args.model, device="cpu"))
    opt = BatchedOptimizer(guide)
    # 36 nodes = 6^2: the LUT is exactly a level-6 Hald image
    opt.add([JobSpec("figure", working_copy(photo), args.prompt, steps=args.steps, lut_size=36, seed=0)])
    result = opt.run()["figure"]
    cube = lut_to_cube(result.lut)
    graded = render(decoded, cube)
    hald = Image.open(io.BytesIO(write_hald(read_cube(cube).table)))
    hald = hald.resize((photo.height, photo.height), Image.Resampling.NEAREST)
    pad, label = 12, 26
    sheet = Image.new("RGB", (photo.width * 2 + hald.width + pad * 4, photo.height + pad * 2 + label), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)  # Latin only: the prompt goes in the README caption
    for i, (img, text) in enumerate([(photo, "before"), (graded, f"after ({guide.name} model, {args.steps} steps)"),
                                     (hald, "the LUT (Hald)")]):
        x0 = pad + i * (photo.width + pad)
        sheet.paste(img, (x0, pad + label))
        draw.text((x0, pad), text, fill="black", font=font)
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
