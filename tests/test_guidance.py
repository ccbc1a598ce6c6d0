import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from clipdlut.guidance import TEMPLATES, Guide, random_views, resize
from clipdlut.tensors import to_tensor
from tests.conftest import gradient_image

pytestmark = pytest.mark.unit

# Golden output of the tiny model (seeded weights): pins tokenization, templates and the text tower.
GOLDEN_TEXT = [0.42731446, 0.01541686, 0.04632771, -0.11824057, 0.46369740, 0.06809513]


@pytest.mark.parametrize("src,dst", [((300, 200), (224, 224)), ((96, 64), (32, 32)), ((500, 400), (336, 336))])
def test_resize_matches_pillow_within_one_level(src, dst):
    img = gradient_image(*src, seed=3)
    ours = (resize(to_tensor(img).unsqueeze(0), dst)[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    theirs = np.asarray(img.resize(dst, Image.Resampling.BICUBIC)).astype(np.float64)
    assert np.abs(ours - theirs).max() <= 1


def test_text_features_are_golden_unit_norm_and_cached(guide):
    feats = guide.encode_text(["赛博朋克风格的夜晚城市"])
    assert feats.shape == (1, 32)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert np.allclose(feats[0, :6].numpy(), GOLDEN_TEXT, atol=1e-4)
    calls = []
    handle = guide.model.bert.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = guide.encode_text(["赛博朋克风格的夜晚城市", "暖色调"])
    finally:
        handle.remove()
    assert len(calls) == 1  # only the new prompt went through the text tower
    assert torch.equal(again[0], feats[0])
    assert len(TEMPLATES) > 1


def test_image_features_are_differentiable(guide):
    img = to_tensor(gradient_image()).unsqueeze(0).requires_grad_(True)
    feats = guide.encode_images(img)
    assert feats.shape == (1, 32)
    feats.sum().backward()
    assert img.grad.abs().sum() > 0


def test_reduced_precision_runs_under_autocast_with_fp32_weights(guide):
    """The CUDA path (bf16 autocast), run on CPU: cn_clip's float32 LayerNorms work, the weights stay
    fp32 and the features are those of fp32 up to bf16 rounding."""
    bf16 = Guide(dataclasses.replace(guide.loaded, dtype=torch.bfloat16))
    with torch.no_grad():
        text, text_bf16 = guide.encode_text(["暖色调", "赛博朋克"]), bf16.encode_text(["暖色调", "赛博朋克"])
    img = to_tensor(gradient_image()).unsqueeze(0).requires_grad_(True)
    feats = bf16.encode_images(img)
    with torch.no_grad():
        fp32 = guide.encode_images(img)
    feats.sum().backward()
    assert feats.dtype == text_bf16.dtype == torch.float32
    assert not torch.equal(text, text_bf16) and not torch.equal(feats, fp32)  # bf16 did run
    assert (text * text_bf16).sum(-1).min() > 0.99 and (feats * fp32).sum(-1).min() > 0.99
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


def test_views_are_seeded_and_shaped():
    img = to_tensor(gradient_image(120, 80))
    a = random_views(img, 4, 32, torch.Generator().manual_seed(5))
    b = random_views(img, 4, 32, torch.Generator().manual_seed(5))
    c = random_views(img, 4, 32, torch.Generator().manual_seed(6))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_a_prompts_features_do_not_depend_on_its_company():
    """Encoded alone or with others, cached before or not: the same features to the last bit (a job's result
    must not depend on what the cache held when it arrived)."""
    from clipdlut.models import load_model

    alone = Guide(load_model("tiny", device="cpu")).encode_text(["暖色"])
    together = Guide(load_model("tiny", device="cpu")).encode_text(["冷色调", "暖色", "复古胶片"])
    assert torch.equal(alone[0], together[1])


def test_series_views_visit_every_photo_and_one_photo_draws_as_before():
    from clipdlut.guidance import random_views, series_views
    photos = [torch.full((3, 40, 50), v) for v in (0.1, 0.5, 0.9)]
    views = series_views(photos, 3, 16, torch.Generator().manual_seed(0))
    assert sorted(round(float(v.mean()), 3) for v in views) == [0.1, 0.5, 0.9]
    one = series_views(photos[:1], 4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(one, random_views(photos[0], 4, 16, torch.Generator().manual_seed(1)))
