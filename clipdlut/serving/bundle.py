"""Several named files as the one blob the job store keeps per job input (a series' photos, its reference photo,
the LUT it starts from): an uncompressed zip archive, readable with any zip tool."""

from __future__ import annotations

import io
import zipfile


def pack(files: dict[str, bytes]) -> bytes:
    """One blob of named files, in order (images are compressed already: stored as they are)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def unpack(blob: bytes) -> dict[str, bytes]:
    """The named files of :func:`pack`, in order."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {name: z.read(name) for name in z.namelist()}
