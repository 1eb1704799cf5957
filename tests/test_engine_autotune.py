"""backend="auto": measured, within one grey level of fp32, cached per file and machine — and the 8-bit parity
of every backend against fp32 on TRAINED weights of every VAE and GAN variant the recipes produce."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_idx_dataset

import genloom
from genloom.engine import autotune, backends, lite, load

# the variants `genloom train vae|gan` produces (flags → model), trained briefly on a small blobby dataset
VARIANTS: dict[str, tuple[str, dict]] = {
    "vae": ("vae", {"latent": 6, "enc_hidden": "48", "dec_hidden": "48"}),
    "vae-relu-deep-cond": ("vae", {"latent": 6, "enc_hidden": "48", "dec_hidden": "48,64", "activation": "relu",
                                   "conditional": True}),
    "vae-gaussian": ("vae", {"latent": 6, "enc_hidden": "48", "dec_hidden": "48", "likelihood": "gaussian"}),
    "gan-r3gan-bn": ("gan", {"dim": 8, "latent": 16}),  # the default: conv, batch-norm generator
    "gan-r3gan-bn-cond": ("gan", {"dim": 8, "latent": 16, "conditional": True}),
    "gan-wgan-gp-k5": ("gan", {"loss": "wgan-gp", "dim": 8, "latent": 16, "kernel": 5, "n_critic": 2}),
    "gan-hinge-mlp": ("gan", {"loss": "hinge", "arch": "mlp", "dim": 64, "latent": 16}),
}
LOSSY = ("mixed", "bf16", "int8")
CONV = ("gan-r3gan-bn", "gan-r3gan-bn-cond", "gan-wgan-gp-k5")  # mixed runs MLPs only


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trained")
    data = make_idx_dataset(d / "data", n_train=640, n_test=64)
    out = {}
    for name, (family, opts) in VARIANTS.items():
        extra = {"select_samples": 0} if family == "gan" else {}
        s = genloom.train(family, out=d / name, data=data, steps=120, batch_size=32, seed=1, threads=1,
                          **opts, **extra)
        out[name] = Path(s["model"])
    return out


def u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.int16)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_backend_against_fp32_on_trained_weights(trained: dict[str, Path], name: str) -> None:
    ref_eng = load(trained[name], backend="exact")
    assert ref_eng.backend == "eager"
    ref = ref_eng.sample(200, seed=3)
    assert ref.std() > 0.02  # trained, not a blank image
    grey = {}
    for backend in ("eager", "onnx", "numpy", "auto", *LOSSY):
        if backend == "mixed" and (name in CONV or not backends.bf16_kernels()):  # MLPs, bf16 CPUs only
            continue
        eng = lite.load(trained[name]) if backend == "numpy" else load(trained[name], backend=backend)
        out = eng.sample(200, seed=3)
        grey[backend] = int(np.abs(u8(out) - u8(ref)).max())
        if backend in LOSSY:  # opt-in by name: their stated float tolerance; auto takes them only within 1 level
            assert float(np.abs(out - ref).max()) <= backends.TOLERANCE[backend], (backend, grey)
        else:
            assert grey[backend] <= 1, (backend, grey)
    auto = load(trained[name])
    assert auto.backend == "eager" or grey[auto.backend] <= 1, (auto.backend, grey)
    # a request's picture does not depend on its batch-mates: rows decoded alone = rows inside the batch
    z = np.random.default_rng(5).standard_normal((100, auto.latent), dtype=np.float32)
    y = [i % 3 for i in range(100)] if auto.num_classes else None
    alone = np.concatenate([auto.decode(z[i:i + 1], labels=None if y is None else [y[i]]) for i in range(0, 100, 25)])
    assert int(np.abs(u8(alone) - u8(auto.decode(z, labels=y)[::25])).max()) <= 1


def test_auto_takes_the_fastest_agreeing_candidate(trained: dict[str, Path], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    ratios = {"mixed": 0.7, "bf16": 0.6, "int8": 0.3, "onnx": 0.8}
    monkeypatch.setattr(backends, "faster", lambda a, b, x: ratios[getattr(a, "backend_name", "?")])
    real_build, has_bf16 = backends.build, backends.bf16_kernels()

    def build(name, module, example, *, threads=None):  # (eager stands in for bf16 where this CPU emulates it)
        real = "eager" if name in backends.BF16 and not has_bf16 else name
        run = real_build(real, module, example, threads=threads)

        def tagged(x, run=run):
            return run(x)
        tagged.backend_name = name  # type: ignore[attr-defined]
        return tagged

    monkeypatch.setattr(backends, "build", build)
    real_levels = autotune.grey_levels
    monkeypatch.setattr(autotune, "grey_levels", lambda run, ref, x: 5 if run.backend_name == "int8"
                        else real_levels(run, ref, x))
    monkeypatch.setattr(backends, "bf16_kernels", lambda: True)  # the choice rule, whatever this CPU has
    eng = load(trained["vae"])
    assert eng.backend == "bf16"  # int8 is faster but 5 grey levels off
    assert eng.auto["grey_levels"]["int8"] == 5 and eng.auto["time_vs_eager"] == {"mixed": 0.7, "bf16": 0.6, "onnx": 0.8}
    ratios.update(mixed=0.98, bf16=0.97, onnx=0.96)  # nothing ≥ 5 % faster: eager — in a fresh cache
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "fresh"))
    assert load(trained["vae"]).backend == "eager"


def test_the_choice_is_cached_per_file_and_machine(trained: dict[str, Path], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    first = load(trained["gan-r3gan-bn"])
    assert first.auto["cached"] is False
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["backend"] == first.backend
    assert first.auto["cpu"] == autotune.cpu_id()

    def no_measuring(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(autotune, "measure", no_measuring)
    again = load(trained["gan-r3gan-bn"])
    assert again.backend == first.backend and again.auto["cached"] is True
    np.testing.assert_array_equal(again.sample(8, seed=1), first.sample(8, seed=1))
    with pytest.raises(AssertionError, match="measured again"):  # another file: its own measurement
        load(trained["gan-hinge-mlp"])
    files[0].write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    assert load(trained["gan-r3gan-bn"]).auto["cached"] is False  # a corrupt entry is measured again


def test_cli_sample_is_the_engine_bit_for_bit(trained: dict[str, Path], tmp_path: Path) -> None:
    from genloom.cli import main

    for name in ("vae-relu-deep-cond", "gan-r3gan-bn"):
        assert main(["sample", str(trained[name]), "-n", "4", "--seed", "1", "-o", str(tmp_path / "a.npy")]) == 0
        np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), load(trained[name]).sample(4, seed=1))
