"""``--device auto|cpu|cuda|cuda:N|mps``: one resolution rule for every command that runs a model.

``auto`` is CUDA when a CUDA device is present (``cuda:LOCAL_RANK`` under ``torchrun``), else the CPU. MPS is
used only when asked for: its kernels are not faster than the CPU for every model here.
"""
from __future__ import annotations

import argparse
import functools
import os

import torch

from genloom.errors import GenloomError
from genloom.options import DEVICE_CHOICES_HELP as CHOICES_HELP
from genloom.options import check_precision


@functools.cache
def cpu_bf16_kernels() -> bool:
    """Whether oneDNN packs and runs bf16 matmuls natively on this CPU (AMX, AVX512-BF16/AVX512BW or AVX-NE-CONVERT).

    Without them (an AVX2-only CPU) bf16 is emulated: a training step under bf16 autocast measured 15x (GAN) and
    9x (LM) slower than fp32 on a 2-core AVX2 EPYC (docs/benchmarks.md), and oneDNN refuses to pack bf16 weights. Probed,
    not guessed from CPU flags: the rule is oneDNN's, and it changes between releases."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=torch.bfloat16), 1)
    except RuntimeError:
        return False
    return True


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch.device for ``spec``; a clear ``GenloomError`` when the device is not there."""
    if isinstance(spec, torch.device):
        return spec
    s = (spec or "auto").strip().lower()
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise GenloomError("--device mps: no Apple MPS device here; use --device cpu or auto")
        return torch.device("mps")
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GenloomError(f"--device {spec}: no CUDA device available (this torch: {torch.__version__}); "
                               f"use --device cpu or auto")
        if s == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        try:
            idx = int(s.split(":", 1)[1])
        except ValueError:
            raise GenloomError(f"--device {spec}: expected cuda:N with an integer N") from None
        if not 0 <= idx < torch.cuda.device_count():
            raise GenloomError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here "
                               f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", idx)
    raise GenloomError(f"--device {spec!r}: choose {CHOICES_HELP}")


def check_device_precision(device: str, precision: str) -> None:
    """Fail before any work (a server before it binds, a worker before it connects) with one line naming the
    problem and the fix: an unknown or absent device, an unknown precision, fp16 on a CPU."""
    check_precision(precision)
    dev_type = "cpu" if (device or "").strip().lower() == "cpu" else resolve_device(device).type
    if precision == "fp16" and dev_type == "cpu":
        raise GenloomError("--precision fp16 is for GPUs (--device cuda or mps); on a CPU use --precision bf16, fp32 "
                           "or auto")


def check_device_options(args: argparse.Namespace) -> None:
    """``check_device_precision`` for a parsed command line with ``add_device_options``."""
    check_device_precision(getattr(args, "device", "cpu"), getattr(args, "precision", "auto") or "auto")
