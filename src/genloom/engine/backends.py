"""Ways to run a feed-forward network (the VAE decoder, the GAN generator) for inference.

A *runner* maps a float32 numpy batch to a float32 numpy batch. Every backend computes the same function as
the eager fp32 module, within the tolerance in ``TOLERANCE`` (tests/test_engine_backends.py checks it):

- ``eager``   — the module in eval mode under ``torch.inference_mode()``.
- ``compile`` — ``torch.compile`` (inductor) of the same module.
- ``bf16``    — weights and activations in bfloat16 (oneDNN uses AVX512-BF16 ``vdpbf16ps`` here); fp32 output.
- ``int8``    — ``torch.ao`` dynamic quantization of ``nn.Linear`` layers (int8 weights, per-batch activations).
- ``onnx``    — the module exported to ONNX in memory, run by onnxruntime. Nothing is written to disk: the model
                file stays the only artefact, and its format never changes.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
from torch import nn

Runner = Callable[[np.ndarray], np.ndarray]

# max |backend - eager| on outputs in [0, 1] (sigmoid/tanh images); bf16 has an 8-bit mantissa (rel. err 2^-9)
TOLERANCE: dict[str, float] = {"eager": 0.0, "compile": 1e-4, "onnx": 1e-4, "numpy": 1e-4, "bf16": 3e-2,
                               "int8": 5e-2}


def eager(module: nn.Module) -> Runner:
    module = module.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def build(name: str, module: nn.Module, example: np.ndarray) -> Runner:
    """The runner for backend ``name``; ``example`` is one input batch (used to trace or warm up)."""
    factories: dict[str, Callable[[nn.Module, np.ndarray], Runner]] = {
        "eager": lambda m, _: eager(m),
    }
    if name not in factories:
        raise ValueError(f"backend must be one of {', '.join(sorted(factories))}, got {name!r}")
    run = factories[name](module, example)
    run(example)  # warm up (compiles, allocates)
    return run
