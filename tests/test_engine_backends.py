"""Every inference backend agrees with eager fp32 within its stated tolerance; the numpy path never imports torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genloom import export
from genloom.engine import autotune, backends, lite, load
from genloom.engine.base import InputError
from genloom.errors import ModelFileError
from genloom.models.gan import GAN, GANConfig
from genloom.models.vae import VAE, VAEConfig


def _save(model: torch.nn.Module, path: Path) -> Path:
    return export.save(model, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    out = {
        "vae-relu": _save(VAE(VAEConfig(enc_hidden=(64,), dec_hidden=(64, 96), latent=8, activation="relu")),
                          d / "vae_relu.safetensors"),
        "vae-silu-cond": _save(VAE(VAEConfig(enc_hidden=(64,), dec_hidden=(64,), latent=8, num_classes=3)),
                               d / "vae_cond.safetensors"),
        "gan-mlp": _save(GAN(GANConfig(arch="mlp", dim=64, latent=16)), d / "gan_mlp.safetensors"),
        "gan-conv": _save(GAN(GANConfig(arch="conv", dim=8, latent=16, kernel=5, num_classes=2)),
                          d / "gan_conv.safetensors"),
        "gan-conv-k4": _save(GAN(GANConfig(arch="conv", dim=4, latent=8, kernel=4, ema_kimg=0)),
                             d / "gan_conv4.safetensors"),
    }
    return out


NO_BF16 = "this CPU has no oneDNN bf16 matmul kernels (AVX2 only): mixed refuses it, tested below"


def test_mixed_without_bf16_kernels_names_the_way_out(files: dict[str, Path], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(backends, "bf16_kernels", lambda: False)  # what an AVX2-only CPU reports
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))  # measured now, not a cached choice
    with pytest.raises(InputError, match="mixed needs oneDNN's bf16 matmul kernels .*use bf16, int8 or exact"):
        load(files["vae-relu"], backend="mixed")
    eng = load(files["vae-relu"])  # auto skips it and says why
    assert "mixed" in eng.auto["skipped"] and "bf16 matmul kernels" in eng.auto["skipped"]["mixed"]


def test_the_bf16_kernel_probe_agrees_with_onednn() -> None:
    x = torch.randn(4, 8)
    lin = nn.Linear(8, 16)
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach().to(torch.bfloat16), 4)
        torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), w, None, "none", [], "")
        works = True
    except RuntimeError:
        works = False
    assert backends.bf16_kernels() is works


@pytest.mark.parametrize("backend", ["mixed", "bf16", "int8", "onnx"])
@pytest.mark.parametrize("name", ["vae-relu", "vae-silu-cond", "gan-mlp", "gan-conv"])
def test_backend_matches_eager(files: dict[str, Path], name: str, backend: str) -> None:
    if backend == "mixed" and name == "gan-conv":  # MLPs only: a clear error naming the way out
        with pytest.raises(InputError, match="mixed runs MLPs .*use bf16 or exact"):
            load(files[name], backend=backend)
        return
    if backend == "mixed" and not backends.bf16_kernels():
        pytest.skip(NO_BF16)
    ref = load(files[name], backend="eager").sample(32, seed=1)
    eng = load(files[name], backend=backend)
    assert eng.backend == backend
    out = eng.sample(32, seed=1)
    assert out.shape == ref.shape and out.dtype == np.float32
    err = float(np.abs(out - ref).max())
    assert err <= backends.TOLERANCE[backend], f"{backend} differs from eager by {err}"
    if backend in backends.EXACT:
        assert err <= 1e-5


@pytest.mark.parametrize("act", [nn.ReLU(), nn.SiLU(), nn.Tanh(), nn.GELU(), nn.GELU("tanh"), nn.LeakyReLU(0.1),
                                 nn.Sigmoid()])
def test_mixed_fuses_each_activation(act: nn.Module) -> None:
    if not backends.bf16_kernels():
        pytest.skip(NO_BF16)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Sequential(nn.Linear(8, 32), act, nn.Linear(32, 48), act, nn.Linear(48, 16)),
                        nn.Sigmoid()).eval()
    x = np.random.default_rng(0).standard_normal((5, 8), dtype=np.float32)
    run = backends.build("mixed", mlp, x)
    with torch.no_grad():
        ref = mlp(torch.from_numpy(x)).numpy()
    out = run(x)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert 0 < float(np.abs(out - ref).max()) <= 1e-2  # bf16 after the first layer: close, not identical
    single = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid()).eval()  # one layer: all of it fp32
    with torch.no_grad():
        np.testing.assert_allclose(backends.build("mixed", single, x)(x), single(torch.from_numpy(x)).numpy(),
                                   atol=1e-6)
    with pytest.raises(InputError, match="no fused form of Softplus"):
        backends.build("mixed", nn.Sequential(nn.Linear(8, 4), nn.Softplus(), nn.Linear(4, 2)), x)


@pytest.mark.slow  # inductor compiles for ~45 s on 2 busy cores
@pytest.mark.timeout(240)
def test_compile_matches_eager(files: dict[str, Path]) -> None:
    ref = load(files["vae-relu"], backend="eager").sample(16, seed=2)
    out = load(files["vae-relu"], backend="compile").sample(16, seed=2)
    assert float(np.abs(out - ref).max()) <= backends.TOLERANCE["compile"]


def test_auto_agrees_with_eager_within_a_grey_level(files: dict[str, Path]) -> None:
    # which backend wins is measured (timing), so either an exact one or a lossy one within one grey level
    for name in ("vae-relu", "gan-mlp"):
        eng = load(files[name])
        ref, out = load(files[name], backend="eager").sample(8, seed=0), eng.sample(8, seed=0)
        if eng.backend in backends.EXACT:
            np.testing.assert_allclose(out, ref, atol=1e-5)
        else:
            assert eng.backend in autotune.CANDIDATES and eng.auto is not None
            assert int(np.abs(np.rint(out * 255) - np.rint(ref * 255)).max()) <= 1


@pytest.mark.parametrize("name", ["vae-relu", "vae-silu-cond", "gan-mlp", "gan-conv", "gan-conv-k4"])
def test_numpy_path_matches_eager(files: dict[str, Path], name: str) -> None:
    eng, ref = lite.load(files[name]), load(files[name], backend="eager")
    assert eng.kind == ref.kind and eng.latent == ref.latent and eng.num_classes == ref.num_classes
    np.testing.assert_allclose(eng.sample(9, seed=4), ref.sample(9, seed=4), atol=1e-5)
    z = np.random.default_rng(1).standard_normal((3, ref.latent)).astype(np.float32)
    np.testing.assert_allclose(eng.decode(z), ref.decode(z), atol=1e-5)
    if ref.kind == "vae":
        x = ref.sample(4, seed=0)
        np.testing.assert_allclose(eng.encode(x), ref.encode(x), atol=1e-4)
        np.testing.assert_allclose(eng.reconstruct(x), ref.reconstruct(x), atol=1e-5)
        np.testing.assert_allclose(eng.interpolate(0, 1, steps=4), ref.interpolate(0, 1, steps=4), atol=1e-5)


def test_conv_transpose_matches_torch() -> None:
    rng = np.random.default_rng(0)
    for k in (3, 4, 5):
        p = (k - 1) // 2
        op = 2 + 2 * p - k
        conv = torch.nn.ConvTranspose2d(3, 2, k, 2, p, op)
        x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
        with torch.no_grad():
            ref = conv(torch.from_numpy(x)).numpy()
        out = lite.conv_transpose2d(x, conv.weight.detach().numpy(), conv.bias.detach().numpy(), stride=2,
                                    padding=p, output_padding=op)
        assert out.shape == ref.shape == (2, 2, 10, 10)
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_numpy_path_never_imports_torch(files: dict[str, Path]) -> None:
    code = (
        "import sys\n"
        "import genloom.engine as E\n"
        f"e = E.load({str(files['vae-relu'])!r}, backend='numpy')\n"
        "assert e.sample(4, seed=0).shape == (4, 28, 28)\n"
        f"g = E.load({str(files['gan-conv'])!r}, backend='numpy')\n"
        "assert g.sample(2, seed=0, labels=[1]).shape == (2, 28, 28)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:3]\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_numpy_path_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        lite.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(files["vae-relu"].read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        lite.load(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not a model")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        lite.load(junk)
    h = lite.read_header(files["gan-mlp"])
    assert h.kind == "gan" and h.config == export.read_header(files["gan-mlp"]).config


def test_faster_measures_a_ratio() -> None:
    import time

    ratio = backends.faster(lambda x: x, lambda x: time.sleep(0.002), np.zeros(1), rounds=3, reps=1)
    assert ratio < 0.5
