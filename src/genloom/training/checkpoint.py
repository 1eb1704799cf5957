"""Atomic, resumable checkpoints.

A checkpoint holds model and optimizer state dicts, the trainer's counters and the RNG states. It is written
with ``fileformat.atomic_write`` (temp file, fsync, rename, fsync of the directory), so a kill at any moment
leaves either the old or the new checkpoint — never a torn one. Loading uses
``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genloom.errors import GenloomError
from genloom.fileformat import atomic_write

if TYPE_CHECKING:
    from genloom.training.trainer import Trainer


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


def trainer_state(tr: Trainer) -> dict[str, Any]:
    """Everything ``--resume`` needs: weights, optimizer states, the trainer's counters, the best weights and
    the RNG states."""
    return {
        "model": tr.model.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in tr.optimizers.items()},
        "trainer": {"step": tr.step, "epoch": tr.epoch, "batch_in_epoch": tr.batch_in_epoch,
                    "elapsed": tr.elapsed, "best_val": tr.best_val, "best_step": tr.best_step,
                    "bad_validations": tr.bad_validations, "config": dataclasses.asdict(tr.cfg)},
        "best_model": tr.best_state,
        "rng": {"torch": torch.get_rng_state(), "epoch_data": tr.epoch_gen_state,
                **({"cuda": torch.cuda.get_rng_state(tr.device)} if tr.device.type == "cuda" else {})},
    }


def restore_trainer(tr: Trainer, path: Path) -> int:
    """Load the checkpoint at ``path`` into ``tr`` (model, optimizers, counters, RNG streams); its step."""
    ck = load_checkpoint(path)
    try:
        tr.model.load_state_dict(ck["model"])
        for k, o in tr.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        raise GenloomError(f"{path}: does not match this model/config ({e}); use the "
                           f"same flags as the original run or a new --out") from None
    t = ck["trainer"]
    tr.step, tr.epoch, tr.batch_in_epoch = t["step"], t["epoch"], t["batch_in_epoch"]
    tr.elapsed, tr.best_val, tr.best_step = t["elapsed"], t["best_val"], t["best_step"]
    tr.bad_validations = t["bad_validations"]
    tr.best_state = ck.get("best_model")
    torch.set_rng_state(ck["rng"]["torch"])
    if tr.device.type == "cuda" and "cuda" in ck["rng"]:
        torch.cuda.set_rng_state(ck["rng"]["cuda"], tr.device)
    tr.epoch_gen_state = ck["rng"]["epoch_data"]
    tr.resumed_from = path
    if tr.dist.is_main:
        print(f"Resumed from {path} (step {tr.step}, epoch {tr.epoch}, {tr.elapsed:.0f} s trained)",
              file=sys.stderr)
    return tr.step
