import io
import zipfile

import pytest

from clipdlut.serving.bundle import pack, unpack

pytestmark = pytest.mark.unit


def test_named_files_come_back_in_order_and_any_zip_tool_reads_them():
    files = {"photo-1": b"\x89PNG second", "photo-0": b"first", "start.cube": b"LUT_3D_SIZE 2\n"}
    blob = pack(files)
    assert unpack(blob) == files and list(unpack(blob)) == list(files)
    assert zipfile.ZipFile(io.BytesIO(blob)).read("photo-0") == b"first"
    assert unpack(pack({})) == {}
    assert unpack(b"\x89PNG\r\n\x1a\n a photo stored alone") == {"photo-0": b"\x89PNG\r\n\x1a\n a photo stored alone"}
