import pytest
import torch

from clipdlut import losses
from clipdlut.losses import LossWeights
from clipdlut.lut import identity
from tests.conftest import random_smooth_lut

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n", [2, 3, 17, 33])
def test_smoothness_is_exactly_zero_on_identity(n):
    assert torch.equal(losses.smoothness(identity(n, 2)), torch.zeros(2))


def test_smoothness_ignores_linear_grades_but_not_bumps():
    n = 17
    lut = identity(n) * 0.8 + 0.1  # a linear contrast change: no curvature
    assert losses.smoothness(lut)[0] < 1e-8
    bumpy = identity(n)
    bumpy[0, 0, 8, 8, 8] += 0.05
    assert losses.smoothness(bumpy)[0] > 0.1


def test_image_terms():
    src = torch.rand(2, 3, 3, 16, 16) * 0.5  # (jobs, views, channels, H, W)
    assert losses.color_shift(src, src).tolist() == [0, 0]
    shifted = src.clone()
    shifted[1] = 0.9
    assert losses.color_shift(shifted, src)[0] == 0 and losses.color_shift(shifted, src)[1] > 0.05
    dark = torch.full((1, 2, 3, 8, 8), 0.01)
    assert losses.black_level(dark, dark) == 0
    assert losses.black_level(dark + 0.1, dark) > 0
    assert losses.black_level(dark - 0.005, dark) == 0  # deepening blacks is fine


def test_every_term_of_a_stack_equals_the_term_of_each_job_alone():
    """The optimizer stacks jobs: a job's term must not depend on its batch-mates."""
    g = torch.Generator().manual_seed(0)
    out, src = torch.rand(3, 2, 3, 8, 8, generator=g), torch.rand(3, 2, 3, 8, 8, generator=g)
    feats = torch.nn.functional.normalize(torch.randn(3, 2, 16, generator=g), dim=-1)
    src_feat, text = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    luts = torch.stack([random_smooth_lut(9, seed, amount=0.3)[0].float() for seed in range(3)])
    stacked = [losses.color_shift(out, src), losses.black_level(out, src), losses.directional(feats, src_feat, text),
               losses.global_target(feats, text), losses.smoothness(luts)]
    for i in range(3):
        one = slice(i, i + 1)
        alone = [losses.color_shift(out[one], src[one]), losses.black_level(out[one], src[one]),
                 losses.directional(feats[one], src_feat[one], text[one]), losses.global_target(feats[one], text[one]),
                 losses.smoothness(luts[one])]
        assert torch.allclose(torch.stack([t[i] for t in stacked]), torch.cat(alone), atol=1e-6)


def test_lab_of_white_and_black():
    lab = losses.rgb_to_lab(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]).view(2, 3, 1, 1))
    assert torch.allclose(lab[0].flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(lab[1].flatten(), torch.zeros(3), atol=1e-3)


def test_directional_is_finite_at_zero_direction():
    feats = torch.nn.functional.normalize(torch.randn(1, 3, 8), dim=-1)
    loss = losses.directional(feats, feats[:, 0], torch.randn(1, 8))
    assert torch.isfinite(loss).all()
    zero_dir = losses.directional(feats[:, :1], feats[:, 0], torch.randn(1, 8))
    assert zero_dir.tolist() == [1.0]


def test_weights_override():
    w = LossWeights().with_overrides(color=0.5, directional=2)
    assert w["color"] == 0.5 and w["directional"] == 2.0 and w["smoothness"] == LossWeights()["smoothness"]
    with pytest.raises(ValueError, match="unknown loss weight"):
        LossWeights().with_overrides(colour=1)


def test_weights_and_the_objective_come_from_one_registry(guide, monkeypatch):
    """A term added to the registry is weighted, computed and reported with no other edit; a weight with no
    term cannot exist."""
    from clipdlut.optimizer import BatchedOptimizer, JobSpec
    from tests.conftest import gradient_image

    assert list(LossWeights()) == list(losses.TERMS)
    assert dict(LossWeights()) == {name: term.weight for name, term in losses.TERMS.items()}
    mean_level = losses.Term(lambda x: x.out.mean((1, 2, 3, 4)), 0.5)
    monkeypatch.setitem(losses.TERMS, "mean_level", mean_level)
    assert LossWeights()["mean_level"] == 0.5 and LossWeights(mean_level=2)["mean_level"] == 2
    seen = []
    opt = BatchedOptimizer(guide, on_progress=seen.append)
    opt.add([JobSpec("a", gradient_image(), "暖色调", steps=2, lut_size=5, progress_every=1)])
    opt.run()
    assert 0 < seen[0].terms["mean_level"] < 1
    monkeypatch.delitem(losses.TERMS, "mean_level")
    with pytest.raises(ValueError, match="unknown loss weight"):
        LossWeights(mean_level=1)
