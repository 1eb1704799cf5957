"""``--device`` and ``--precision``: the one definition of the two options every command that runs a model takes
(``train``, ``eval``, ``sample``, ``serve``, ``worker``, ``bench``). Torch-free, so that building the CLI's parser
does not import torch; the rules themselves are in ``genloom/device.py`` (devices, and ``check_device_precision``:
the early check every command makes), ``training/precision.py`` (training) and ``engine.load(precision=...)``
(inference)."""
from __future__ import annotations

import argparse
from typing import Any

from genloom.errors import GenloomError

DEVICE_CHOICES_HELP = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

TRAIN_DEVICE_HELP = f"{DEVICE_CHOICES_HELP} (default: auto)"
TRAIN_PRECISION_HELP = ("auto, fp32, bf16 or fp16 (GPU). auto: bf16 on GPUs that have it, else fp16 with a gradient "
                        "scaler; on a CPU, bf16 only if a short measured probe finds it faster for this model on this "
                        "CPU (cached per CPU model) (default: auto)")
INFER_PRECISION_HELP = ("auto, fp32, bf16 or fp16 (GPU): the weights' and activations' type. auto (default): on a CPU "
                        "the backend's choice (--backend auto keeps only backends whose 8-bit images agree with fp32 "
                        "within one grey level), fp32 elsewhere; fp32: exact fp32; bf16/fp16: the model in that type, "
                        "outputs in fp32")


def add_device_options(p: argparse.ArgumentParser | Any, *, device_default: str | None = "cpu",
                       precision_default: str | None = "auto", note: str = "") -> None:
    """``--device`` and ``--precision`` for a command that runs a model for inference. A default of None leaves
    the value to another source (``genloom serve --config``); the help still names the built-in default.
    (``genloom train`` declares its own in ``recipes/common.TRAIN_FLAGS`` with the help texts above: presets fill
    its defaults.)"""
    p.add_argument("--device", default=device_default, metavar="DEVICE",
                   help=f"where the model runs{note}: {DEVICE_CHOICES_HELP} (default: {device_default or 'cpu'})")
    p.add_argument("--precision", default=precision_default, metavar="PRECISION", help=INFER_PRECISION_HELP)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise GenloomError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision
