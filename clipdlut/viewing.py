"""How footage is viewed: an OpenColorIO config, the input's colour space (a camera's log encoding), a display and
a view. Their processor is the technical transform a colourist would put first: input encoding -> display.

The optimizer grades what a viewer sees (the display rendering of the input); the delivered LUT is sampled on
the input's own encoding, as one of two kinds:

- ``display``: input encoding -> graded display image, the technical transform and the look in one LUT (a "show
  LUT" for log footage in Resolve or on a monitor);
- ``look``: input encoding -> the same encoding, the look alone, for a pipeline that applies its own transform
  after it.

With no input space (the default) none of this runs: photos are sRGB in and out, exactly as before.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from clipdlut.table import identity_table, trilinear

LutKind = Literal["display", "look"]
LUT_KINDS: dict[LutKind, str] = {
    "display": "input encoding -> graded display image: the technical transform and the look in one LUT",
    "look": "input encoding -> the same encoding: the look alone, before a pipeline's own transform",
}
assert set(LUT_KINDS) == set(get_args(LutKind))
BUILTIN_CONFIG = "ocio://studio-config-latest"  # the ACES studio config that ships inside OpenColorIO


class ViewingError(ValueError):
    """A colour space, display or view that the config in use does not have; says what it has."""


class ConfigError(ViewingError):
    """The OCIO config in use cannot be opened: the service's setting, not the request, is wrong."""


@dataclass(frozen=True)
class Viewing:
    """The technical transform of one job: ``input_space`` -> ``display`` / ``view`` in ``config``."""

    input_space: str
    display: str
    view: str
    config: str = BUILTIN_CONFIG

    def to_display(self, rgb: np.ndarray) -> np.ndarray:
        """Input-encoded ``rgb[..., 3]`` (0..1) as the display shows it."""
        return _apply(_processor(self, forward=True), rgb)

    def from_display(self, rgb: np.ndarray) -> np.ndarray:
        """Display values back into the input's encoding (OCIO's inverse of the view)."""
        return _apply(_processor(self, forward=False), rgb)

    @property
    def input_description(self) -> str:
        return f"{self.input_space} ({_config_name(self.config)})"

    @property
    def display_description(self) -> str:
        return f"{self.display}, view {self.view} ({_config_name(self.config)})"


def config_in_use(config: str | None = None) -> str:
    """The config named (a path or an ``ocio://`` URI), else ``$OCIO`` as studios set it, else the built-in."""
    return config or os.environ.get("OCIO") or BUILTIN_CONFIG


def open_viewing(input_space: str, display: str | None = None, view: str | None = None,
                 config: str | None = None) -> Viewing:
    """The viewing of ``input_space`` on ``display`` (the config's default display when not given) through ``view``
    (that display's default view when not given), with every name checked against the config."""
    location = config_in_use(config)
    cfg = _config(location)
    if cfg.getColorSpace(input_space) is None:
        raise ViewingError(f"input_space {input_space!r} is not in the OCIO config {_config_name(location)}; "
                           f"its input spaces: {', '.join(choices(location)['input_spaces'])}")
    name = cfg.getColorSpace(input_space).getName()  # (an alias names its colour space)
    import PyOpenColorIO as ocio

    if cfg.getColorSpace(name).isData():
        raise ViewingError(f"input_space {name!r} is data, not colour: OCIO passes it through untouched")
    if cfg.isColorSpaceLinear(name, ocio.REFERENCE_SPACE_SCENE):
        raise ViewingError(f"input_space {name!r} is scene-linear: a 3D LUT sampled on it would put most of its "
                           "nodes in the highlights; encode the footage in a log space first (e.g. ACEScct, or the "
                           "camera's own log)")
    displays = list(cfg.getDisplays())
    display = display or cfg.getDefaultDisplay()
    if display not in displays:
        raise ViewingError(f"display {display!r} is not in the OCIO config; it has: {', '.join(displays)}")
    views = list(cfg.getViews(display))
    view = view or cfg.getDefaultView(display)
    if view not in views:
        raise ViewingError(f"view {view!r} is not a view of {display!r}; it has: {', '.join(views)}")
    # ("latest" names whatever built-in config this OpenColorIO has: a job keeps the one it was checked against)
    pinned = f"ocio://{cfg.getName()}" if location == BUILTIN_CONFIG else location
    return Viewing(name, display, view, pinned)


def displayed(image: Image.Image, viewing: Viewing | None) -> Image.Image:
    """An 8-bit RGB photo or frame as the display shows it (itself when there is no viewing: a photo)."""
    if viewing is None:
        return image
    return eight_bit(viewing.to_display(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0))


def eight_bit(rgb: np.ndarray) -> Image.Image:
    """Float RGB (0..1, ``[h, w, 3]``) as an 8-bit picture, rounded."""
    return Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def choices(config: str | None = None) -> dict[str, Any]:
    """What a footage job may name in the config in use: its input spaces (those a 3D LUT samples well: not
    scene-linear, not data), its displays with their views, and the defaults."""
    import PyOpenColorIO as ocio

    location = config_in_use(config)
    cfg = _config(location)
    spaces = [cs.getName() for cs in cfg.getColorSpaces() if not cs.isData()
              and not cfg.isColorSpaceLinear(cs.getName(), ocio.REFERENCE_SPACE_SCENE)]
    displays = {d: list(cfg.getViews(d)) for d in cfg.getDisplays()}
    return {"config": _config_name(location), "input_spaces": spaces, "displays": displays,
            "default_display": cfg.getDefaultDisplay(),
            "default_views": {d: cfg.getDefaultView(d) for d in displays}}


def viewed_table(look: np.ndarray, viewing: Viewing, kind: LutKind, size: int) -> np.ndarray:
    """The delivered table ``[b, g, r, c]`` of ``size`` nodes on the input's encoding, for a ``look`` table on the
    display's encoding: ``display``: the look after the technical transform; ``look``: the look's change carried
    back into the input's encoding, ``x + T^-1(look(T x)) - T^-1(T x)``, so an identity look is exactly the
    identity (also where the transform clips)."""
    nodes = identity_table(size).reshape(-1, 3)
    shown = viewing.to_display(nodes)
    graded = trilinear(look, shown)
    if kind == "display":
        out = graded
    else:
        out = nodes + viewing.from_display(graded) - viewing.from_display(shown)
    return np.clip(out, 0.0, 1.0).reshape(size, size, size, 3)


def _apply(processor: Any, rgb: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).reshape(-1, 3))
    processor.applyRGB(flat)
    return flat.astype(np.float64).reshape(np.shape(rgb))


@functools.lru_cache(maxsize=8)
def _config(location: str) -> Any:
    import PyOpenColorIO as ocio

    try:
        return ocio.Config.CreateFromFile(location)
    except (ocio.Exception, ocio.ExceptionMissingFile) as e:
        raise ConfigError(f"cannot open the OCIO config {location}: {e}") from None


@functools.lru_cache(maxsize=32)
def _processor(viewing: Viewing, forward: bool) -> Any:
    import PyOpenColorIO as ocio

    direction = ocio.TRANSFORM_DIR_FORWARD if forward else ocio.TRANSFORM_DIR_INVERSE
    transform = ocio.DisplayViewTransform(src=viewing.input_space, display=viewing.display, view=viewing.view,
                                          direction=direction)
    return _config(viewing.config).getProcessor(transform).getDefaultCPUProcessor()


def _config_name(location: str) -> str:
    return _config(location).getName() or location
