"""--precision (train/precision.py), --device (device.py) and the allocator setting the Trainer applies.

The resolution logic is tested on any CPU; what bf16 does to a matmul depends on the hardware (oneDNN computes fp32
matmuls from bf16 inputs only on AMX CPUs), so that assertion is skipped elsewhere, with the reason."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from genloom.data.batches import ImageBatches
from genloom.data.images import ImageData
from genloom.device import resolve_device
from genloom.errors import GenloomError
from genloom.models.vae import VAE, VAEConfig
from genloom.training import precision as prec
from genloom.training.allocator import keep_freed_memory
from genloom.training.trainer import TrainConfig, Trainer

CPU = torch.device("cpu")


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _has_amx() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def test_choices_are_checked() -> None:
    with pytest.raises(GenloomError, match="auto, fp32, bf16, fp16"):
        prec.plan("fp8", CPU)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(out="x", epochs=1, precision="tf32")
    with pytest.raises(GenloomError, match="needs a GPU"):
        prec.plan("fp16", CPU)


def test_explicit_cpu_plans_follow_the_models_bf16_mode() -> None:
    assert prec.plan("fp32", CPU) == prec.Plan("fp32", "cpu", None, how="requested")
    mm = prec.plan("bf16", CPU, cpu_bf16="matmul")
    assert mm.cpu_matmul_bf16 and mm.autocast is None
    ac = prec.plan("bf16", CPU, cpu_bf16="autocast")
    assert ac.autocast == torch.bfloat16 and not ac.cpu_matmul_bf16
    assert prec.plan("auto", CPU).precision == "fp32"  # no probe given: the exact choice


def test_auto_takes_bf16_only_when_measured_faster_and_caches_the_verdict(cache_home, monkeypatch) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_kernels", lambda: True)  # a CPU with bf16 kernels: measured
    calls = []

    def probe(t32: float, t16: float):
        def f():
            calls.append(1)
            return t32, t16
        return f

    p = prec.plan("auto", CPU, cpu_bf16="autocast", probe=probe(0.010, 0.006), probe_key="m1")
    assert p.precision == "bf16" and p.autocast == torch.bfloat16 and "probe" in p.how
    assert prec.plan("auto", CPU, probe=probe(0.010, 0.0095), probe_key="m2").precision == "fp32"  # < 1.1x
    assert prec.plan("auto", CPU, probe=probe(0.010, 0.020), probe_key="m3").precision == "fp32"  # slower
    assert len(calls) == 3
    # cached per CPU model + model key: no second probe, same verdict
    again = prec.plan("auto", CPU, probe=probe(1.0, 100.0), probe_key="m1")
    assert again.precision == "bf16" and "cached" in again.how and len(calls) == 3
    cache = json.loads(prec.cache_path().read_text())
    assert prec.cache_path().is_relative_to(cache_home)
    entry = cache[prec.cpu_key() + "|m1"]
    assert entry["choice"] == "bf16" and entry["fp32_ms"] == 10.0 and entry["bf16_ms"] == 6.0


def test_auto_is_fp32_without_a_probe_where_bf16_is_emulated(cache_home, monkeypatch) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_kernels", lambda: False)  # what an AVX2-only CPU reports

    def probe():
        raise AssertionError("probed a CPU without bf16 kernels")

    p = prec.plan("auto", CPU, probe=probe, probe_key="m1")
    assert p.precision == "fp32" and p.autocast is None and "no bf16 matmul kernels" in p.how
    assert not prec.cache_path().exists()
    asked = prec.plan("bf16", CPU, probe=probe)  # asked for by name: given, with the warning in its reason
    assert asked.precision == "bf16" and "far slower" in asked.how


def test_time_alternating_measures_both_modes() -> None:
    seen = []
    t32, t16 = prec.time_alternating(lambda mode: seen.append(mode), budget_s=0.05)
    assert t32 > 0 and t16 > 0
    assert seen[:2] == ["fp32", "bf16"] and seen.count("fp32") == seen.count("bf16")


@pytest.mark.skipif(not _has_amx(), reason="oneDNN computes fp32 matmuls from bf16 inputs only on AMX CPUs "
                                          "(an AVX512-BF16 CPU without AMX keeps them exact)")
def test_bf16_matmuls_round_inputs_and_the_setting_is_restored() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(64, 256), torch.randn(128, 256)
    exact = F.linear(x, w)
    before = torch.backends.mkldnn.matmul.fp32_precision
    with prec.applied(prec.plan("bf16", CPU, cpu_bf16="matmul")):
        low = F.linear(x, w)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert low.dtype == torch.float32 and not torch.equal(low, exact)  # really computed from bf16 inputs
    assert (low - exact).norm() / exact.norm() < 0.01  # bf16 rounding (8-bit mantissa), fp32 accumulation
    assert torch.equal(F.linear(x, w), exact)  # exact again outside the block
    assert prec.onednn_uses_bf16_for_fp32_matmuls()


def _vae_trainer(tmp_path, precision: str, on_step=None) -> Trainer:
    torch.manual_seed(0)
    data = ImageData(torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    return Trainer(VAE(VAEConfig(enc_hidden=(64,), dec_hidden=(64,))),
                   TrainConfig(out=str(tmp_path), steps=2, batch_size=32, progress=False, precision=precision,
                               device="cpu"), ImageBatches(data, 32), on_step=on_step)


def test_trainer_applies_bf16_only_while_training_and_records_it(tmp_path) -> None:
    before = torch.backends.mkldnn.matmul.fp32_precision
    seen = []
    tr = _vae_trainer(tmp_path, "bf16", on_step=lambda t, out: seen.append(torch.backends.mkldnn.matmul.fp32_precision))
    tr.fit()
    assert seen == ["bf16", "bf16"]  # the VAE's CPU bf16 mode: oneDNN matmuls
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert tr.provenance["precision"] == "bf16" and tr.provenance["device"] == "cpu"


def test_trainer_auto_probes_this_cpu_once(tmp_path, cache_home) -> None:
    tr = _vae_trainer(tmp_path / "a", "auto")
    tr.fit()
    if not prec.cpu_bf16_kernels():  # AVX2 only: fp32 by rule, nothing to probe or cache
        assert tr.provenance["precision"] == "fp32" and "no bf16 matmul kernels" in tr.plan.how
        assert not prec.cache_path().exists()
        return
    assert tr.provenance["precision"] in ("fp32", "bf16")
    assert "probe" in tr.plan.how and "cached" not in tr.plan.how
    entries = json.loads(prec.cache_path().read_text())
    (entry,) = entries.values()
    assert entry["choice"] == tr.provenance["precision"] and entry["fp32_ms"] > 0 and entry["bf16_ms"] > 0
    assert (entry["choice"] == "bf16") == (entry["fp32_ms"] / entry["bf16_ms"] >= prec.MIN_SPEEDUP)
    tr2 = _vae_trainer(tmp_path / "b", "auto")
    tr2.fit()
    assert "cached" in tr2.plan.how and tr2.provenance["precision"] == entry["choice"]


def test_device_resolution() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else CPU)
    with pytest.raises(GenloomError, match="choose auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GenloomError, match="no CUDA device available.*--device cpu"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_on_glibc() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent


def test_engine_load_on_a_device(tmp_path) -> None:
    from genloom import engine, export

    torch.manual_seed(0)
    path = export.save(VAE(VAEConfig(enc_hidden=(16,), dec_hidden=(16,), latent=4)), tmp_path / "vae.safetensors")
    a = engine.load(path, device="cpu").sample(3, seed=5)
    b = engine.load(path, device="auto" if not torch.cuda.is_available() else "cpu").sample(3, seed=5)
    assert (a == b).all()  # the same noise source, the same images
    if not torch.cuda.is_available():
        with pytest.raises(GenloomError, match="no CUDA device"):
            engine.load(path, device="cuda")
    with pytest.raises(GenloomError, match="runs on the CPU"):
        engine.load(path, device="cuda", backend="onnx")
