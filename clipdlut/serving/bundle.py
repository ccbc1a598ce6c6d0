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


def unpack(blob: bytes, alone: str = "photo-0") -> dict[str, bytes]:
    """The named files of :func:`pack`, in order; a blob that is not a bundle (a job stored by a version that kept
    one photo as it was) is the one file ``alone``."""
    if not blob.startswith(b"PK"):  # (a zip archive's first bytes; no image format starts with them)
        return {alone: blob}
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {name: z.read(name) for name in z.namelist()}
