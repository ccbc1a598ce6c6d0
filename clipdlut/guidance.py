"""Chinese-CLIP as a differentiable critic: prompt features, image preprocessing, seeded views."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from clipdlut.compat import import_cn_clip
from clipdlut.models import LoadedModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Chinese templates for a Chinese model; each prompt's features are the mean over these.
TEMPLATES = ("{}", "一张{}的照片。", "{}风格的图片。", "一张{}色调的图片。", "这张照片的色彩是{}。")
TEXT_CACHE_SIZE = 4096


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing: matches Pillow's BICUBIC within one 8-bit level."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def random_views(image: torch.Tensor, count: int, size: int, generator: torch.Generator,
                 min_scale: float = 0.5) -> torch.Tensor:
    """``count`` square crops (side ``min_scale``..1 of the short side) with random flips, resized to ``size``.

    Crop positions come from ``generator`` alone, so a job's views never depend on its batch-mates.
    """
    _, h, w = image.shape
    short = min(h, w)
    draws = torch.rand(count, 4, generator=generator).tolist()
    views = []
    for scale, fx, fy, flip in draws:
        side = max(1, round(short * (min_scale + (1 - min_scale) * scale)))
        x, y = round(fx * (w - side)), round(fy * (h - side))
        crop = image[:, y:y + side, x:x + side]
        if flip < 0.5:
            crop = crop.flip(-1)
        views.append(resize(crop.unsqueeze(0), size))
    return torch.cat(views).clamp_(0, 1)


def series_views(images: list[torch.Tensor], count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` views drawn across a series of images, so that one LUT is fitted to them all: the images are
    visited in a random order, each view from the next one (for one image, exactly :func:`random_views`)."""
    if len(images) == 1:
        return random_views(images[0], count, size, generator)
    order = torch.randperm(len(images), generator=generator).tolist()
    return torch.cat([random_views(images[order[i % len(images)]], 1, size, generator) for i in range(count)])


class Guide:
    """A loaded Chinese-CLIP model with normalized text and image features and a text-feature cache."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.resolution = loaded.resolution
        self.device = loaded.device
        self.dtype = loaded.dtype
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._tokenize = import_cn_clip().tokenize

    @property
    def name(self) -> str:
        return self.loaded.name

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images at model resolution in [0, 1] -> the model's input (CLIP mean/std)."""
        return (images - self._mean) / self._std

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Whole images ``(B, 3, H, W)`` in [0, 1] -> model input, differentiably (squashed like cn_clip)."""
        return self.normalize(resize(images, self.resolution))

    def autocast(self) -> torch.autocast:
        """The model's compute precision (bf16 autocast on CUDA; off where it computes in fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 image features of preprocessed pixels ``(B, 3, R, R)``."""
        with self.autocast():
            feats = self.model.encode_image(pixels)
        return F.normalize(feats.float(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm features of whole images ``(B, 3, H, W)`` in [0, 1]."""
        return self.encode_pixels(self.preprocess(images))

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm template-averaged features ``(P, D)``, cached per prompt for this model.

        Each prompt is encoded in a batch of its own templates, so its features never depend on which other
        prompts happened to be encoded with it (float32 kernels block differently at other batch sizes, and
        a job's result would then depend on what the cache held when it arrived).
        """
        for p in dict.fromkeys(prompts):
            if p in self._text_cache:
                continue
            tokens = self._tokenize([t.format(p) for t in TEMPLATES]).to(self.device)
            with self.autocast():
                feats = self.model.encode_text(tokens)
            self._text_cache[p] = F.normalize(F.normalize(feats.float(), dim=-1).mean(0), dim=-1)
        out = []
        for p in prompts:
            self._text_cache.move_to_end(p)
            out.append(self._text_cache[p])
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return torch.stack(out)
