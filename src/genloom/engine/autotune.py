"""``backend="auto"``: the fastest backend *on this machine* whose images agree with fp32.

The agreement rule (the image families' documented tolerance): on a probe of 256 prior samples (one-hot labels
cycling for a conditional model), every pixel of the candidate's 8-bit picture — ``round(255·x)`` — is within one
grey level of the fp32 eager picture, whether the row is decoded alone, in a batch of 100 or of 256 (a server
groups requests into batches, and a backend whose rows depend on their batch-mates, like per-batch int8
activation scales, fails here unless the difference stays within the grey level).

Speed: each agreeing candidate is timed against fp32 eager on a batch of 100 in interleaved rounds (medians); the
fastest wins if it is ≥ 5 % faster than eager, else eager stays. Nothing is assumed about the CPU: bf16 wins on
AMX machines and loses where bf16 is emulated, and the measurement says which.

The choice is measured at the first load of a file on a machine and cached in ``$GENLOOM_ENGINE_CACHE`` (else
``$GENLOOM_CACHE/engine/``, default ``~/.cache/genloom/engine/``), one small JSON file per choice, keyed by the file's SHA-256, the CPU model and
its bf16/int8 features, the torch version and the thread count; later loads build only the chosen backend.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genloom.engine import backends
from genloom.engine.backends import Runner
from genloom.fileformat import atomic_write

CANDIDATES: tuple[str, ...] = ("mixed", "bf16", "int8", "onnx")
NO_BF16 = "this CPU has no oneDNN bf16 matmul kernels (AVX2 only): bf16 would be emulated, tens of times slower"
GREY_LEVELS = 1  # the tolerance: max |Δ| of round(255·x) against fp32
PROBE_ROWS = 256
TIMING_BATCH = 100
MIN_GAIN = 0.95  # a candidate must take < 95 % of eager's time
CACHE_VERSION = 1


CACHE_ENV = "GENLOOM_ENGINE_CACHE"


def cache_dir() -> Path:
    """``$GENLOOM_ENGINE_CACHE``, else ``$GENLOOM_CACHE/engine``, else ``~/.cache/genloom/engine``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("GENLOOM_CACHE") or Path.home() / ".cache" / "genloom") / "engine"


def cpu_id() -> str:
    """The CPU model and the features that decide bf16/int8 speed (flags from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.processor(), platform.machine()):
                    name = val.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(x for x in val.split() if x.startswith(("amx", "avx512", "avx2",
                                                                                      "asimd", "sve", "bf16"))))
    except OSError:
        pass
    return f"{name} [{flags}]"


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(path: str | Path, kind: str) -> str:
    parts = [str(CACHE_VERSION), kind, file_digest(path), cpu_id(), torch.__version__,
             str(torch.get_num_threads()), ",".join(CANDIDATES)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def probe(latent: int, num_classes: int) -> np.ndarray:
    """(256, latent + C) float32: prior samples z ~ N(0, I) ⊕ one-hot labels 0, 1, …, C-1, 0, … ."""
    z = np.random.default_rng(0).standard_normal((PROBE_ROWS, latent), dtype=np.float32)
    if num_classes:
        z = np.concatenate([z, np.eye(num_classes, dtype=np.float32)[np.arange(PROBE_ROWS) % num_classes]], 1)
    return z


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.int16)


def grey_levels(run: Runner, ref: np.ndarray, x: np.ndarray) -> int:
    """Max grey-level difference from ``ref`` (eager on all of ``x``) over batches of 1, 100 and all rows."""
    want = to_u8(ref)
    worst = 0
    for rows in (1, TIMING_BATCH, len(x)):
        got = to_u8(run(np.ascontiguousarray(x[:rows])))
        worst = max(worst, int(np.abs(got - want[:rows]).max()))
    return worst


def measure(module: nn.Module, x: np.ndarray, *, threads: int | None,
            candidates: tuple[str, ...] = CANDIDATES) -> tuple[str, Runner, dict[str, Any]]:
    """(chosen backend, its runner, report): try every candidate against fp32 eager on probe ``x``."""
    batch = np.ascontiguousarray(x[:TIMING_BATCH])
    base = backends.build("eager", module, batch, threads=threads)
    ref = base(x)
    report: dict[str, Any] = {"grey_levels": {}, "time_vs_eager": {}, "skipped": {}}
    best, best_run, best_ratio = "eager", base, MIN_GAIN
    for cand in candidates:
        if cand in backends.BF16 and not backends.bf16_kernels():  # emulated bf16: tens of times slower, not tried
            report["skipped"][cand] = NO_BF16
            continue
        try:
            run = backends.build(cand, module, batch, threads=threads)
        except Exception as e:  # e.g. onnxruntime not installed, an op a backend lacks: stay with what works
            report["skipped"][cand] = f"{type(e).__name__}: {e}"[:200]
            continue
        levels = grey_levels(run, ref, x)
        report["grey_levels"][cand] = levels
        if levels > GREY_LEVELS:
            continue
        ratio = backends.faster(run, base, batch)
        report["time_vs_eager"][cand] = round(ratio, 3)
        if ratio < best_ratio:
            best, best_run, best_ratio = cand, run, ratio
    report["backend"] = best
    return best, best_run, report


def choose(module: nn.Module, x: np.ndarray, *, threads: int | None, key: str | None
           ) -> tuple[str, Runner, dict[str, Any]]:
    """The cached choice for ``key`` when there is one (building only that backend), else ``measure`` and cache."""
    path = cache_dir() / f"{key}.json" if key else None
    if path is not None:
        try:
            cached = json.loads(path.read_text())
            name = cached["backend"]
            batch = np.ascontiguousarray(x[:TIMING_BATCH])
            return name, backends.build(name, module, batch, threads=threads), {**cached, "cached": True}
        except Exception:  # missing, unreadable, or the backend no longer builds here: measure again
            pass
    name, run, report = measure(module, x, threads=threads)
    report.update(cpu=cpu_id(), torch=torch.__version__, threads=torch.get_num_threads())
    if path is not None:
        try:
            data = json.dumps(report, indent=1).encode()
            atomic_write(path, lambda f: f.write(data))
        except OSError:  # a read-only home: the next load measures again
            pass
    return name, run, {**report, "cached": False}


def select(name: str, module: nn.Module, latent: int, *, num_classes: int = 0, threads: int | None = None,
           cache_key: str | None = None) -> tuple[str, Runner, dict[str, Any] | None]:
    """(backend name, runner, auto report) for ``module`` taking (n, latent + num_classes) float32.

    ``name="auto"``: the fastest backend here whose images agree with fp32 within one grey level, measured once
    per file and machine and cached under ``cache_key`` (above); ``"exact"``: fp32 eager."""
    x = probe(latent, num_classes)
    if name == "auto":
        return choose(module, x, threads=threads, key=cache_key)
    name = "eager" if name == "exact" else name
    return name, backends.build(name, module, np.ascontiguousarray(x[:TIMING_BATCH]), threads=threads), None
