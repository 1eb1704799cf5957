import gzip
import struct

import numpy as np
import pytest

from genloom.data.idx import read_idx, read_images_labels, write_idx
from genloom.errors import DataError


def test_roundtrip_gz_and_raw(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("x.gz", "x"):
        write_idx(tmp_path / name, a)
        assert np.array_equal(read_idx(tmp_path / name), a)


def test_wrong_magic_names_file(tmp_path):
    p = tmp_path / "bad-images"
    p.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad-images.*magic"):
        read_idx(p)


def test_truncated_file(tmp_path):
    p = tmp_path / "trunc.gz"
    write_idx(p, np.zeros((3, 28, 28), np.uint8))
    raw = gzip.decompress(p.read_bytes())[:-10]
    p.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="trunc.gz.*truncated"):
        read_idx(p)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "c.gz"
    write_idx(p, np.zeros((3, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:30])
    with pytest.raises(DataError, match="c.gz"):
        read_idx(p)


def test_count_mismatch(tmp_path):
    write_idx(tmp_path / "i", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "l", np.zeros((4,), np.uint8))
    with pytest.raises(DataError, match="3 images but .* 4 labels"):
        read_images_labels(tmp_path / "i", tmp_path / "l")


def test_dimension_check(tmp_path):
    write_idx(tmp_path / "l", np.zeros((4,), np.uint8))
    with pytest.raises(DataError, match="expected a 3-d"):
        read_idx(tmp_path / "l", expect_ndim=3)


def test_trailing_bytes(tmp_path):
    p = tmp_path / "t"
    p.write_bytes(struct.pack(">HBBI", 0, 8, 1, 2) + b"\x01\x02\x03")
    with pytest.raises(DataError, match="trailing"):
        read_idx(p)
