"""The one ``NAME=PATH`` rule of ``genloom serve`` and ``genloom worker`` (HTTP path ``/v1/models/NAME``, AMQP
queue ``genloom.NAME``).

- ``NAME=PATH`` serves the file at PATH as NAME.
- A bare ``PATH`` is served under its file's stem (``gan.safetensors`` → ``gan``) — except the file name that
  ``genloom train`` writes, ``model.safetensors``, which takes its folder's name:
  ``runs/vae/model.safetensors`` → ``vae``.
- A name is 1-200 ASCII letters, digits, ``-``, ``_`` or ``.``, not ending in ``.dead`` (the AMQP dead-letter
  queue of model m is ``genloom.m.dead``); the same name may not be given twice.
"""
from __future__ import annotations

from pathlib import Path

from genloom.errors import GenloomError

EXPORT_NAME = "model"  # the stem of the file `genloom train` writes: DIR/model.safetensors
RESERVED_SUFFIX = ".dead"


def default_name(path: str | Path) -> str:
    p = Path(path)
    return p.parent.name if p.stem == EXPORT_NAME and p.parent.name not in ("", ".", "..") else p.stem


def check_name(name: str, arg: str | None = None) -> str:
    ok = bool(name) and len(name) <= 200 and name.isascii() and all(c.isalnum() or c in "-_." for c in name)
    if not ok or name.endswith(RESERVED_SUFFIX):
        where = f" in {arg!r}" if arg is not None and arg != name else ""
        raise GenloomError(f"invalid model name {name!r}{where}: use 1-200 letters, digits, '-', '_' or '.' (not "
                           f"ending in {RESERVED_SUFFIX!r}), e.g. vae=runs/vae/model.safetensors")
    return name


def parse_model_arg(arg: str) -> tuple[str, Path]:
    """``NAME=PATH`` or a bare ``PATH`` → (name, path); see the module docstring."""
    name, sep, path = arg.partition("=")
    if not sep:
        name, path = default_name(arg), arg
    return check_name(name, arg), Path(path)


def parse_model_args(args: list[str]) -> dict[str, Path]:
    """Several model arguments → {name: path}; a name given twice is an error."""
    out: dict[str, Path] = {}
    for arg in args:
        name, path = parse_model_arg(arg)
        if name in out:
            raise GenloomError(f"model name {name!r} given twice; name them: NAME1=PATH1 NAME2=PATH2")
        out[name] = path
    return out
