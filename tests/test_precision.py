"""Training matmul precision (train/precision.py) and the allocator setting the Trainer applies."""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from genloom.data.batches import ImageBatches
from genloom.data.images import ImageData
from genloom.models.vae import VAE, VAEConfig
from genloom.training.allocator import keep_freed_memory
from genloom.training.precision import fast_bf16_available, matmul_precision, resolve
from genloom.training.trainer import TrainConfig, Trainer


def test_resolve_and_reject() -> None:
    assert resolve("auto") == ("bf16" if fast_bf16_available() else "ieee")
    assert resolve("ieee") == "ieee" and resolve("bf16") == "bf16"
    with pytest.raises(ValueError, match="ieee, bf16, auto"):
        resolve("fp8")
    with pytest.raises(ValueError, match="matmul_precision"):
        TrainConfig(out="x", epochs=1, matmul_precision="tf32")


@pytest.mark.skipif(not fast_bf16_available(), reason="CPU without AMX / AVX512-BF16")
def test_bf16_matmuls_round_inputs_and_the_setting_is_restored() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(64, 256), torch.randn(128, 256)
    exact = F.linear(x, w)
    before = torch.backends.mkldnn.matmul.fp32_precision
    with matmul_precision("bf16") as used:
        assert used == "bf16"
        low = F.linear(x, w)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert low.dtype == torch.float32 and not torch.equal(low, exact)  # really computed from bf16 inputs
    assert (low - exact).norm() / exact.norm() < 0.01  # bf16 rounding (8-bit mantissa), fp32 accumulation
    assert torch.equal(F.linear(x, w), exact)  # exact again outside the block


def test_trainer_sets_precision_only_while_training_and_records_it(tmp_path) -> None:
    torch.manual_seed(0)
    data = ImageData(torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    before = torch.backends.mkldnn.matmul.fp32_precision
    seen = []
    tr = Trainer(VAE(VAEConfig()), TrainConfig(out=str(tmp_path), steps=2, batch_size=32, progress=False,
                                               matmul_precision="auto"), ImageBatches(data, 32),
                 on_step=lambda t, out: seen.append(torch.backends.mkldnn.matmul.fp32_precision))
    tr.fit()
    assert seen and set(seen) == {resolve("auto")}
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert tr.provenance["matmul_precision"] == resolve("auto")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_on_glibc() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
