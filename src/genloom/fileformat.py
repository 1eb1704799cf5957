"""genloom's file format, torch-free: the safetensors header (parsed and validated) and atomic writes.

A model file is safetensors: an 8-byte little-endian header length n, n bytes of JSON, then the tensor data.
The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
start) and ``__metadata__`` to string key/values: ``genloom.format`` (version), ``genloom.kind``,
``genloom.config`` (JSON of the config dataclass), ``genloom.provenance`` (JSON) and per-kind extras such as
``genloom.vocab``. ``export.py`` (torch), ``engine/lite.py`` (numpy) and ``training/checkpoint.py`` use this
module; it imports neither torch nor numpy. Validation raises :class:`ModelFileError` (never ``assert``, which
``python -O`` removes).
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from genloom.errors import ModelFileError

FORMAT_VERSION = "1"
SUPPORTED_FORMATS = frozenset({"1"})
MAX_HEADER = 100 * 1024 * 1024
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class ModelFile:
    """What a genloom file's header says, without touching the weights."""

    path: Path
    kind: str
    format: str
    config: dict[str, Any]
    provenance: dict[str, Any]
    metadata: dict[str, str]
    tensors: dict[str, tuple[str, list[int]]]  # name -> (dtype, shape)
    offsets: dict[str, tuple[int, int]]  # name -> byte range [begin, end) after data_start
    data_start: int  # 8 + header length


def _read_raw(path: Path) -> tuple[bytes, int]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)  # little-endian u64 header length
            if n > MAX_HEADER or n + 8 > size:
                raise ModelFileError(f"{path}: not a safetensors file, or truncated (header length {n}, "
                                     f"file {size} bytes)")
            return f.read(n), size
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory; pass the .safetensors file (e.g. {path}/model.safetensors)"
                             ) from None


def _tensor_entry(path: Path, name: str, info: Any) -> tuple[str, list[int], tuple[int, int]]:
    bad = ModelFileError(f"{path}: malformed safetensors entry for tensor {name!r}; export the file again")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offs, list) or len(offs) != 2:
        raise bad
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in [*shape, *offs]):
        raise bad
    begin, end = offs
    if begin > end:
        raise bad
    if dtype in DTYPE_BYTES and end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ModelFileError(f"{path}: tensor {name!r} ({dtype} {shape}) holds {end - begin} bytes, not "
                             f"{math.prod(shape) * DTYPE_BYTES[dtype]}; export the file again")
    return dtype, list(shape), (begin, end)


def read_header(path: str | Path) -> ModelFile:
    """Parse and validate the safetensors header and genloom metadata (raises ModelFileError naming the fix)."""
    path = Path(path)
    raw, size = _read_raw(path)
    n = len(raw)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a safetensors file (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ModelFileError(f"{path}: safetensors __metadata__ must map strings to strings")
    tensors: dict[str, tuple[str, list[int]]] = {}
    offsets: dict[str, tuple[int, int]] = {}
    for name, info in header.items():
        dtype, shape, offs = _tensor_entry(path, name, info)
        tensors[name], offsets[name] = (dtype, shape), offs
    end = max((b for _, b in offsets.values()), default=0)
    if 8 + n + end > size:
        raise ModelFileError(f"{path}: truncated: the header describes {8 + n + end} bytes, the file has {size}; "
                             f"copy or export it again")
    if "genloom.kind" not in meta:
        raise ModelFileError(f"{path}: a safetensors file but not a genloom export (no genloom.kind metadata)")
    fmt = meta.get("genloom.format", "?")
    if fmt not in SUPPORTED_FORMATS:
        from genloom import __version__

        raise ModelFileError(f"{path}: genloom format version {fmt!r} is not supported by genloom {__version__} "
                             f"(supports {', '.join(sorted(SUPPORTED_FORMATS))}); upgrade genloom")
    try:
        config = json.loads(meta["genloom.config"])
        provenance = json.loads(meta.get("genloom.provenance", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: genloom.config metadata is missing or not JSON") from None
    if not isinstance(config, dict) or not isinstance(provenance, dict):
        raise ModelFileError(f"{path}: genloom.config and genloom.provenance must be JSON objects")
    return ModelFile(path, meta["genloom.kind"], fmt, config, provenance, meta, tensors, offsets, 8 + n)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, rename it over ``path``, fsync the directory:
    a crash at any moment leaves the old file or the new one, never a torn one (and never a stray temp file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path
