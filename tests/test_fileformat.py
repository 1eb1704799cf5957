"""fileformat.py: one header parser (torch-free, no asserts) and one atomic write, shared by export, lite, checkpoints."""
from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from genloom import export, fileformat
from genloom.engine import lite
from genloom.errors import ModelFileError
from genloom.fileformat import atomic_write, read_header
from genloom.training import checkpoint

META = {"genloom.kind": "vae", "genloom.format": "1", "genloom.config": "{}"}


def write_raw(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_one_parser_and_one_writer_everywhere() -> None:
    assert export.read_header is read_header and lite.read_header is read_header
    assert export.ModelFile is fileformat.ModelFile and lite.LiteHeader is fileformat.ModelFile
    assert checkpoint.atomic_write is atomic_write


def test_a_valid_header(tmp_path: Path) -> None:
    p = write_raw(tmp_path / "m.safetensors", {"__metadata__": META, "w": {"dtype": "F32", "shape": [2, 3],
                                                                             "data_offsets": [0, 24]}}, bytes(24))
    h = read_header(p)
    assert h.kind == "vae" and h.tensors == {"w": ("F32", [2, 3])} and h.offsets == {"w": (0, 24)}
    assert h.data_start == p.stat().st_size - 24


@pytest.mark.parametrize("header, data, match", [
    ([1, 2], b"", "not a JSON object"),
    ({"__metadata__": META, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4),
     "holds 4 bytes, not 8"),
    ({"__metadata__": META, "w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, bytes(8), "malformed"),
    ({"__metadata__": META, "w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "malformed"),
    ({"__metadata__": META, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, bytes(4), "malformed"),
    ({"__metadata__": META, "w": "F32"}, b"", "malformed"),
    ({"__metadata__": META, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), "truncated"),
    ({"__metadata__": {**META, "x": 3}}, b"", "strings to strings"),
    ({"__metadata__": {"genloom.format": "1"}}, b"", "not a genloom export"),
    ({"__metadata__": {**META, "genloom.format": "9"}}, b"", "format version '9'"),
    ({"__metadata__": {**META, "genloom.config": "[1]"}}, b"", "must be JSON objects"),
])
def test_bad_headers_name_the_problem(tmp_path: Path, header: object, data: bytes, match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        read_header(write_raw(tmp_path / "m.safetensors", header, data))


def test_validation_survives_python_dash_O(tmp_path: Path) -> None:
    p = write_raw(tmp_path / "m.safetensors", [1, 2])  # the old lite parser checked this with `assert`
    code = ("import sys; from genloom.fileformat import read_header; from genloom.errors import ModelFileError\n"
            f"try: read_header({str(p)!r})\nexcept ModelFileError as e: print('ok', e)\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("ok ") and "not a JSON object" in r.stdout, r.stderr
    assert r.stdout.strip().endswith("False")  # torch-free


def test_atomic_write_fsyncs_file_and_directory(tmp_path: Path, monkeypatch) -> None:
    kinds: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and kinds == ["file", "dir"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(f) -> None:
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
