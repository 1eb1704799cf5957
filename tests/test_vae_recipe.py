"""`genloom train vae` on a small real subset: a time-budget run anneals the LR by the end and exports its final
steps; the quality preset's architecture trains, exports, loads (torch engine and the numpy path) and samples
seed-identically."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genloom import export
from genloom.cli import main
from genloom.engine import lite, load
from genloom.recipes import vae as vae_recipe
from genloom.training.metrics import read_metrics

pytestmark = pytest.mark.timeout(240)
SMALL = ["--subset", "640", "--threads", "1", "--no-progress", "--log-every", "1", "--val-batches", "1"]


@pytest.fixture(scope="module", autouse=True)
def _fmnist(fmnist):
    """Every test here trains on the real Fashion-MNIST (conftest's fixture skips where it is absent)."""


def test_time_budget_run_anneals_and_scores_its_last_steps(tmp_path, capsys) -> None:
    out = tmp_path / "t"
    # epochs long against their end-of-epoch work, so the decay window (the last 25 % of T) holds training steps
    assert main(["train", "vae", "--time-budget", "4", "--out", str(out), *SMALL, "--subset", "12800",
                 "--checkpoint-every", "1000", "--log-every", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recs = read_metrics(out / "metrics.jsonl")
    lrs = [r["lr"] for r in recs if r["type"] == "train"]
    peak = vae_recipe.DEFAULTS["lr"]
    assert lrs[0] == pytest.approx(peak) and lrs[-1] < 0.9 * peak  # wsd by elapsed time: decaying at the end
    vals = [r for r in recs if r["type"] == "val"]
    assert vals[-1]["step"] == summary["steps"]  # the final (annealed) weights were scored, so they can win
    assert export.read_header(out / "model.safetensors").provenance["steps"] == summary["steps"]


def test_quality_preset_trains_exports_loads_and_samples_seed_identically(tmp_path, capsys) -> None:
    name = vae_recipe.QUALITY_PRESET
    out = tmp_path / name
    assert main(["train", "vae", "--preset", name, "--steps", "3", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    h = export.read_header(out / "model.safetensors")
    p = vae_recipe.PRESETS[name]
    assert h.kind == "vae" and h.config["latent"] == p["latent"]
    assert h.config["enc_hidden"] == [int(v) for v in p["enc_hidden"].split(",")]
    assert h.config["dec_hidden"] == [int(v) for v in p["dec_hidden"].split(",")]
    a, b, c = (tmp_path / f"{k}.npy" for k in "abc")
    for path, seed in ((a, 7), (b, 7), (c, 8)):
        assert main(["sample", str(out / "model.safetensors"), "-n", "6", "--seed", str(seed), "-o", str(path)]) == 0
    x, y, z = np.load(a), np.load(b), np.load(c)
    assert x.shape == (6, 28, 28) and np.array_equal(x, y) and not np.array_equal(x, z)
    eng, ref = lite.load(out / "model.safetensors"), load(out / "model.safetensors", backend="eager")
    np.testing.assert_allclose(eng.sample(5, seed=3), ref.sample(5, seed=3), atol=1e-5)
    np.testing.assert_allclose(eng.encode(x), ref.encode(x), atol=1e-4)
    capsys.readouterr()
    assert main(["eval", str(out / "model.safetensors"), "--iwae-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert np.isfinite(res["nelbo"]) and np.isfinite(res["iwae_nll"])


def test_pixel_preset_trains_samples_and_scores_with_its_head(tmp_path, capsys) -> None:
    """The autoregressive-head preset end to end: train, export, sample seed-identically through the CLI and the
    engine (eager: the only backend that runs the head), a clear error from the numpy path and a graph backend,
    and an IWAE bound at or below the ELBO."""
    from genloom.errors import GenloomError

    name = vae_recipe.PIXEL_PRESET
    out = tmp_path / name
    assert main(["train", "vae", "--preset", name, "--steps", "3", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    f = out / "model.safetensors"
    h = export.read_header(f)
    assert h.kind == "vae" and h.config["ar_kernel"] == vae_recipe.PRESETS[name]["ar_kernel"] == 3
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for path in (a, b):
        assert main(["sample", str(f), "-n", "4", "--seed", "5", "-o", str(path)]) == 0
    x = np.load(a)
    assert x.shape == (4, 28, 28) and np.array_equal(x, np.load(b))
    eng = load(f)  # backend auto → eager for the head
    assert eng.backend == "eager"
    np.testing.assert_allclose(eng.sample(4, seed=5), x, atol=1e-5)
    np.testing.assert_allclose(eng.reconstruct(x).shape, (4, 28, 28))
    with pytest.raises(GenloomError, match="pixel head"):
        lite.load(f)
    with pytest.raises(GenloomError, match="eager"):
        load(f, backend="onnx")
    capsys.readouterr()
    assert main(["eval", str(f), "--iwae-k", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert np.isfinite(res["nelbo"]) and res["iwae_nll"] <= res["nelbo"] + 0.5
