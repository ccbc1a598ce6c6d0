"""Regenerate ``docs/before-after.png`` for the README: a real photo (scikit-image's ``rocket``: a dusk sky,
where banding would show), the graded photo, and the LUT as a Hald image, with its safety figures.

``python docs/make_figure.py [--model tiny] [--steps 150]``. With the offline ``tiny`` model the look is
arbitrary (random weights); with ``ViT-B-16`` it follows the prompt.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clipdlut.cube import read_cube
from clipdlut.evaluation import IMAGES
from clipdlut.export import lut_to_cube
from clipdlut.guidance import Guide
from clipdlut.hald import write_hald
from clipdlut.imaging import decode_image, encode_image, working_copy
from clipdlut.models import load_model
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.quality import measure_grade
from clipdlut.render import render

OUT = Path(__file__).with_name("before-after.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompt", default="温暖的金色黄昏胶片")
    args = p.parse_args()
    photo = IMAGES["rocket"]()
    decoded = decode_image(encode_image(photo, "PNG"))
    guide = Guide(load_model(args.model, device="cpu"))
    opt = BatchedOptimizer(guide)
    # 36 nodes = 6^2: the LUT is exactly a level-6 Hald image
    opt.add([JobSpec("figure", working_copy(photo), args.prompt, steps=args.steps, lut_size=36, seed=0)])
    result = opt.run()["figure"]
    cube = lut_to_cube(result.lut)
    graded = render(decoded, cube)
    q = measure_grade(photo, graded, read_cube(cube).normalized())
    hald = Image.open(io.BytesIO(write_hald(read_cube(cube).table)))
    hald = hald.resize((photo.height, photo.height), Image.Resampling.NEAREST)
    pad, label = 12, 26
    sheet = Image.new("RGB", (photo.width * 2 + hald.width + pad * 4, photo.height + pad * 2 + label), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)  # Latin only: the prompt goes in the README caption
    captions = [(photo, "before"), (graded, f"after ({guide.name} model, {args.steps} steps)"),
                (hald, f"the LUT: slope <= {q.max_slope:.1f}, no inversions")]
    for i, (img, text) in enumerate(captions):
        x0 = pad + i * (photo.width + pad)
        sheet.paste(img, (x0, pad + label))
        draw.text((x0, pad), text, fill="black", font=font)
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
