"""Reader for the IDX format used by MNIST and Fashion-MNIST (plain or gzip), with header validation.

Layout (big-endian): magic = 0x00 0x00 <dtype code> <ndim>, then ndim uint32 dimension sizes, then the data.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from genloom.errors import DataError

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e}); download the file again") from None
    return raw


def read_idx(path: str | Path, *, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array, validating magic, dimensions and length."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise DataError(f"{path}: wrong magic number {data[:4].hex()} — not an IDX (MNIST-format) file")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: expected a {expect_ndim}-d IDX array, header says {ndim}-d")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _DTYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    body = len(data) - header
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{path}: file {what}: header shape {tuple(shape)} needs {expected} bytes, found {body}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else arr


def read_images_labels(images: str | Path, labels: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an (N, 28, 28) uint8 image file and its (N,) label file; their counts must agree."""
    x = read_idx(images, expect_ndim=3)
    y = read_idx(labels, expect_ndim=1)
    if x.dtype != np.uint8 or y.dtype != np.uint8:
        raise DataError(f"{images}, {labels}: expected uint8 images and labels")
    if len(x) != len(y):
        raise DataError(f"count mismatch: {images} has {len(x)} images but {labels} has {len(y)} labels")
    return x, y


def write_idx(path: str | Path, arr: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip when the name ends in .gz). Used by tests and tools."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
