"""Request and response models of every HTTP endpoint, with descriptions, limits and examples."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, JsonValue, model_validator

from clipdlut.limits import MAX_PHOTOS
from clipdlut.optimizer import Scores
from clipdlut.options import DEFAULT_LUT_SIZE, DEFAULT_SOURCE_PROMPT, DEFAULT_STEPS, MODES, PINS, Mode
from clipdlut.safety import MAX_SLOPE
from clipdlut.serving.jobs import JobOptions
from clipdlut.serving.settings import load_settings
from clipdlut.skin import DELTA_E, FIGURE_STEP, HUE_DEGREES
from clipdlut.status import ORIGINAL_STATUSES, JobStatus
from clipdlut.table import MAX_STRENGTH, OFFERED_SIZES
from clipdlut.viewing import LUT_KINDS, LutKind

_S = load_settings()
MAX_STEPS = _S.max_steps  # (CLIPDLUT_MAX_STEPS: the bound every interface checks and documents)
# (CLIPDLUT_MAX_PROMPT_CHARS, by default clipdlut.limits.MAX_PROMPT_CHARS): documented here, checked after cleaning by
# clipdlut.limits.clean_prompt on every interface, with one message
PROMPT_LIMIT: dict[str, JsonValue] = {"maxLength": _S.max_prompt_chars}
LutSize = Literal[OFFERED_SIZES]  # type: ignore[valid-type]  # (of a tuple, read at run time: Literal[17, 33, 65])
ImageFormat = Literal["png", "jpeg", "webp"]
EXAMPLE_PROMPT = "赛博朋克风格的夜晚城市"


class Quality(BaseModel):
    """How safe the returned LUT is on any footage, and what the grade did to this photo."""

    ssim: float | None = Field(description="structural similarity of the luminance of the original and the result "
                               "(1: the content is untouched); null where it is not defined (`note` says why)",
                               examples=[0.93])
    color_shift: float = Field(description="mean CIEDE2000 colour difference between the original and the result "
                               "(about 1 is just noticeable)", examples=[4.0])
    min_own_step: float = Field(description="the LUT's smallest step of a channel along its own input axis, in "
                                "8-bit levels (never below -1: no inversions)", examples=[0.4])
    max_slope: float = Field(description=f"the LUT's steepest output change per input change, along any axis "
                             f"(at most {MAX_SLOPE:g}: no banding)", examples=[2.7])
    min_value: float = Field(description="the LUT's smallest output (at least 0)")
    max_value: float = Field(description="the LUT's largest output (at most 1)")
    safe: bool = Field(description="all of the guarantees hold")
    note: str | None = Field(None, description="a word on the figures: why one is missing, or, for a footage "
                             "`display` LUT, that its steep places are the technical transform's")


class Skin(BaseModel):
    """How far the grade moved the colours of the skin-tone region (clipdlut/skin.py: Kovač et al. 2003 with
    Sobottka and Pitas 1998), measured on the LUT as returned (footage: on the look, on the display's encoding)."""

    protected: bool = Field(description=f"`protect_skin` was asked: every skin colour keeps its hue within "
                            f"{HUE_DEGREES:g} degrees and moves at most {DELTA_E:g} CIEDE2000")
    hue_shift: float = Field(description="the largest CIELAB hue shift of a skin colour, in degrees", examples=[3.1])
    delta_e: float = Field(description="the largest CIEDE2000 move of a skin colour", examples=[2.2])
    colours: int = Field(description=f"how many skin colours were measured (those on the 8-bit levels 0, "
                         f"{FIGURE_STEP}, {2 * FIGURE_STEP}, ..., 255)", examples=[32819])


class LutFormatInfo(BaseModel):
    """One file format `/v1/lut` writes (clipdlut/formats.py)."""

    name: str = Field(description="the `format` to ask `/v1/lut` for", examples=["3dl-flame"])
    suffix: str = Field(description="the file's suffix", examples=[".3dl"])
    where: str = Field(description="the applications that load it", examples=["Autodesk Flame, Nuke, ffmpeg"])
    precision: float = Field(description="largest difference from the .cube once the file is read back and "
                             "applied, in 0..1 units", examples=[1.25e-4])


class Footage(BaseModel):
    """What a footage job may name (`input_space`, `display`, `view`) in the OCIO config the service uses."""

    config: str = Field(description="the OCIO config's name", examples=["studio-config-v5.0.0_aces-v2.1_ocio-v2.6"])
    input_spaces: list[str] = Field(description="colour spaces a LUT samples well (log and display encodings; "
                                    "scene-linear ones are refused)", examples=[["ARRI LogC4", "Apple Log"]])
    displays: dict[str, list[str]] = Field(description="each display and its views",
                                           examples=[{"sRGB - Display": ["ACES 2.0 - SDR 100 nits (Rec.709)"]}])
    default_display: str = Field(description="the display used when a job names none", examples=["sRGB - Display"])
    default_views: dict[str, str] = Field(description="each display's view used when a job names none")
    lut_kinds: dict[str, str] = Field(description="the LUT kinds (`lut_kind`) and what each maps")


class Limits(BaseModel):
    """What a job may ask of this service: every interface checks these, and the page reads them from here."""

    max_prompt_chars: int = Field(description="longest prompt, in characters (after control characters are removed "
                                  "and whitespace collapsed)", examples=[200])
    max_photos: int = Field(description="most photos in a series (`images`)", examples=[16])
    max_steps: int = Field(description="most optimizer steps of a job", examples=[5000])
    lut_sizes: list[int] = Field(description="the LUT sizes offered (nodes per side)", examples=[[17, 33, 65]])
    max_strength: float = Field(description="the strongest blend (1: the look as optimized)", examples=[2.0])
    min_side: int = Field(description="a photo to grade needs at least this many pixels on its short side",
                          examples=[16])
    max_aspect: float = Field(description="a photo to grade may be at most this many times as long as it is wide",
                              examples=[16.0])
    max_pixels: int = Field(description="most pixels of any photo", examples=[40_000_000])
    max_body_mb: float = Field(description="largest photo, in MB (a series: all its photos together)", examples=[32])
    lut_formats: list[LutFormatInfo] = Field(description="the LUT file formats offered, the delivered .cube first")


class Timings(BaseModel):
    queued_s: float = Field(description="seconds from submission until optimization began")
    optimize_s: float = Field(description="seconds spent optimizing the LUT")
    render_s: float = Field(description="seconds spent rendering and encoding the full-resolution image")
    total_s: float = Field(description="seconds from submission to result")


class GradedPhoto(BaseModel):
    """One graded photo of a series, rendered from the task's `.cube` text."""

    image: str = Field(description="the graded full-resolution image, base64")
    media_type: str = Field(description="media type of `image`", examples=["image/png"])
    width: int = Field(description="width of the photo in pixels (as sent, after its EXIF orientation)")
    height: int = Field(description="height of the photo in pixels")
    quality: Quality | None = Field(None, description="colour-safety and content figures of this photo's grade")


class RetouchResult(BaseModel):
    """The result of a native retouch task."""

    task_id: str = Field(description="the task's id")
    cube: str = Field(description="the .cube file text (apply it anywhere: Photoshop, Resolve, ffmpeg lut3d)")
    image: str = Field(description="the graded full-resolution image, base64 (of a series: its first photo)")
    media_type: str = Field(description="media type of `image` (`image_format` of the request)",
                            examples=["image/png"])
    width: int = Field(description="width of `image` in pixels")
    height: int = Field(description="height of `image` in pixels")
    images: list[GradedPhoto] = Field(default_factory=list, description="a series' graded photos, in the order sent, "
                                      "each rendered from `cube` (empty for a request of one photo: it is `image`)")
    mode: Mode = Field("color", description="; ".join(f"`{k}`: {v}" for k, v in MODES.items()))
    input_space: str | None = Field(None, description="footage: the colour space `cube` takes in (null: a photo, "
                                    "sRGB in and out)", examples=[None])
    lut_kind: LutKind = Field("display", description="what `cube` maps: " + "; ".join(
        f"`{k}`: {v}" for k, v in LUT_KINDS.items()))
    lut_size: int = Field(description="nodes per side of `cube`")
    strength: float = Field(description="the blend `cube` was written at")
    steps: int = Field(description="optimizer steps run")
    seed: int = Field(description="the job's random seed")
    model: str = Field(description="the CLIP model that guided the grade")
    scores: Scores = Field(description="CLIP similarities before and after, on the whole photo(s)")
    quality: Quality | None = Field(None, description="colour-safety and content figures of `image` (none for "
                                    "results from before they were measured)")
    skin: Skin | None = Field(None, description="how far the grade moved skin tones (none for results from "
                              "before they were measured)")
    timings: Timings = Field(description="where the task's time went")


class ProgressResponse(BaseModel):
    """Where a job stands; `preview` is a small PNG data URL of the current grade when asked for."""

    task_id: str
    status: JobStatus
    iteration: int = Field(description="optimizer steps done")
    total: int = Field(description="optimizer steps in all")
    loss: float | None = Field(None, description="total loss at the last report")
    terms: dict[str, float] = Field(default_factory=dict, description="loss terms at the last report")
    error: str | None = Field(None, description="why the job failed, when it did")
    preview: str | None = Field(None, description="PNG data URL, about 256 px, when include_preview")


class CancelResponse(BaseModel):
    task_id: str
    status: Literal["cancelling", "finished", "cancelled", "failed"] = Field(
        description="`cancelling` when the request was taken; otherwise the state the job had already reached")


class Concepts(BaseModel):
    """Zero-shot scoring of one image against concept prompts."""

    image: str = Field(description="the image, base64 or a data URL")
    concepts: list[str] = Field(min_length=1, max_length=64, description="prompts to score the image against",
                                examples=[["白天", "夜晚", "黄昏"]])


class ConceptScores(BaseModel):
    probabilities: dict[str, float] = Field(description="softmax over the concepts (CLIP logit scale)")
    best: str = Field(description="the most likely concept")


# The original system's API (README, "The original system's API"), kept field for field for its clients.

class LegacyRetouchRequest(BaseModel):
    image: str = Field(description="base64 image, optionally a data URL (data:image/png;base64,...)")
    target_prompt: str = Field(min_length=1, json_schema_extra=PROMPT_LIMIT, description="the look to aim for",
                               examples=[EXAMPLE_PROMPT])
    original_prompt: str = Field(DEFAULT_SOURCE_PROMPT, min_length=1, json_schema_extra=PROMPT_LIMIT,
                                 description="what the photo looks like now")
    iteration: int = Field(1000, ge=1, le=MAX_STEPS, description="optimizer steps")
    keep_blacks: bool = Field(False, description=PINS["keep_blacks"] + " (not in the original system)")
    keep_whites: bool = Field(False, description=PINS["keep_whites"] + " (not in the original system)")

    def options(self) -> JobOptions:
        """The job's options as the API stores them."""
        return JobOptions(target_prompt=self.target_prompt, source_prompt=self.original_prompt, steps=self.iteration,
                          keep_blacks=self.keep_blacks, keep_whites=self.keep_whites)


class LegacyTask(BaseModel):
    task_id: str
    status: Literal[ORIGINAL_STATUSES] = Field(  # type: ignore[valid-type]  # (of a tuple, read at run time)
        description="the original system's names of the job statuses")
    current_iteration: int
    overall_iteration: int
    lut: str | None = Field(None, description="base64 of the .cube text or of the N x N^2 PNG strip")
    image: str | None = Field(None, description="preview while processing, the result when finished (base64 PNG)")


class LegacyQueryRequest(BaseModel):
    task_id: str
    include_image: bool = False
    lut_format: Literal["cube", "png"] | None = None


class LegacyStopRequest(BaseModel):
    task_id: str


class LegacyStopResponse(BaseModel):
    status: Literal["ok"] = "ok"
    task_id: str


class RetouchRequest(BaseModel):
    """A native retouch task: the photo (or a series of photos) and how to grade it: a prompt, a reference photo,
    or both; from scratch or refining a LUT you have."""

    image: str | None = Field(None, description="the photo, base64 or a data URL (JPEG, PNG, WebP, TIFF, BMP); "
                              "or send `images`")
    images: list[str] | None = Field(None, min_length=1, max_length=MAX_PHOTOS,
                                     description=f"a series of 1 to {MAX_PHOTOS} photos instead of `image`: one LUT "
                                     "is fitted to them all and the result grades each")
    target_prompt: str | None = Field(None, min_length=1, json_schema_extra=PROMPT_LIMIT,
                                      description="the look to aim for (may "
                                      "be left out when `reference_image` gives the look)", examples=[EXAMPLE_PROMPT])
    source_prompt: str = Field(DEFAULT_SOURCE_PROMPT, min_length=1, json_schema_extra=PROMPT_LIMIT,
                               description="what the photo looks like now")
    reference_image: str | None = Field(None, description="a photo whose look to aim for, base64 or a data URL: "
                                        "its CLIP features and its L*a*b* colour statistics become targets")
    start_from: str | None = Field(None, description="refine a look: the task_id of a finished task, or the text of "
                                   "a .cube file; the job starts from that LUT instead of the identity",
                                   examples=["3f2a9c1e6b7d4e0f8a5b2c1d9e8f7a6b"])
    mode: Mode = Field("color", description="; ".join(f"`{k}`: {v}" for k, v in MODES.items()))
    steps: int = Field(DEFAULT_STEPS, ge=1, le=MAX_STEPS, description="optimizer steps; more is slower and stronger")
    lut_size: LutSize = Field(DEFAULT_LUT_SIZE, description="LUT nodes per side")
    strength: float = Field(1.0, ge=0.0, le=MAX_STRENGTH, description="blend with the identity (a `bw` look: with "
                            f"the plain black-and-white conversion): 0 none, 1 full, {MAX_STRENGTH:g} doubled")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random seed; the same seed gives the same LUT")
    image_format: ImageFormat | None = Field(None, description="format of the returned full-resolution images "
                                             "(default: each photo's own: a JPEG stays a JPEG, a WebP a WebP, "
                                             "others become PNG); the photo's EXIF and ICC profile are kept")
    keep_blacks: bool = Field(False, description=PINS["keep_blacks"])
    keep_whites: bool = Field(False, description=PINS["keep_whites"])
    protect_skin: bool = Field(False, description=PINS["protect_skin"])
    input_space: str | None = Field(None, description="footage: the photos' colour space in the OCIO config (the "
                                    "built-in ACES studio config unless the service names another); the look is "
                                    "graded on the display's rendering and the LUT sampled on this encoding. Left "
                                    "out: photos, sRGB in and out", examples=["S-Log3 S-Gamut3.Cine"])
    display: str | None = Field(None, description="footage: the display graded for (default: the config's)",
                                examples=["sRGB - Display"])
    view: str | None = Field(None, description="footage: the view on that display (default: the display's own)",
                             examples=["ACES 2.0 - SDR 100 nits (Rec.709)"])
    lut_kind: LutKind = Field("display", description="footage: " + "; ".join(
        f"`{k}`: {v}" for k, v in LUT_KINDS.items()))

    @model_validator(mode="after")
    def _what_to_grade(self) -> RetouchRequest:
        if (self.image is None) == (self.images is None):
            raise ValueError("send the photo as `image`, or a series as `images` (one of the two)")
        if self.target_prompt is None and self.reference_image is None:
            raise ValueError("say what look to aim for: `target_prompt`, `reference_image`, or both")
        return self

    @property
    def photos(self) -> list[str]:
        return self.images if self.images is not None else [self.image or ""]

    def options(self) -> JobOptions:
        """The job's options as the API stores them."""
        return JobOptions(target_prompt=self.target_prompt or "", source_prompt=self.source_prompt, steps=self.steps,
                          lut_size=self.lut_size, strength=self.strength, seed=self.seed,
                          image_format=self.image_format, keep_blacks=self.keep_blacks, keep_whites=self.keep_whites,
                          protect_skin=self.protect_skin,
                          mode=self.mode, photos=len(self.photos), reference=self.reference_image is not None,
                          input_space=self.input_space, display=self.display, view=self.view, lut_kind=self.lut_kind)
