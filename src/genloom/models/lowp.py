"""bf16 matmuls for small MLPs on CPUs with AMX / AVX512-BF16, without autocast's per-op casts.

``torch.autocast("cpu", bfloat16)`` casts every weight, bias and input at every op and every result back in the
backward pass; for the lecture's 784→400→20 VAE those casts cost about as much as the bf16 matmuls save
(measured: 58 copies per step, 30 % of the step). Here a linear layer casts its fp32 master weight once per
forward, the activations between layers stay bf16, and the backward pass runs two bf16 matmuls (fp32
accumulation inside oneDNN) and hands fp32 gradients to the optimizer. The caller decides where to return to
float32 (the VAE does it for μ, log σ² and the output logits, so the likelihood and KL are float32).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def fast_bf16_available() -> bool:
    """True when this CPU runs bf16 matmuls natively (AMX tiles or AVX512-BF16), so bf16 is a speed-up."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch without the probes
        return False


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        x16, w16 = x.to(dtype), weight.to(dtype)
        out = x16 @ w16.t() if bias is None else torch.addmm(bias.to(dtype), x16, w16.t())  # (B, out)
        ctx.save_for_backward(x16, w16)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x16, w16 = ctx.saved_tensors
        g16 = grad.to(w16.dtype)
        gx = g16 @ w16 if ctx.needs_input_grad[0] else None  # (B, in), stays bf16 for the layer below
        gw = (g16.t() @ x16).float() if ctx.needs_input_grad[1] else None  # (out, in) for the fp32 master
        gb = grad.sum(0, dtype=torch.float32) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def linear(x: torch.Tensor, layer: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``layer(x)`` with ``dtype`` matmuls; returns ``dtype`` activations. x: (B, in) of any float dtype."""
    return _Linear.apply(x, layer.weight, layer.bias, dtype)


def run(seq: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Run an ``nn.Sequential`` of Linear layers and elementwise activations, in ``dtype`` when given."""
    if dtype is None:
        return seq(x)
    for mod in seq.children() if isinstance(seq, nn.Sequential) else [seq]:
        if isinstance(mod, nn.Sequential):
            x = run(mod, x, dtype)
        elif isinstance(mod, nn.Linear):
            x = linear(x, mod, dtype)
        else:
            x = mod(x)
    return x
