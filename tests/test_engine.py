"""genloom.engine: load a VAE file, sample/decode/encode/reconstruct/interpolate, determinism, validation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genloom import export
from genloom.engine import load
from genloom.engine.base import InputError, noise
from genloom.errors import GenloomError
from genloom.models.vae import VAE, VAEConfig


def _vae_file(tmp: Path, *, num_classes: int = 0, dec_hidden: tuple[int, ...] = (32,), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = VAE(VAEConfig(enc_hidden=(32,), dec_hidden=dec_hidden, latent=4, num_classes=num_classes))
    return export.save(model, tmp / "vae.safetensors", provenance={"dataset": "test"})


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _vae_file(tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def cvae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _vae_file(tmp_path_factory.mktemp("cvae"), num_classes=3)


def test_sample_matches_the_model_decoder(vae_path: Path) -> None:
    eng = load(vae_path, backend="eager")
    assert eng.kind == "vae" and eng.header.kind == "vae" and eng.max_batch >= 1
    imgs = eng.sample(5, seed=3)
    assert imgs.shape == (5, 28, 28) and imgs.dtype == np.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0
    model = export.load(vae_path)
    with torch.no_grad():
        ref = model.decode(torch.from_numpy(noise(3, 5, 4))).numpy().reshape(5, 28, 28)
    np.testing.assert_allclose(imgs, ref, atol=1e-6)


def test_same_seed_same_images_other_seed_differs(vae_path: Path) -> None:
    eng = load(vae_path, backend="eager")
    a, b, c = eng.sample(4, seed=1), eng.sample(4, seed=1), eng.sample(4, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert eng.sample(2).shape == (2, 28, 28)  # seed=None: fresh noise


def test_encode_decode_reconstruct_interpolate(vae_path: Path) -> None:
    eng = load(vae_path, backend="eager")
    x = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    z = eng.encode(x)
    assert z.shape == (3, 4)
    model = export.load(vae_path)
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(x).reshape(3, -1))
    np.testing.assert_allclose(z, mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(eng.reconstruct(x), eng.decode(z), atol=1e-6)
    path = eng.interpolate(0, 1, steps=5)
    assert path.shape == (5, 28, 28)
    np.testing.assert_allclose(path[0], eng.sample(1, seed=0)[0], atol=1e-5)  # the path ends at the seeds' z
    np.testing.assert_allclose(path[-1], eng.sample(1, seed=1)[0], atol=1e-5)
    zz = eng.interpolate(np.zeros(4), np.ones(4), steps=3)
    assert zz.shape == (3, 28, 28)


def test_conditional_labels(cvae_path: Path) -> None:
    eng = load(cvae_path, backend="eager")
    a = eng.sample(3, seed=0, labels=[0, 1, 2])
    np.testing.assert_array_equal(a, eng.sample(3, seed=0))  # default labels cycle 0, 1, 2
    b = eng.sample(3, seed=0, labels=[2])
    assert not np.allclose(a, b)
    with pytest.raises(InputError, match="labels: value 3 out of range 0..2"):
        eng.sample(2, labels=[0, 3])
    with pytest.raises(InputError, match="labels: has 2 values but n is 3"):
        eng.sample(3, labels=[0, 1])


@pytest.mark.parametrize(("call", "match"), [
    (lambda e: e.sample(0), "n: must be between 1 and 1024"),
    (lambda e: e.sample(10**9), "n: must be between 1 and 1024"),
    (lambda e: e.sample(2.5), "n: must be an integer"),
    (lambda e: e.sample(2, seed=-1), "seed: must be between"),
    (lambda e: e.sample(2, seed="x"), "seed: must be an integer"),
    (lambda e: e.sample(2, labels=[1]), "not conditional"),
    (lambda e: e.decode(np.zeros((2, 5))), r"z: must have shape \(n, 4\)"),
    (lambda e: e.decode(np.full((1, 4), np.nan)), "z: values must be finite"),
    (lambda e: e.encode(np.zeros((2, 27, 28))), r"x: must have shape \(n, 28, 28\)"),
    (lambda e: e.encode(np.full((1, 28, 28), 255.0)), r"in \[0, 1\]"),
    (lambda e: e.interpolate(0, 1, steps=0), "steps: must be between"),
])
def test_bad_input_names_the_field(vae_path: Path, call, match: str) -> None:
    eng = load(vae_path, backend="eager")
    with pytest.raises(InputError, match=match):
        call(eng)


def test_load_errors(tmp_path: Path, vae_path: Path) -> None:
    with pytest.raises(GenloomError, match="no such model file"):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="backend must be one of"):
        load(vae_path, backend="cuda")
    with pytest.raises(InputError, match="threads must be a positive integer"):
        load(vae_path, threads=0)


# -- GAN and LM ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_gan_sample_matches_the_generator(tmp_path: Path, arch: str) -> None:
    from genloom.models.gan import GAN, GANConfig

    torch.manual_seed(0)
    gan = GAN(GANConfig(arch=arch, dim=8, latent=6, kernel=3, num_classes=2 if arch == "conv" else 0))
    path = export.save(gan, tmp_path / "gan.safetensors")
    eng = load(path, backend="eager")
    assert eng.kind == "gan" and eng.latent == 6
    imgs = eng.sample(4, seed=5)
    assert imgs.shape == (4, 28, 28) and imgs.dtype == np.float32
    labels = torch.arange(4) % 2 if arch == "conv" else None
    with torch.no_grad():
        ref = gan.ema(torch.from_numpy(noise(5, 4, 6)), labels).numpy().reshape(4, 28, 28)
    np.testing.assert_allclose(imgs, ref, atol=1e-6)
    np.testing.assert_allclose(eng.decode(noise(5, 4, 6)), imgs, atol=1e-6)
    if arch == "conv":
        assert not np.allclose(eng.sample(4, seed=5, labels=[1]), imgs)


def test_lm_generate_and_stream(tmp_path: Path) -> None:
    from genloom.models.lm_generate import generate
    from genloom.models.transformer import LMConfig, TransformerLM

    torch.manual_seed(0)
    lm = TransformerLM(LMConfig(vocab_size=5, block_size=16, n_layer=1, n_head=2, n_embd=16), list("\nabc "))
    path = export.save(lm, tmp_path / "lm.safetensors")
    eng = load(path)
    assert eng.kind == "lm" and eng.backend == "eager"
    out = eng.generate(["ab", "c"], max_new_tokens=12, temperature=1.0, seed=3)
    assert len(out) == 2 and all(len(t) == 12 for t in out)
    assert out == generate(export.load(path), ["ab", "c"], max_new_tokens=12, temperature=1.0, seed=3)
    assert eng.generate(["ab", "c"], max_new_tokens=12, temperature=1.0, seed=3) == out  # deterministic
    assert "".join(eng.stream("ab", max_new_tokens=12, temperature=1.0, seed=3)) == out[0]
    with pytest.raises(InputError, match=r"character 'z' \(U\+007A\) is not in the model's vocabulary"):
        eng.generate(["az"], max_new_tokens=1)
    with pytest.raises(InputError, match="prompts: must be a list"):
        eng.generate("ab", max_new_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="max_new_tokens: must be"):
        eng.generate(["ab"], max_new_tokens=-1)
    with pytest.raises(InputError, match="top_p: must be"):
        list(eng.stream("ab", top_p=1.5))
    with pytest.raises(InputError, match="max_tokens: unknown field"):
        eng.generate(["ab"], max_tokens=3)


def test_loading_never_imports_dynamo(tmp_path: Path) -> None:
    """Building on the meta device skips weight init, so no load pays for importing torch._dynamo (seconds)."""
    import subprocess
    import sys

    from genloom.models.gan import GAN, GANConfig
    from genloom.models.transformer import LMConfig, TransformerLM

    lm = export.save(TransformerLM(LMConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=8),
                                   list("\nab")), tmp_path / "lm.safetensors")
    gan = export.save(GAN(GANConfig(arch="conv", dim=4, latent=4)), tmp_path / "gan.safetensors")
    code = ("import sys\nfrom genloom.engine import load\n"
            f"load({str(lm)!r}).generate(['a'], max_new_tokens=2)\n"
            f"load({str(gan)!r}, backend='eager').sample(2, seed=0)\n"
            "assert 'torch._dynamo' not in sys.modules\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
