"""Reading and writing Adobe/Resolve ``.cube`` 3D LUT files.

Rows are red-fastest, so N^3 rows read in C order into ``(N, N, N, 3)`` give ``table[b, g, r, c]``:
the layout of :mod:`clipdlut.table` and of Pillow's ``Color3DLUT``. The file format only: numpy, no torch
(:mod:`clipdlut.export` turns an optimized tensor into ``.cube`` text).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

from clipdlut.table import MAX_SIZE, MIN_SIZE, trilinear

DECIMALS = 6


class CubeError(ValueError):
    """A ``.cube`` file that cannot be read; the message names the line and the problem."""

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


@dataclass
class Cube:
    """A parsed 3D LUT: ``table[b, g, r, c]`` mapping the cube ``domain_min..domain_max``."""

    table: np.ndarray
    title: str = ""
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    comments: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.table.shape[0])

    def normalized(self) -> np.ndarray:
        """The table resampled on the unit domain [0, 1]^3 (a no-op for the default domain)."""
        lo, hi = np.array(self.domain_min), np.array(self.domain_max)
        if np.all(lo == 0) and np.all(hi == 1):
            return self.table
        axis = np.arange(self.size) / (self.size - 1)
        b, g, r = np.meshgrid(axis, axis, axis, indexing="ij")
        # Node k of the unit grid sits at input value k/(n-1); in table coordinates that input is
        # (v - lo) / (hi - lo). Evaluate the table there (clamped to its border).
        return trilinear(self.table, (np.stack([r, g, b], axis=-1) - lo) / (hi - lo))


def _escape_title(title: str) -> str:
    return " ".join(title.replace('"', "'").split())


def write_cube(table: np.ndarray, title: str = "CLIP-DLUT", comments: list[str] | tuple[str, ...] = (),
               clip: bool = True) -> str:
    """The ``.cube`` text of ``table[b, g, r, c]`` in the most widely accepted profile.

    Comments first, ``TITLE``, ``LUT_3D_SIZE``, then N^3 rows with 6 decimals; ``\\n`` line ends and a
    trailing newline. Values are clipped to [0, 1] because most consumers refuse or clip others; ``clip=False``
    keeps them, for a consumer known to interpolate them before clipping its output, as Pillow does (ffmpeg).
    """
    table = np.asarray(table, dtype=np.float64)
    n = table.shape[0]
    if table.shape != (n, n, n, 3) or not MIN_SIZE <= n <= MAX_SIZE:
        raise ValueError(f"table must have shape (N, N, N, 3) with N in {MIN_SIZE}..{MAX_SIZE}, got {table.shape}")
    if not np.all(np.isfinite(table)):
        raise ValueError("table contains NaN or infinity")
    rows = (np.clip(table, 0.0, 1.0) if clip else table).reshape(-1, 3)
    head = [f"# {' '.join(c.split())}" for c in comments]
    head += [f'TITLE "{_escape_title(title)}"', f"LUT_3D_SIZE {n}"]
    if rows.min() >= 0.0 and rows.max() <= 1.0:
        body = _unit_rows(rows)
    else:
        body = "".join(f"{r:.{DECIMALS}f} {g:.{DECIMALS}f} {b:.{DECIMALS}f}\n" for r, g, b in rows.tolist())
    return "\n".join(head) + "\n" + body


def _unit_rows(rows: np.ndarray) -> str:
    """Rows of values in [0, 1] as lines ``d.dddddd d.dddddd d.dddddd``, character for character what Python's
    ``f"{v:.6f}"`` writes (but for -0.0, written 0.000000), built with numpy: a 33-node table in a few ms instead of
    60 ms of Python formatting that held the API's GIL."""
    scaled = rows * 10**DECIMALS
    digits = np.rint(scaled).astype(np.int64)
    # (a value within rounding error of a tie is written as Python writes it: it rounds the exact binary value)
    for i, j in zip(*np.nonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)):
        digits[i, j] = int(f"{rows[i, j]:.{DECIMALS}f}".replace(".", ""))
    width = DECIMALS + 3  # digit, point, decimals, separator
    chars = np.empty((len(rows), 3, width), dtype=np.uint8)
    chars[..., 0] = ord("0") + digits // 10**DECIMALS
    chars[..., 1] = ord(".")
    for k in range(DECIMALS):
        chars[..., 2 + k] = ord("0") + digits // 10 ** (DECIMALS - 1 - k) % 10
    chars[:, :2, -1] = ord(" ")
    chars[:, 2, -1] = ord("\n")
    return chars.tobytes().decode("ascii")


def _floats(parts: list[str], count: int, lineno: int, what: str) -> list[float]:
    if len(parts) != count:
        raise CubeError(f"{what} needs {count} numbers, found {len(parts)}", lineno)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise CubeError(f"{what}: {' '.join(parts)!r} is not a list of numbers", lineno) from None
    if not all(math.isfinite(v) for v in values):
        raise CubeError(f"{what}: values must be finite", lineno)
    return values


def _rows_at_once(lines: list[str]) -> np.ndarray | None:
    """The table rows read by numpy in one go (a 33-node table in milliseconds, not a tenth of a second), or
    ``None`` when the lines hold anything but rows of three finite numbers: the line-by-line reading then keeps
    the comments, or names the line that is wrong."""
    body = "\n".join(lines)
    if "#" in body:
        return None
    try:
        values = np.loadtxt(io.StringIO(body), dtype=np.float64, ndmin=2)
    except ValueError:
        return None
    return values if values.shape[1] == 3 and np.isfinite(values).all() else None


@dataclass
class _Header:
    """What the keyword lines of a ``.cube`` said, as they are read."""

    size: int | None = None
    size_1d: bool = False
    title: str = ""
    lo: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    hi: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def read(self, line: str, parts: list[str], lineno: int) -> None:
        """Take one keyword line; any keyword not named here (``LUT_1D_INPUT_RANGE``, vendor extensions) does not
        affect a 3D table."""
        key = parts[0].upper()
        if key == "TITLE":
            self.title = line[len("TITLE"):].strip().strip('"')
        elif key == "LUT_3D_SIZE":
            if self.size is not None:
                raise CubeError("LUT_3D_SIZE given twice", lineno)
            if len(parts) != 2 or not parts[1].isdigit():
                raise CubeError(f"LUT_3D_SIZE needs one whole number, got {' '.join(parts[1:])!r}", lineno)
            self.size = int(parts[1])
            if not MIN_SIZE <= self.size <= MAX_SIZE:
                raise CubeError(f"LUT_3D_SIZE {self.size} is out of range {MIN_SIZE}..{MAX_SIZE}", lineno)
        elif key == "LUT_1D_SIZE":
            self.size_1d = True
        elif key == "DOMAIN_MIN":
            self.lo = _floats(parts[1:], 3, lineno, "DOMAIN_MIN")
        elif key == "DOMAIN_MAX":
            self.hi = _floats(parts[1:], 3, lineno, "DOMAIN_MAX")
        elif key == "LUT_3D_INPUT_RANGE":
            a, b = _floats(parts[1:], 2, lineno, "LUT_3D_INPUT_RANGE")
            self.lo, self.hi = [a] * 3, [b] * 3

    def table_size(self, lineno: int | None = None) -> int:
        """The 3D table's size, once the header allows a table (at ``lineno``, or at the end of the file)."""
        if self.size is None:
            if self.size_1d:
                raise CubeError("this is a 1D LUT (LUT_1D_SIZE); a 3D LUT needs LUT_3D_SIZE", lineno)
            raise CubeError("table data before LUT_3D_SIZE" if lineno else "no LUT_3D_SIZE line: not a 3D .cube file",
                            lineno)
        return self.size


def _text(data: str | bytes) -> str:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise CubeError(f"not UTF-8 text (byte {e.start}); is this really a .cube file?") from None
    return data.lstrip("\ufeff")


def read_cube(data: str | bytes) -> Cube:
    """Parse ``.cube`` text or bytes; tolerant of variants, strict about the table itself.

    Accepts comments and blank lines, CRLF, a UTF-8 BOM, ``DOMAIN_MIN``/``DOMAIN_MAX``, Resolve's
    ``LUT_3D_INPUT_RANGE`` and unknown keywords. Raises :class:`CubeError` naming the line otherwise.
    """
    header = _Header()
    comments: list[str] = []
    rows: list[list[float]] = []
    at_once: np.ndarray | None = None
    first_row_line = 0
    lines = _text(data).splitlines()
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line[1:].strip())
        elif line and (line[0].isdigit() or line[0] in "+-."):
            header.table_size(lineno)
            if not rows:
                first_row_line = lineno
                if (at_once := _rows_at_once(lines[lineno - 1:])) is not None:
                    break
            rows.append(_floats(line.split(), 3, lineno, "table row"))
        elif line:
            header.read(line, line.split(), lineno)
    size = header.table_size()
    if header.size_1d:
        raise CubeError("files with both a 1D and a 3D table are not supported; export the 3D LUT alone")
    values = at_once if at_once is not None else np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    if len(values) != size ** 3:
        raise CubeError(f"LUT_3D_SIZE {size} needs {size ** 3} table rows, found {len(values)}", first_row_line or None)
    lo, hi = header.lo, header.hi
    if any(h <= low for low, h in zip(lo, hi)):
        raise CubeError(f"DOMAIN_MAX {hi} must be greater than DOMAIN_MIN {lo}")
    return Cube(table=values.reshape(size, size, size, 3), title=header.title, domain_min=(lo[0], lo[1], lo[2]),
                domain_max=(hi[0], hi[1], hi[2]), comments=comments)

