"""GAN through the CLI on a small real subset: one epoch per loss without NaNs, export → load → sample with a
seed reproduces identical images, eval prints the FID, resume carries the EMA."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genloom import export
from genloom.cli import main
from genloom.engine import load
from genloom.engine.base import noise
from genloom.training.metrics import read_metrics

pytestmark = pytest.mark.timeout(240)
TINY = ["--dim", "8", "--latent", "16", "--kernel", "4", "--batch-size", "16", "--threads", "1", "--no-progress",
        "--log-every", "1", "--select-samples", "0"]


@pytest.fixture(scope="module", autouse=True)
def _fmnist(fmnist):
    """Every test here trains on the real Fashion-MNIST (conftest's fixture skips where it is absent)."""


@pytest.mark.parametrize("loss", ["wgan-gp", "hinge", "r3gan"])
def test_one_epoch_per_loss_without_nans(tmp_path, capsys, loss: str) -> None:
    out = tmp_path / loss
    select = ["--select-samples", "200"] if loss == "r3gan" else []  # the default loss also runs the EMA choice
    rc = main(["train", "gan", "--loss", loss, "--subset", "400", "--epochs", "1", "--out", str(out), *TINY, *select])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recs = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"]
    n_critic = {"wgan-gp": 5, "hinge": 2, "r3gan": 1}[loss]
    assert summary["steps"] == 400 // (16 * n_critic) == len(recs)
    for r in recs:
        for k in ("d_loss", "g_loss", "w_dist", "penalty"):
            assert math.isfinite(r[k]), (k, r)
    assert (out / "samples" / "epoch-001.png").exists() and (out / "samples" / "final.png").exists()
    h = export.read_header(out / "model.safetensors")
    assert h.kind == "gan" and h.config["loss"] == loss
    if select:
        assert summary["sampling"] in ("ema", "raw") and math.isfinite(summary["val_fid_raw"])
        assert h.provenance["sampling"] == summary["sampling"]
        assert bool(export.load(out / "model.safetensors").sample_from_ema) == (summary["sampling"] == "ema")


def test_export_load_sample_same_seed_identical_and_eval(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "gan", "--subset", "160", "--steps", "2", "--out", str(out), "--conditional", *TINY]) == 0
    model = out / "model.safetensors"
    a, b, c = (tmp_path / f"{k}.npy" for k in "abc")
    assert main(["sample", str(model), "-n", "12", "--seed", "7", "-o", str(a)]) == 0
    assert main(["sample", str(model), "-n", "12", "--seed", "7", "-o", str(b)]) == 0
    assert main(["sample", str(model), "-n", "12", "--seed", "8", "-o", str(c)]) == 0
    x, y, z = np.load(a), np.load(b), np.load(c)
    assert x.shape == (12, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(x, y) and not np.array_equal(x, z)
    # the CLI samples what the engine samples (its noise, its backend), and the engine what the model in memory
    # would from the same noise (the engine's numpy PCG64 draw; exact fp32)
    np.testing.assert_array_equal(load(model).sample(12, seed=7), x)
    m = export.load(model)
    z = torch.from_numpy(noise(7, 12, m.config.latent))
    with torch.no_grad():
        mem = (m.ema if bool(m.sample_from_ema) else m.generator).eval()(z, torch.arange(12) % 10)  # (12, 1, 28, 28)
    np.testing.assert_allclose(load(model, backend="exact").sample(12, seed=7), mem.numpy()[:, 0], atol=1e-6)
    assert main(["sample", str(model), "-n", "3", "--labels", "1,2,3", "-o", str(tmp_path / "l.png")]) == 0
    capsys.readouterr()
    assert main(["eval", str(model), "--fid-samples", "300", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fid_samples"] == 300 and res["fid"] > 0
    assert main(["eval", str(model), "--fid-samples", "1"]) == 2  # bad input: one line, exit 2
    # past one sample request's limit (1024): the FID's samples are still the engine's sample(n, seed)
    from genloom.cli.eval import engine_samples
    from genloom.core.requests import DEFAULT_LIMITS

    eng = load(model)
    big = engine_samples(eng, DEFAULT_LIMITS.max_n + 100, seed=0, chunk=500)
    assert big.shape == (DEFAULT_LIMITS.max_n + 100, 28, 28)
    np.testing.assert_array_equal(big[:DEFAULT_LIMITS.max_n], eng.sample(DEFAULT_LIMITS.max_n, seed=0))
    assert main(["eval", str(model), "--fid-samples", str(DEFAULT_LIMITS.max_n + 100), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fid_samples"] == DEFAULT_LIMITS.max_n + 100


def test_resume_carries_ema_and_matches_uninterrupted(tmp_path, capsys) -> None:
    args = ["train", "gan", "--loss", "wgan-gp", "--subset", "320"]
    assert main([*args, "--steps", "4", "--out", str(tmp_path / "full"), *TINY]) == 0
    assert main([*args, "--steps", "2", "--out", str(tmp_path / "part"), *TINY]) == 0
    assert main([*args, "--steps", "4", "--out", str(tmp_path / "part"), "--resume", *TINY]) == 0
    full = export.load(tmp_path / "full" / "model.safetensors").state_dict()
    part = export.load(tmp_path / "part" / "model.safetensors").state_dict()
    assert float(part["ema_images"]) == 4 * 16  # generator images: 4 steps of batch 16
    for k in full:
        torch.testing.assert_close(part[k], full[k], rtol=1e-5, atol=1e-6, msg=k)
