"""Atomic, resumable checkpoints.

A checkpoint holds model and optimizer state dicts, the trainer's counters and the RNG states. It is written
with ``fileformat.atomic_write`` (temp file, fsync, rename, fsync of the directory), so a kill at any moment
leaves either the old or the new checkpoint — never a torn one. Loading uses
``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from genloom.errors import GenloomError
from genloom.fileformat import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GenloomError(f"{path}: no checkpoint to resume from; start without --resume") from None
    except Exception as e:  # a corrupt file: name it and the fix
        raise GenloomError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it or start without "
                           f"--resume") from None


def keep_step_copy(last: Path, step: int, *, keep: int) -> Path:
    """Hard-link (or copy) ``last`` to ``step-NNNNNNNN.pt`` beside it; delete all but the newest ``keep`` copies."""
    import shutil

    dest = last.parent / f"step-{step:08d}.pt"
    tmp = last.parent / f".{dest.name}.tmp"
    try:
        os.link(last, tmp)  # last.pt is replaced by rename on the next save, so a link stays intact
    except OSError:
        shutil.copyfile(last, tmp)
    os.replace(tmp, dest)
    for old in sorted(last.parent.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return dest
