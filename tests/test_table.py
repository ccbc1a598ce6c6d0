import numpy as np
import pytest
import torch

from clipdlut import lut as L
from clipdlut.table import MAX_SIZE, MIN_SIZE, blend_table, check_size, identity_table, trilinear
from tests.conftest import random_smooth_lut

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n", [MIN_SIZE, 17, 33, MAX_SIZE])
def test_the_identity_table_is_the_identity_lut_bit_for_bit(n):
    assert np.array_equal(identity_table(n), L.to_table(L.identity(n, dtype=torch.float64)))


def test_sizes_out_of_range_are_refused():
    for bad in (MIN_SIZE - 1, MAX_SIZE + 1, 17.0):
        with pytest.raises(ValueError, match="LUT size"):
            check_size(bad)  # type: ignore[arg-type]


def test_trilinear_matches_the_tensor_apply():
    table = L.to_table(random_smooth_lut(9, 4))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.2, 1.2, (50, 40, 3))  # outside [0, 1] too: clamped to the border as grid_sample does
    ours = trilinear(table, pts)
    lut = torch.from_numpy(table).permute(3, 0, 1, 2)[None]
    ref = L.apply(lut, torch.from_numpy(pts).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    assert ours.shape == pts.shape and np.abs(ours - ref.numpy()).max() < 1e-12
    nodes = identity_table(9)
    assert np.abs(trilinear(table, nodes) - table).max() < 1e-12  # at the nodes, the nodes


def test_blend_table_is_the_tensor_blend():
    lut = random_smooth_lut(5, 1)
    for strength in (0.0, 0.5, 1.0, 2.0):
        assert np.abs(blend_table(L.to_table(lut), strength) - L.to_table(L.blend(lut, strength))).max() < 1e-15


def test_a_neutral_table_stays_neutral_at_any_strength():
    from clipdlut.table import LUMA, blend_table, identity_table, is_neutral

    grey = identity_table(5) @ np.array(LUMA)
    bw = np.repeat((grey ** 0.8)[..., None], 3, axis=-1)  # a black-and-white look with a tone curve
    for strength in (0.0, 0.5, 1.7):
        assert is_neutral(blend_table(bw, strength))
    assert np.allclose(blend_table(bw, 0.0)[..., 0], grey)  # strength 0: the plain conversion
    assert not is_neutral(blend_table(identity_table(5), 0.5))
