"""The colour-safety guarantees (clipdlut/safety.py): the repair, and every LUT the library returns."""

import pytest
import torch

from clipdlut.cube import read_cube
from clipdlut.evaluation import IMAGES
from clipdlut.export import lut_to_cube
from clipdlut.imaging import working_copy
from clipdlut.lut import from_table, identity, to_table
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.safety import MAX_SLOPE, MONOTONE_TOLERANCE, Invariants, _running, make_safe, measure
from clipdlut.status import JobStatus
from clipdlut.table import OFFERED_SIZES
from tests.conftest import gradient_image, random_smooth_lut

pytestmark = pytest.mark.unit


def wild(n: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """LUTs that break every guarantee: inverted channels, steep jumps, values far outside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 3, n, n, n, generator=g, dtype=torch.float64) * (0.4 + 4 / (n - 1))
    return (1 - identity(n, batch, dtype=torch.float64)) * 1.5 + noise - 0.2


def assert_safe(inv: Invariants) -> None:
    assert inv.min_own_step >= -MONOTONE_TOLERANCE * 255, inv
    assert inv.max_slope <= MAX_SLOPE, inv
    assert 0.0 <= inv.min_value and inv.max_value <= 1.0, inv
    assert inv.safe


@pytest.mark.parametrize("n", [2, 3, 9, 17, 33, 65])
def test_the_running_minima_and_maxima_are_torchs_to_the_bit(n):
    """The repair's scan (safety._running) against torch.cummin/cummax, along every axis, from either end."""
    v = wild(n, batch=2)
    for axis in (2, 3, 4):
        assert torch.equal(_running(torch.minimum, v, axis), torch.cummin(v, dim=axis).values)
        assert torch.equal(_running(torch.maximum, v, axis), torch.cummax(v, dim=axis).values)
        assert torch.equal(_running(torch.minimum, v, axis, from_end=True),
                           torch.cummin(v.flip(axis), dim=axis).values.flip(axis))
        assert torch.equal(_running(torch.maximum, v, axis, from_end=True),
                           torch.cummax(v.flip(axis), dim=axis).values.flip(axis))


@pytest.mark.parametrize("n", [2, 3, 9, 17, 33, 65])
def test_the_repair_makes_any_lut_safe(n):
    bad = wild(n, batch=2 if n == 65 else 3)
    before = measure(bad)
    assert before.min_own_step < -100 and before.max_slope > MAX_SLOPE and not before.safe  # the test can fail
    for dtype in (torch.float32, torch.float64):
        out = make_safe(bad.to(dtype))
        assert out.dtype == dtype and out.shape == bad.shape
        assert_safe(measure(out))


def test_the_measure_sees_each_kind_of_breakage():
    n = 9
    inverted = identity(n)
    inverted[0, 1] = 1 - inverted[0, 1]  # green falls as green rises
    assert measure(inverted).min_own_step < -30 and not measure(inverted).safe
    steep = identity(n)
    steep[0, 2, :, :, 5:] = 1.0  # blue jumps as red crosses the middle: a cross-axis band
    assert measure(steep).max_slope > MAX_SLOPE and not measure(steep).safe
    assert not measure(identity(n) * 1.2).safe and not measure(identity(n) - 0.1).safe
    assert_safe(measure(identity(n)))


@pytest.mark.parametrize("n", [2, 17, 33])
def test_a_safe_lut_comes_back_as_it_was(n):
    for lut in (identity(n, dtype=torch.float64), random_smooth_lut(n, 1, amount=0.08), identity(n) * 0.5 + 0.25):
        assert_safe(measure(lut))
        assert torch.allclose(make_safe(lut), lut, atol=1e-6)
    assert torch.equal(make_safe(identity(n)), identity(n))


def test_the_repair_is_idempotent_and_each_lut_of_a_stack_is_repaired_alone():
    bad = wild(17, batch=4, seed=3).float()
    once = make_safe(bad)
    assert torch.allclose(make_safe(once), once, atol=1e-6)
    for i in range(4):
        assert torch.equal(make_safe(bad[i:i + 1]), once[i:i + 1])


@pytest.mark.parametrize("n", [2, 9, 33])
def test_pins_hold_exactly_whatever_the_lut(n):
    bad = wild(n, seed=5).float()
    for blacks, whites in ((True, False), (False, True), (True, True)):
        out = make_safe(bad, keep_blacks=blacks, keep_whites=whites)
        assert_safe(measure(out))
        if blacks:
            assert out[:, :, 0, 0, 0].eq(0).all()
        if whites:
            assert out[:, :, -1, -1, -1].eq(1).all()
    free = make_safe(bad)
    assert not free[:, :, 0, 0, 0].eq(0).all() and not free[:, :, -1, -1, -1].eq(1).all()  # pins are not free


def _sizes_and_steps():
    # 65 costs 8x a 33 per step on CPU: fewer steps there, the same guarantee
    return [(17, 60), (33, 60), (65, 12)]


@pytest.mark.parametrize(("lut_size", "steps"), _sizes_and_steps())
def test_every_returned_lut_is_safe_at_every_offered_size(guide, lut_size, steps):
    """The tiny model is an adversarial critic (its gradients are noise): over several photos and prompts, a
    smooth sky among them, every LUT the optimizer returns, and every .cube written from it (any offered size,
    strength up to 2, with and without pins), keeps the guarantees."""
    photos = {"sky": working_copy(IMAGES["sky"]()), "coffee": working_copy(IMAGES["coffee"]()),
              "gradient": gradient_image(96, 64, 3)}
    prompts = ["赛博朋克风格的夜晚城市", "high-contrast black and white", "温暖的金色黄昏"]
    specs = [JobSpec(f"{name}:{i}", img, p, steps=steps, lut_size=lut_size, seed=i, lr=2e-2,
                     keep_blacks=i == 1, keep_whites=i == 2)
             for i, p in enumerate(prompts) for name, img in photos.items()]
    unrepaired = []

    def keep_last_state(p) -> None:  # (a job's last report comes before its LUT is repaired)
        if p.iteration == steps:
            unrepaired.append(identity(lut_size) + opt.state(p.job_id).delta)

    opt = BatchedOptimizer(guide, on_progress=keep_last_state)
    opt.add(specs)
    results = opt.run()
    assert not measure(torch.cat(unrepaired)).safe  # what the guidance wanted breaks the guarantees
    each_step = BatchedOptimizer(guide, safe_each_step=True)
    each_step.add([s for s in specs if s.job_id.startswith("sky")])
    results.update({f"each:{k}": v for k, v in each_step.run().items()})
    for key, r in results.items():
        assert r.status == JobStatus.FINISHED
        assert_safe(measure(r.lut))
        spec = next(s for s in specs if key.endswith(s.job_id))
        # written at its own size, as is and at the strength that extrapolates most (a weaker one is a blend of
        # two safe LUTs); at the other sizes for a sky job of each pin setting (a 65 is slow to write and read
        # back: there only the extrapolated one)
        own = [(lut_size, x) for x in ((1.0, 2.0) if lut_size < 65 else (2.0,))]
        others = [(x, 2.0) for x in OFFERED_SIZES if x != lut_size and key.startswith("sky:")]
        for size, strength in own + others:
            cube = read_cube(lut_to_cube(r.lut, strength=strength, size=size, keep_blacks=spec.keep_blacks,
                                         keep_whites=spec.keep_whites))
            table = from_table(cube.normalized())
            assert_safe(measure(table))
            if spec.keep_blacks:
                assert table[0, :, 0, 0, 0].eq(0).all()
            if spec.keep_whites:
                assert table[0, :, -1, -1, -1].eq(1).all()


@pytest.mark.parametrize("n", [2, 9, 33])
def test_the_neutral_repair_keeps_a_neutral_lut_neutral(n):
    from clipdlut.mono import neutral
    from clipdlut.table import is_neutral
    lut = neutral(wild(n, batch=2, seed=4))
    out = make_safe(lut, keep_blacks=True, keep_whites=True, neutral=True)
    assert all(is_neutral(to_table(one)) for one in out.split(1)) and measure(out).safe
    assert float(out[:, :, 0, 0, 0].abs().max()) == 0.0 and float(out[:, :, -1, -1, -1].min()) == 1.0
    safe = make_safe(neutral(identity(n)), neutral=True)
    assert torch.equal(safe, neutral(identity(n)))
