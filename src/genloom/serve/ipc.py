"""Messages between the server and its worker processes: a JSON header plus raw numpy arrays.

No pickle crosses the pipe. Layout of one message::

    u32 header length (little endian) | header JSON | array 0 bytes | array 1 bytes | ...

The header carries ``"_arrays": [[dtype, shape], ...]`` describing the trailing arrays in order.
"""
from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

_LEN = struct.Struct("<I")


def encode(header: dict[str, Any], arrays: list[np.ndarray] | None = None) -> bytes:
    arrays = [np.ascontiguousarray(a) for a in (arrays or [])]
    head = dict(header)
    head["_arrays"] = [[a.dtype.str, list(a.shape)] for a in arrays]
    raw = json.dumps(head, separators=(",", ":")).encode()
    return b"".join([_LEN.pack(len(raw)), raw, *(a.tobytes() for a in arrays)])


def decode(buf: bytes) -> tuple[dict[str, Any], list[np.ndarray]]:
    (n,) = _LEN.unpack_from(buf, 0)
    header = json.loads(buf[4:4 + n])
    offset = 4 + n
    arrays = []
    for dtype, shape in header.pop("_arrays", []):
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        arr = np.frombuffer(buf, dtype=dt, count=count, offset=offset).reshape(shape)
        offset += count * dt.itemsize
        arrays.append(arr)
    if offset != len(buf):
        raise ValueError(f"ipc message has {len(buf) - offset} trailing bytes; sender and receiver disagree")
    return header, arrays
