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


def load(path: str | Path, *, threads: int | None = None, backend: str = "auto", device: str = "cpu") -> Engine:
    """Load a genloom model file for inference.

    threads: intra-op threads for torch/onnxruntime (process-wide for torch); None keeps the default.
    backend: "auto" (default: the fastest backend on this machine whose 8-bit images agree with fp32 within one
    grey level, measured at the first load of the file here and cached; ``engine/autotune.py``), "exact" (fp32
    eager: bit-reproducible), or one by name: "eager", "compile", "mixed", "bf16", "int8", "onnx",
    "numpy"
    (``engine/backends.py``). The LM always runs fp32 eager with its KV cache ("auto" and "exact" alike).
    device: "cpu" (default), "auto" (CUDA when present), "cuda", "cuda:N" or "mps": where the math runs; calls
    still take and return numpy / text, noise is drawn on the CPU. Off the CPU the backend is fp32 eager.
    """
    from genloom.engine.base import BACKENDS, InputError

    if device != "cpu" and backend not in ("auto", "exact", "eager"):
        raise InputError(f"backend {backend!r} runs on the CPU; use backend='auto' or 'eager' with device={device!r}")

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
    model = export.load(path)
    if device != "cpu":
        from genloom.device import resolve_device

        dev = resolve_device(device)
        model.to(dev)
        if dev.type != "cpu":
            backend = "eager"  # the other backends (and the autotuner) are CPU backends
    if header.kind == "lm":
        from genloom.engine.lm import LMEngine

        if backend not in ("auto", "exact", "eager"):
            raise InputError(f"backend {backend!r} is for image models; the LM runs fp32 eager (KV cache)")
        return LMEngine(model, header)
    if header.kind == "flow":
        from genloom.engine.flow import FlowEngine

        return FlowEngine(model, header, backend="eager" if backend == "exact" else backend, threads=threads)
    key = None
    if backend == "auto":
        from genloom.engine.autotune import cache_key

        key = cache_key(header.path, header.kind)
    cls = VAEEngine if header.kind == "vae" else GANEngine
    return cls(model, header, backend=backend, threads=threads, cache_key=key)
