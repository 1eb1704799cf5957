"""bf16 training matmuls (models/lowp.py) and the allocator setting used by the Trainer."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from genloom.models import lowp
from genloom.models.vae import VAE, VAEConfig
from genloom.train.allocator import keep_freed_memory


def _grads(model: nn.Module, dtype: torch.dtype | None, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = lowp.run(model, x, dtype).float()
    (out.square().sum()).backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_bf16_mlp_matches_fp32_within_bf16_precision() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 48), nn.SiLU(), nn.Linear(48, 32))
    x = torch.randn(16, 64)
    ref_out, ref_g = _grads(mlp, None, x)
    out, g = _grads(mlp, torch.bfloat16, x)
    assert out.dtype == torch.float32 and all(t.dtype == torch.float32 for t in g)  # fp32 master gradients
    assert torch.allclose(out, ref_out, rtol=0.03, atol=0.03)
    for a, b in zip(g, ref_g):
        assert (a - b).norm() / b.norm() < 0.03  # bf16 has an 8-bit mantissa: ~0.4 % per element
    assert not torch.equal(out, ref_out)  # it really ran in bf16


def test_input_gradient_flows_and_none_for_frozen_weights() -> None:
    lin = nn.Linear(8, 4)
    lin.weight.requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    lowp.linear(x, lin).float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert torch.allclose(x.grad, lin.weight.sum(0).expand(3, 8), rtol=0.02, atol=0.02)
    assert lin.weight.grad is None and lin.bias.grad is not None


def test_vae_loss_bf16_close_to_fp32_and_eval_is_fp32() -> None:
    torch.manual_seed(0)
    m = VAE(VAEConfig())
    x = torch.rand(32, 1, 28, 28)
    m.train()
    torch.manual_seed(1)
    ref = m.loss((x, None)).loss.item()
    m.autocast_dtype = torch.bfloat16
    torch.manual_seed(1)
    low = m.loss((x, None)).loss.item()
    assert abs(low - ref) / ref < 0.01 and low != ref
    m.eval()  # evaluation ignores the training dtype: exact fp32
    torch.manual_seed(1)
    a = m.loss((x, None)).loss.item()
    m.autocast_dtype = None
    torch.manual_seed(1)
    assert a == m.loss((x, None)).loss.item()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_on_glibc() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
