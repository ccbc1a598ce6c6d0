import numpy as np
import pytest
import torch
from PIL import ImageFilter

from clipdlut import lut as L
from clipdlut.render import pillow_lut
from clipdlut.tensors import to_tensor
from tests.conftest import all_levels_image, gradient_image, random_smooth_lut

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n", [2, 17, 33, 65])
def test_identity_nodes_are_exact(n):
    ident = L.identity(n)
    k = torch.arange(n, dtype=torch.float64) / (n - 1)
    assert torch.equal(ident[0, 0], k.float().view(1, 1, n).expand(n, n, n))  # red varies along the last axis
    assert torch.equal(ident[0, 1], k.float().view(1, n, 1).expand(n, n, n))
    assert torch.equal(ident[0, 2], k.float().view(n, 1, 1).expand(n, n, n))


@pytest.mark.parametrize("n", [2, 17, 33, 65])
def test_identity_apply_is_exact_at_8_bits(n):
    img = to_tensor(all_levels_image()).unsqueeze(0)
    out = L.apply(L.identity(n), img)
    assert (out - img).abs().max() < 1e-6
    assert torch.equal((out * 255).round(), (img * 255).round())


@pytest.mark.parametrize("n", [2, 17, 33, 65])
def test_identity_is_exact_in_pillow(n):
    img = all_levels_image()
    out = img.filter(pillow_lut(L.to_table(L.identity(n))))
    assert np.array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("n,seed", [(17, 0), (33, 1), (65, 2), (9, 3)])
def test_torch_apply_matches_pillow_within_one_level(n, seed):
    img = gradient_image(120, 80, seed)
    lut = random_smooth_lut(n, seed)
    ours = (L.apply(lut.float(), to_tensor(img).unsqueeze(0))[0] * 255).round().permute(1, 2, 0).numpy()
    theirs = np.asarray(img.filter(pillow_lut(L.to_table(lut)))).astype(np.float64)
    assert np.abs(ours - theirs).max() <= 1


def test_channel_swap_proves_axis_order():
    n = 5
    ident = L.identity(n)
    swap = ident[:, [2, 1, 0]]  # output (r, g, b) := input (b, g, r)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(L.apply(swap, red).flatten(), torch.tensor([0.0, 0.0, 1.0]))
    table = L.to_table(swap)
    assert table[0, 0, n - 1].tolist() == [0.0, 0.0, 1.0]  # [b=0, g=0, r=max] -> blue
    from PIL import Image
    px = Image.new("RGB", (1, 1), (255, 0, 0)).filter(ImageFilter.Color3DLUT(n, table))
    assert px.getpixel((0, 0)) == (0, 0, 255)


def test_apply_is_differentiable_in_lut_and_image():
    lut = L.identity(5).requires_grad_(True)
    img = torch.rand(1, 3, 8, 8, requires_grad=True)
    L.apply(lut, img).sum().backward()
    assert lut.grad.abs().sum() > 0 and img.grad.abs().sum() > 0


def test_blend_is_exact_and_linear():
    lut = random_smooth_lut(17, 4).float()
    img = to_tensor(gradient_image()).unsqueeze(0)
    half = L.apply(L.blend(lut, 0.5), img)
    mix = 0.5 * img + 0.5 * L.apply(lut, img)
    assert (half - mix).abs().max() < 1e-5
    assert torch.equal(L.blend(lut, 0.0), L.identity(17))
    assert torch.allclose(L.blend(lut, 1.0), lut)


@pytest.mark.parametrize("src,dst", [(33, 65), (65, 33), (17, 33), (33, 17)])
def test_resample_is_exact(src, dst):
    lut = random_smooth_lut(src, 5)
    out = L.resample(lut, dst)
    assert out.shape[-1] == dst
    back = L.resample(out, src)
    if (dst - 1) % (src - 1) == 0:  # refined then decimated: the very same nodes
        assert torch.allclose(back, lut, atol=1e-12)
    # Values at shared nodes agree exactly with evaluating the original.
    nodes = L.identity(dst, dtype=torch.float64).reshape(1, 3, dst * dst, dst)
    assert torch.allclose(out.reshape(1, 3, dst * dst, dst), L.apply(lut, nodes), atol=1e-12)


def test_resample_identity_stays_identity():
    assert torch.equal(L.resample(L.identity(33), 65), L.identity(65))
    assert torch.equal(L.resample(L.identity(65), 33), L.identity(33))


def test_bad_sizes_and_shapes_are_refused():
    with pytest.raises(ValueError, match="2 to 65"):
        L.identity(1)
    with pytest.raises(ValueError, match="2 to 65"):
        L.identity(66)
    with pytest.raises(ValueError, match="shape"):
        L.apply(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="2 LUTs for 1 images"):
        L.apply(L.identity(3, 2), torch.zeros(1, 3, 2, 2))


def test_table_round_trip():
    lut = random_smooth_lut(9, 6).float()
    assert torch.equal(L.from_table(L.to_table(lut)), lut)
