"""Skin tones kept (clipdlut/skin.py): the region, the fences, and every LUT returned with ``protect_skin``."""

import itertools

import numpy as np
import pytest
import torch

from clipdlut import skin
from clipdlut.cube import read_cube
from clipdlut.evaluation import IMAGES
from clipdlut.export import lut_to_cube
from clipdlut.formats import FORMATS, convert, resampled
from clipdlut.hald import hald_level_for, read_hald
from clipdlut.imaging import working_copy
from clipdlut.lut import to_table
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.safety import make_safe, measure
from clipdlut.status import JobStatus
from clipdlut.table import OFFERED_SIZES
from tests.test_safety import assert_safe, wild

pytestmark = pytest.mark.unit


def within_bound(figures: skin.SkinFigures) -> bool:
    return figures.hue_shift <= skin.HUE_DEGREES and figures.delta_e <= skin.DELTA_E


def test_the_region_is_chai_and_ngans_skin_map_and_keeps_deep_skin_tones():
    rgb = np.array([[255, 219, 172], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 51, 23],  # light to deep
                    [128, 128, 128], [40, 90, 200], [30, 200, 40], [250, 20, 30], [255, 255, 255]])
    assert skin.in_region(rgb).tolist() == [True] * 5 + [False] * 5  # grey, blue, green, pure red, white
    colours = skin.region_colours()
    assert len(colours) == 1_532_429 and skin.in_region(colours).all()
    r, g, b = (colours[:, i].astype(np.float64) for i in range(3))
    cb, cr = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    assert cb.min() > 76 and cb.max() < 128 and cr.min() > 132 and cr.max() < 174  # (the map, to within rounding)
    assert (colours.max(axis=1) < 100).sum() > 10_000  # (dark and deep skin colours are in it)


def test_the_slack_is_finite_on_skin_only_and_larger_where_skin_is_saturated():
    for n in (17, 33, 65):
        room = skin.slack(n)
        finite = np.isfinite(room)
        assert 0 < finite.sum() < n ** 3 / 4 and (room[finite] > 0).all()
        assert not finite[-1, 0, 0] and not finite[0, -1, 0] and not finite[-1, -1, 0]  # (blue, green, cyan)
    room = skin.slack(33)
    assert room[np.isfinite(room)].max() > 5 * room[np.isfinite(room)].min()  # (by each colour's own reach)


@pytest.mark.parametrize("n", [17, 33, 65])
def test_the_fences_are_safe_and_their_corners_keep_the_bound_on_every_skin_colour(n):
    """The farthest a fenced LUT can go: each channel at its lower or upper fence (each channel's guarantees are its
    own, so every mix is safe). The bound holds on all 868,072 skin colours, with the margin the limits keep."""
    lo, hi = (x.clamp(0, 1) for x in skin.fences(n, torch.float64))
    worst = skin.SkinFigures(0.0, 0.0, 0)
    for signs in itertools.product((0, 1), repeat=3):
        lut = torch.stack([(hi if s else lo)[0, c] for c, s in enumerate(signs)]).unsqueeze(0)
        assert_safe(measure(lut))
        f = skin.figures(to_table(lut), step=2)
        worst = skin.SkinFigures(max(worst.hue_shift, f.hue_shift), max(worst.delta_e, f.delta_e), f.colours)
    assert within_bound(worst) and worst.colours > 190_000, worst
    room = max(worst.hue_shift / skin.HUE_DEGREES, worst.delta_e / skin.DELTA_E)
    assert room > 0.6  # (the fences leave the room the bound gives)


def test_a_fenced_repair_keeps_the_bound_and_the_pins_whatever_the_lut():
    for n, seed in ((17, 0), (33, 1)):
        bad = wild(n, batch=1, seed=seed).float()
        out = make_safe(bad, keep_blacks=True, keep_whites=True, fences=skin.fences(n))
        assert_safe(measure(out))
        assert out[0, :, 0, 0, 0].eq(0).all() and out[0, :, -1, -1, -1].eq(1).all()
        assert within_bound(skin.figures(to_table(out), step=1))
        assert not within_bound(skin.figures(to_table(make_safe(bad))))  # (the test can fail)


def test_what_protection_cannot_keep_is_refused():
    skin.check("color")
    skin.check("color", "Rec.1886 Rec.709 - Display")
    with pytest.raises(ValueError, match="black-and-white"):
        skin.check("bw")
    with pytest.raises(ValueError, match="sRGB or Rec.709"):
        skin.check("color", "Rec.2100-PQ - Display")
    with pytest.raises(ValueError, match="black-and-white"):
        JobSpec("j", working_copy(skin.chart()), "warm", mode="bw", protect_skin=True).validate()


def test_the_chart_is_skin_across_the_region():
    chart = np.asarray(skin.chart()).reshape(-1, 3)
    assert skin.in_region(chart).all() and len(np.unique(chart, axis=0)) == 64


def test_every_returned_lut_keeps_skin_under_the_adversarial_critic(guide):
    """The acceptance run: the tiny model's noise gradients (150 steps, astronaut and the skin chart), with and
    without protection. Every LUT returned with it, as optimized and as written at every offered size, at full and
    doubled strength and on a Hald image's grid, keeps the bound on every skin colour and every other guarantee;
    the same jobs without it break the bound."""
    photos = {"astronaut": working_copy(IMAGES["astronaut"]()), "chart": working_copy(skin.chart())}
    specs = [JobSpec(f"{name}:{protect}", img, "赛博朋克风格的夜晚城市", steps=150, lut_size=33, seed=3, lr=2e-2,
                     keep_whites=protect, protect_skin=protect)
             for name, img in photos.items() for protect in (True, False)]
    opt = BatchedOptimizer(guide)
    opt.add(specs)
    results = opt.run()
    for spec in specs:
        r = results[spec.job_id]
        assert r.status == JobStatus.FINISHED
        assert_safe(measure(r.lut))
        if not spec.protect_skin:
            assert not within_bound(skin.figures(to_table(r.lut)))  # (what the guidance wanted moves skin)
            continue
        assert within_bound(skin.figures(to_table(r.lut), step=1))
        for size, strength in itertools.product(OFFERED_SIZES, (1.0, 2.0)):
            text = lut_to_cube(r.lut, strength=strength, size=size, keep_whites=True, protect_skin=True)
            table = read_cube(text).normalized()
            assert_safe(measure(torch.as_tensor(table).permute(3, 0, 1, 2).unsqueeze(0)))
            assert within_bound(skin.figures(table, step=1)), (size, strength)
        # a Hald image's grid (64 nodes for a 33) keeps the fences of its own size; its 8 bits are its precision
        delivered = read_cube(lut_to_cube(r.lut, protect_skin=True)).normalized()
        grid = resampled(delivered, hald_level_for(33) ** 2, protect_skin=True)
        assert within_bound(skin.figures(grid, step=1))
        hald = read_hald(convert(lut_to_cube(r.lut, protect_skin=True), "hald", protect_skin=True))
        assert np.abs(hald - grid).max() <= FORMATS["hald"].precision
