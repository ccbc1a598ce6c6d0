import numpy as np
import pytest
import torch

from clipdlut import lut as L
from clipdlut.cube import CubeError, read_cube, write_cube
from clipdlut.export import lut_to_cube
from clipdlut.safety import make_safe
from tests.conftest import random_smooth_lut

pytestmark = pytest.mark.unit


def _table(n=5, seed=0):
    return L.to_table(random_smooth_lut(n, seed))


def test_written_profile():
    text = write_cube(_table(3), title='My "look"', comments=["made by a test", "two\nlines"])
    lines = text.split("\n")
    assert lines[0] == "# made by a test" and lines[1] == "# two lines"
    assert lines[2] == "TITLE \"My 'look'\"" and lines[3] == "LUT_3D_SIZE 3"
    assert len(lines) == 4 + 27 + 1 and lines[-1] == ""  # trailing newline
    assert all(len(v.split(".")[1]) == 6 for v in lines[4].split())
    assert "\r" not in text and not text.startswith("\ufeff")


def test_rows_are_red_fastest():
    text = write_cube(L.to_table(L.identity(2)))
    rows = [r for r in text.splitlines() if r[0].isdigit()]
    assert rows[:4] == ["0.000000 0.000000 0.000000", "1.000000 0.000000 0.000000",
                        "0.000000 1.000000 0.000000", "1.000000 1.000000 0.000000"]


@pytest.mark.parametrize("n", [2, 17, 33, 65])
def test_round_trip_within_1e6(n):
    table = _table(n, n)
    cube = read_cube(write_cube(table, title="t"))
    assert cube.size == n and cube.title == "t"
    assert np.abs(cube.table - table).max() <= 5e-7 + 1e-12


def test_colour_science_reads_our_files_identically(tmp_path):
    colour = pytest.importorskip("colour")
    table = _table(17, 3)
    path = tmp_path / "ours.cube"
    path.write_text(write_cube(table, title="check"), encoding="utf-8")
    theirs = colour.io.read_LUT_ResolveCube(str(path))
    ours = read_cube(path.read_bytes()).table
    assert np.array_equal(theirs.table.transpose(2, 1, 0, 3), ours)  # theirs is [r, g, b]
    rgb = np.random.default_rng(0).random((500, 3))
    expected = L.apply(torch.from_numpy(ours).permute(3, 0, 1, 2)[None],
                       torch.from_numpy(rgb.T.reshape(1, 3, 1, 500)))[0].reshape(3, 500).T.numpy()
    assert np.abs(theirs.apply(rgb, interpolator=colour.algebra.table_interpolation_trilinear)
                  - expected).max() < 1e-9


def test_pillow_lut_reads_our_files(tmp_path):
    pillow_lut = pytest.importorskip("pillow_lut")
    table = _table(9, 4)
    path = tmp_path / "ours.cube"
    path.write_text(write_cube(table), encoding="utf-8")
    theirs = pillow_lut.load_cube_file(str(path))
    assert tuple(theirs.size) == (9, 9, 9)
    assert np.allclose(np.asarray(theirs.table).reshape(9, 9, 9, 3), table, atol=5e-7)


def test_variants_read():
    table = _table(3, 5)
    text = write_cube(table)
    body = text.split("LUT_3D_SIZE 3\n")[1]
    variants = [
        text.replace("\n", "\r\n"),
        "\ufeff" + text,
        "# leading comment\n\n" + text.replace("LUT_3D_SIZE", "\n# inside\nLUT_3D_SIZE"),
        "LUT_3D_SIZE 3\nDOMAIN_MIN 0 0 0\nDOMAIN_MAX 1 1 1\nLUT_1D_INPUT_RANGE 0 1\nMY_VENDOR_KEY x\n" + body,
        "lut_3d_size 3\n" + body,
    ]
    for v in variants:
        assert np.abs(read_cube(v).table - table).max() < 1e-6, v[:40]
    assert np.abs(read_cube(("\ufeff" + text).encode()).table - table).max() < 1e-6


def test_domain_is_honoured():
    # A LUT over 0..2 that is the identity there: on the unit domain it maps x -> x as well,
    # but only the lower half of its nodes are used.
    n = 5
    ident = L.to_table(L.identity(n)) * 2
    text = "DOMAIN_MIN 0 0 0\nDOMAIN_MAX 2 2 2\n" + write_cube(ident / 2).split("\n", 1)[1]
    cube = read_cube(text.replace("LUT_3D_SIZE", "LUT_3D_SIZE", 1))
    assert cube.domain_max == (2.0, 2.0, 2.0)
    assert np.allclose(cube.normalized(), L.to_table(L.identity(n)) / 2, atol=1e-9)
    resolve = read_cube("LUT_3D_INPUT_RANGE 0 2\n" + write_cube(ident / 2))
    assert np.allclose(resolve.normalized(), cube.normalized())


@pytest.mark.parametrize("text,message", [
    ("LUT_3D_SIZE 2\n0 0 0\n1 0 0\n", "needs 8 table rows, found 2"),
    ("LUT_3D_SIZE 2\n" + "0 0 0\n" * 7 + "0 zero 0\n", "line 9: table row: '0 zero 0' is not a list of numbers"),
    ("LUT_3D_SIZE 2\n" + "0 0 0\n" * 7 + "0 0\n", "line 9: table row needs 3 numbers, found 2"),
    ("LUT_1D_SIZE 2\n0 0 0\n1 1 1\n", "line 2: this is a 1D LUT"),
    ("LUT_3D_SIZE 1\n0 0 0\n", "line 1: LUT_3D_SIZE 1 is out of range 2..65"),
    ("LUT_3D_SIZE 300\n", "LUT_3D_SIZE 300 is out of range"),
    ("LUT_3D_SIZE two\n", "line 1: LUT_3D_SIZE needs one whole number"),
    ("TITLE \"x\"\n", "no LUT_3D_SIZE line"),
    ("0 0 0\n", "line 1: table data before LUT_3D_SIZE"),
    ("LUT_3D_SIZE 2\nDOMAIN_MIN 1 1 1\nDOMAIN_MAX 0 0 0\n" + "0 0 0\n" * 8, "DOMAIN_MAX"),
    ("LUT_3D_SIZE 2\n" + "0 0 nan\n" * 8, "line 2: table row: values must be finite"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_malformed_files_give_clear_errors(text, message):
    with pytest.raises(CubeError) as e:
        read_cube(text)
    assert message in str(e.value)


def test_writer_refuses_bad_tables():
    with pytest.raises(ValueError, match="shape"):
        write_cube(np.zeros((3, 3, 2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        write_cube(np.full((2, 2, 2, 3), np.nan))


def test_values_outside_0_1_are_clipped_unless_asked_not_to():
    table = L.to_table(L.identity(3)) * 1.5 - 0.25
    assert read_cube(write_cube(table)).table.min() == 0 and read_cube(write_cube(table)).table.max() == 1
    assert np.abs(read_cube(write_cube(table, clip=False)).table - table).max() < 1e-6


def test_lut_to_cube_applies_strength_and_size():
    lut = random_smooth_lut(33, 7).float()
    text = lut_to_cube(lut, strength=0.0, size=17)
    assert np.abs(read_cube(text).table - L.to_table(L.identity(17))).max() < 1e-6
    full = read_cube(lut_to_cube(lut, size=65)).table
    assert np.abs(full[::2, ::2, ::2] - L.to_table(make_safe(lut))).max() < 1e-6  # (a LUT this wild is repaired)
    gentle = random_smooth_lut(33, 7, amount=0.05).float()
    assert np.abs(read_cube(lut_to_cube(gentle)).table - L.to_table(gentle)).max() < 1e-6  # a safe one is not


# Property-based: any table, title and comments round-trip; arbitrary text never escapes as another error.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

_unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, width=64)


@st.composite
def _tables(draw):
    n = draw(st.integers(min_value=2, max_value=5))
    return draw(arrays(np.float64, (n, n, n, 3), elements=_unit))


@given(table=_tables(), title=st.text(max_size=40), comments=st.lists(st.text(max_size=30), max_size=3))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_round_trip(table, title, comments):
    cube = read_cube(write_cube(table, title=title, comments=comments))
    assert cube.size == table.shape[0]
    assert np.abs(cube.table - table).max() <= 5e-7 + 1e-12


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.lists(st.sampled_from(["LUT_3D_SIZE 2", "LUT_3D_SIZE 99", "DOMAIN_MIN 0 0 0", "DOMAIN_MAX 1 1",
                                           "TITLE \"x\"", "0 0 0", "1 1 1", "0.5 nan 1", "1e400 0 0", "# c", "",
                                           "LUT_1D_SIZE 4", "a b c", "\ufeff"]), max_size=14).map("\n".join)))
@settings(max_examples=300, deadline=None)
def test_property_reader_fails_only_with_cube_error(data):
    try:
        cube = read_cube(data)
    except CubeError as e:
        assert str(e)  # a message to show the user
    else:
        assert cube.table.shape == (cube.size,) * 3 + (3,) and np.isfinite(cube.table).all()


def test_rows_are_written_as_python_formats_them_ties_included():
    from clipdlut.table import identity_table

    rng = np.random.default_rng(0)
    tables = [identity_table(33), np.clip(identity_table(17) + rng.normal(0, 0.05, (17, 17, 17, 3)), 0, 1),
              rng.integers(0, 2 * 10**6, (9, 9, 9, 3)) / 2e6,  # every value a tie at the seventh decimal
              np.full((2, 2, 2, 3), 0.9999995)]
    for table in tables:
        rows = write_cube(table).split("\n", 2)[2]
        assert rows == "".join(f"{r:.6f} {g:.6f} {b:.6f}\n" for r, g, b in table.reshape(-1, 3).tolist())
    assert write_cube(np.full((2, 2, 2, 3), -0.0)).splitlines()[2] == "0.000000 0.000000 0.000000"
