"""Ways to run a feed-forward network (the VAE decoder, the GAN generator) for inference.

A *runner* maps a float32 numpy batch to a float32 numpy batch. Every backend computes the same function as
the eager fp32 module, within ``TOLERANCE`` (max abs difference on outputs in [0, 1]; checked in
tests/test_engine_backends.py). None changes the model file: derived forms are built in memory at load time.

- ``eager``   — the module in eval mode under ``torch.inference_mode()``, fp32.
- ``compile`` — ``torch.compile`` (inductor) of the same module, fp32.
- ``bf16``    — weights and activations in bfloat16 (oneDNN uses AVX512-BF16 ``vdpbf16ps`` on this CPU), the
                output nonlinearity in fp32. bf16 keeps 8 mantissa bits: relative error 2^-9 per rounding.
- ``mixed``   — an MLP (``nn.Linear`` + activations) with the first layer and the output nonlinearity in fp32
                (``addmm``) and the later layers in bfloat16: weights pre-packed once for oneDNN (AMX/AVX512-BF16
                kernels), bias and activation fused into each of their matmuls. The first layer is cheap (K = latent) and in fp32
                the input z keeps its 24 bits — rounding z to bf16 is the largest single error of ``bf16``
                (measured: max |Δ| 2.2e-3 vs 5.4e-3 for ``bf16`` on the trained lecture-large decoder).
                Other architectures, and CPUs without oneDNN bf16 kernels (AVX2-only), raise (``auto`` then
                skips it).
- ``int8``    — dynamic quantization of ``nn.Linear``: int8 weights (per-tensor scale), activations quantized
                per batch, int32 accumulation (fbgemm VNNI kernels); other layers stay fp32.
- ``onnx``    — the module exported to ONNX in memory and run by onnxruntime (fp32).
"""
from __future__ import annotations

import copy
import functools
import io
import time
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from genloom.device import cpu_bf16_kernels as bf16_kernels
from genloom.engine.base import InputError

Runner = Callable[[np.ndarray], np.ndarray]
TORCH_BACKENDS = ("eager", "compile", "mixed", "bf16", "int8", "onnx")
BF16 = ("mixed", "bf16")  # the backends that need oneDNN's bf16 kernels to pay (bf16_kernels())

# max |backend − eager| on outputs in [0, 1]; the lossy ones are measured on trained models (docs/benchmarks.md)
TOLERANCE: dict[str, float] = {"eager": 0.0, "compile": 1e-4, "onnx": 1e-4, "numpy": 1e-4,
                               "bf16": 2e-2, "mixed": 2e-2, "int8": 5e-2}


def _split_head(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(body, output nonlinearity) when the module ends in Sigmoid/Tanh, so that it can stay in fp32."""
    if isinstance(module, nn.Sequential) and isinstance(module[-1], (nn.Sigmoid, nn.Tanh)):
        return module[:-1], module[-1]
    return module, nn.Identity()


def eager(module: nn.Module, example: np.ndarray, threads: int | None) -> Runner:
    module = module.eval()
    p = next(module.parameters(), None)  # engine.load(device=...): numpy in and out, the math on the device
    dev = p.device if p is not None else torch.device("cpu")  # (a quantized module has no plain parameters)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32  # load(precision="bf16"|"fp16")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(dev, dtype)).float().cpu().numpy()

    return run


def compiled(module: nn.Module, example: np.ndarray, threads: int | None) -> Runner:
    # dynamic=False: one graph per batch size (recompiles on a new size); the engine's batches are few sizes
    return eager(torch.compile(module.eval(), dynamic=False), example, threads)


def bf16(module: nn.Module, example: np.ndarray, threads: int | None) -> Runner:
    body, head = _split_head(module)
    body = copy.deepcopy(body).eval().to(torch.bfloat16)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(body(torch.from_numpy(x).to(torch.bfloat16)).float()).numpy()

    return run


# activation module → (oneDNN post-op name, scalars, algorithm) for mkldnn._linear_pointwise
def _post_op(act: nn.Module | None) -> tuple[str, list[float], str]:
    if act is None:
        return "none", [], ""
    if type(act) is nn.ReLU:
        return "relu", [], ""
    if type(act) is nn.SiLU:
        return "swish", [], ""
    if type(act) is nn.Tanh:
        return "tanh", [], ""
    if type(act) is nn.Sigmoid:
        return "sigmoid", [], ""
    if type(act) is nn.GELU:
        return "gelu", [], str(act.approximate)
    if type(act) is nn.LeakyReLU:
        return "leaky_relu", [float(act.negative_slope)], ""
    raise InputError("backend", f"mixed has no fused form of {type(act).__name__}; use bf16 or exact")


def _flat(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flat(child)]
    return [module]


def mlp_layers(module: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]]:
    """(Linear, activation or None) pairs of an MLP given as (nested) nn.Sequential; InputError otherwise."""
    layers: list[tuple[nn.Linear, nn.Module | None]] = []
    for m in _flat(module):
        if isinstance(m, nn.Linear):
            layers.append((m, None))
        elif layers and layers[-1][1] is None and not isinstance(m, (nn.Linear, nn.Sequential)):
            _post_op(m)  # raises for an activation without a fused form
            layers[-1] = (layers[-1][0], m)
        else:
            raise InputError("backend", f"mixed runs MLPs (Linear, activation, Linear, …), not this model "
                             f"({type(m).__name__} where a Linear layer was expected); use bf16 or exact")
    if not layers:
        raise InputError("backend", "mixed runs MLPs; this model has no Linear layer; use bf16 or exact")
    return layers


def mixed(module: nn.Module, example: np.ndarray, threads: int | None) -> Runner:
    body, head = _split_head(module)
    linear = torch.ops.mkldnn._linear_pointwise
    pack = torch.ops.mkldnn._reorder_linear_weight  # the weight in oneDNN's blocked layout, once
    (first, act0), *rest = mlp_layers(body)
    _post_op(act0)  # (checks it is one the backend knows)
    if not bf16_kernels():
        raise InputError("backend", "mixed needs oneDNN's bf16 matmul kernels (AMX, AVX512-BF16/AVX512BW or "
                         "AVX-NE-CONVERT), which this CPU lacks; use bf16, int8 or exact")
    # the first layer in fp32 as a plain addmm (K = latent is small: measured faster than oneDNN's packed path
    # at batch 100), its activation in place
    w0 = first.weight.detach().float().t().contiguous()  # (K, N)
    b0 = torch.zeros(first.out_features) if first.bias is None else first.bias.detach().float()
    act0_: Callable[[torch.Tensor], torch.Tensor] = (
        (lambda t: t) if act0 is None else torch.relu_ if type(act0) is nn.ReLU
        else functools.partial(torch.nn.functional.silu, inplace=True) if type(act0) is nn.SiLU else act0)
    steps = []
    for lin, act in rest:
        w = pack(lin.weight.detach().to(torch.bfloat16).contiguous(), len(example))
        b = None if lin.bias is None else lin.bias.detach().to(torch.bfloat16).contiguous()
        steps.append((w, b, *_post_op(act)))
    # the output nonlinearity in place on the fp32 copy (one 100×784 buffer less per call)
    head_ = {nn.Sigmoid: torch.sigmoid_, nn.Tanh: torch.tanh_}.get(type(head), lambda t: t)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            h = act0_(torch.addmm(b0, torch.from_numpy(x), w0))
            if steps:
                h = h.to(torch.bfloat16)
                for w, b, attr, scalars, algo in steps:
                    h = linear(h, w, b, attr, scalars, algo)
            return head_(h.float()).numpy()

    return run


def int8(module: nn.Module, example: np.ndarray, threads: int | None) -> Runner:
    with warnings.catch_warnings():  # torch.ao eager quantization warns that it moves to torchao; it still works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(module).eval(), {nn.Linear}, dtype=torch.qint8)
    return eager(q, example, threads)


def onnx_bytes(module: nn.Module, example: np.ndarray) -> bytes:
    """ONNX (opset 17) of ``module`` with a dynamic batch axis, serialised in memory."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(example),), buf, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17,
                          dynamo=False)
    return buf.getvalue()


def ort_runner(model: bytes, threads: int | None) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # the same thread count as torch, and no spinning: onnxruntime's idle pool threads otherwise spin after each
    # run and take the cores from everything else in the process (torch's matmuls, the server's event loop)
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return run


def onnx(module: nn.Module, example: np.ndarray, threads: int | None) -> Runner:
    return ort_runner(onnx_bytes(module, example), threads)


FACTORIES: dict[str, Callable[[nn.Module, np.ndarray, int | None], Runner]] = {
    "eager": eager, "compile": compiled, "mixed": mixed, "bf16": bf16, "int8": int8, "onnx": onnx,
}


def build(name: str, module: nn.Module, example: np.ndarray, *, threads: int | None = None) -> Runner:
    """The runner for backend ``name``; ``example`` is one input batch (to trace, compile and warm up)."""
    if name not in FACTORIES:
        raise ValueError(f"backend must be one of {', '.join(FACTORIES)}, got {name!r}")
    run = FACTORIES[name](module, example, threads)
    run(example)  # warm up: compiles, allocates, and fails here rather than on the first request
    return run


# backends whose image runners end in torch's float sigmoid: outputs already in [0, 1], no clip needed
# (onnxruntime's Sigmoid is a polynomial approximation: its outputs are clipped)
SIGMOID_IN_RANGE = ("eager", "compile", "mixed", "bf16", "int8")


def in_range(out: np.ndarray, backend: str) -> np.ndarray:
    """An image runner's output clipped to [0, 1] in place, unless its last op (torch's sigmoid) keeps it there."""
    return out if backend in SIGMOID_IN_RANGE else np.clip(out, 0.0, 1.0, out=out)

# fp32 backends: within 1e-4 of eager and a row's output independent of its batch-mates ("exact" = eager)
EXACT = ("eager", "compile", "onnx", "numpy")


def faster(a: Runner, b: Runner, x: np.ndarray, *, rounds: int = 7, reps: int = 3) -> float:
    """Median over interleaved rounds of time(a) / time(b) on input x (< 1: a is faster)."""
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            a(x)
        t1 = time.perf_counter()
        for _ in range(reps):
            b(x)
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / max(t2 - t1, 1e-9))
    return float(np.median(ratios))
