"""Inference engine: ``load(path) -> Engine`` builds a model from its file alone, ready to serve.

    from genloom.engine import load
    eng = load("runs/vae/model.safetensors")          # backend="auto": the measured winner on this CPU
    imgs = eng.sample(16, seed=0)                      # float32 (16, 28, 28) in [0, 1]

Engines by kind: ``vae`` (sample, decode, encode, reconstruct, interpolate), ``gan`` (sample), ``lm``
(generate, stream). ``backend="numpy"`` (or ``genloom.engine.lite``) runs the VAE decoder / GAN generator
without importing torch at all (its ``header`` is the same ``fileformat.ModelFile`` as every engine's).
This module itself imports neither torch nor numpy.

Thread-safety: call an engine from one thread at a time. Calls do not change the engine, but the torch/BLAS
thread pools are process-wide (``threads`` sets them for the whole process), so servers run one engine per
worker process. Backends and ``auto``: ``engine/backends.py`` and docs/benchmarks.md ("Inference engine").
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genloom.engine.base import Engine

__all__ = ["load", "Engine"]


def __getattr__(name: str) -> object:  # ``genloom.engine.Engine`` without importing numpy up front
    if name == "Engine":
        from genloom.engine.base import Engine

        return Engine
    raise AttributeError(name)


def load(path: str | Path, *, threads: int | None = None, backend: str = "auto", device: str = "cpu",
         precision: str = "auto") -> Engine:
    """Load a genloom model file for inference.

    threads: intra-op threads for torch/onnxruntime (process-wide for torch); None keeps the default.
    backend: "auto" (default: the fastest backend on this machine whose 8-bit images agree with fp32 within one
    grey level, measured at the first load of the file here and cached; ``engine/autotune.py``), "exact" (fp32
    eager: bit-reproducible), or one by name: "eager", "compile", "mixed", "bf16", "int8", "onnx", "numpy"
    (``engine/backends.py``). The LM always runs eager with its KV cache ("auto" and "exact" alike).
    device: "cpu" (default), "auto" (CUDA when present), "cuda", "cuda:N" or "mps": where the math runs; calls
    still take and return numpy / text, noise is drawn on the CPU. Off the CPU the backend is eager.
    precision: the type of the weights and activations (calls still return float32 / text). "auto" (default): on
    a CPU the backend decides ("auto" keeps only backends whose 8-bit images agree with fp32 within one grey
    level), fp32 elsewhere; "fp32": exact fp32 ("auto" becomes "exact"); "bf16": the "bf16" backend for a VAE or
    GAN on a CPU, else the model cast to bfloat16 (the LM's KV cache follows); "fp16": the same in float16, on a
    GPU (cuda, mps) only. The flow model's DiT runs in fp32 (an ODE loop); its decoder on the image backends.
    """
    from genloom.engine.base import BACKENDS, InputError
    from genloom.options import PRECISIONS

    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device != "cpu" and backend not in ("auto", "exact", "eager"):
        raise InputError(f"backend {backend!r} runs on the CPU; use backend='auto' or 'eager' with device={device!r}")
    low = precision in ("bf16", "fp16")
    if (precision == "fp32" and backend in ("bf16", "int8")) or (low and backend not in ("auto", "eager", "bf16")):
        raise InputError(f"precision {precision!r} and backend {backend!r} disagree; give one of them (backend "
                         f"'auto' follows the precision)")

    if backend == "numpy":  # the torch-free path
        from genloom.engine import lite

        return lite.load(path, threads=threads)
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer or None, got {threads!r}")
    import torch

    from genloom import export
    from genloom.engine.image import GANEngine, VAEEngine

    if threads is not None:
        torch.set_num_threads(threads)
    header = export.read_header(path)
    if header.kind not in ("vae", "gan", "lm", "flow"):
        raise InputError(f"{path}: the engine does not serve models of kind {header.kind!r}")
    from genloom.device import resolve_device

    dev = resolve_device(device)
    if precision == "fp16" and dev.type == "cpu":
        raise InputError("precision 'fp16' is for GPUs (device 'cuda' or 'mps'); on a CPU use 'bf16', 'fp32' or "
                         "'auto'")
    if low and header.kind == "flow":
        raise InputError(f"precision {precision!r}: the flow engine runs in fp32; use 'auto' or 'fp32'")
    model = export.load(path)
    if dev.type != "cpu":
        model.to(dev)
        backend = "eager"  # the other backends (and the autotuner) are CPU backends
    if precision == "fp32" and backend == "auto":
        backend = "exact"
    elif low and dev.type == "cpu" and header.kind in ("vae", "gan"):
        backend = "bf16"  # the CPU bf16 backend: bf16 weights and activations, the output nonlinearity in fp32
    elif low:
        model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    if header.kind == "lm":
        from genloom.engine.lm import LMEngine

        if backend not in ("auto", "exact", "eager"):
            raise InputError(f"backend {backend!r} is for image models; the LM runs fp32 eager (KV cache)")
        return LMEngine(model, header)
    key = None
    if backend == "auto":
        from genloom.engine.autotune import cache_key

        key = cache_key(header.path, header.kind)
    if header.kind == "flow":
        from genloom.engine.flow import FlowEngine

        return FlowEngine(model, header, backend=backend, threads=threads, cache_key=key)
    cls = VAEEngine if header.kind == "vae" else GANEngine
    return cls(model, header, backend=backend, threads=threads, cache_key=key)
