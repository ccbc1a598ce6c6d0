"""What a job may ask for, with no torch: the modes, the pins and the defaults every interface offers (the CLI's
parsers, the API's schemas, the optimizer's job spec), under these names and with these words. The limits on what
it may ask live in :mod:`clipdlut.limits`."""

from __future__ import annotations

from typing import Literal

Mode = Literal["color", "bw"]
MODES: dict[str, str] = {
    "color": "a colour grade",
    "bw": "black and white: a neutral LUT (R = G = B out) whose channel mix and tone curve are optimized",
}
# The optional bounds every returned LUT then keeps exactly, by option name (off by default)
PINS: dict[str, str] = {
    "keep_blacks": "keep blacks: pure black stays exactly black (the ends of the neutral axis do not move)",
    "keep_whites": "keep whites: pure white stays exactly white (the ends of the neutral axis do not move)",
    "protect_skin": "protect skin tones: every colour of a published skin-tone region keeps its hue within 5 degrees "
                    "and moves at most 4 CIEDE2000 (colour looks only; footage: on sRGB or Rec.709 displays)",
}
DEFAULT_SOURCE_PROMPT = "一张自然色调的图片"
DEFAULT_STEPS = 200  # a job's steps when its request names none (the original API's own default stays 1000)
DEFAULT_LUT_SIZE = 33
DEFAULT_LR = 5e-3  # Adam's learning rate on the LUT's nodes
