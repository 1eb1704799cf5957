"""The flow family through the engine and the one batch runner: seeds, steps/guidance, trajectory, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genloom import export
from genloom.core.requests import RequestError, check
from genloom.core.runner import run_batch
from genloom.engine import load
from genloom.models.flow import FlowConfig, FlowModel


@pytest.fixture(scope="module")
def flow_file(tmp_path_factory):
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=16, depth=1, heads=2, num_classes=10, sample_steps=3))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.1)
    m.ema.load_state_dict(m.dit.state_dict())
    return export.save(m, tmp_path_factory.mktemp("flow") / "model.safetensors")


def test_engine_samples_by_seed_with_steps_and_guidance(flow_file):
    eng = load(flow_file)
    assert eng.kind == "flow" and eng.describe()["steps"] == 3
    assert eng.describe()["guidance_interval"] == [0.0, 0.5] and eng.describe()["distill_guidance"] == 0.0
    assert eng.describe()["shortcut_levels"] == 0
    a = eng.sample(4, seed=3)
    assert a.shape == (4, 28, 28) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, eng.sample(4, seed=3))
    assert not np.array_equal(a, eng.sample(4, seed=4))
    assert not np.array_equal(a, eng.sample(4, seed=3, steps=1))
    assert not np.array_equal(a, eng.sample(4, seed=3, guidance=3.0))
    assert not np.array_equal(a, eng.sample(4, seed=3, labels=[7]))
    # the engine's images are the model's, from the engine's noise: exactly with backend="exact", the same 8-bit
    # picture within one grey level with the decoder on the backend auto chose
    model = export.load(flow_file)
    z = torch.from_numpy(np.random.default_rng(3).standard_normal((4, 98), dtype=np.float32)).reshape(4, 2, 7, 7)
    with torch.no_grad():
        want = model.decode(model.sample_latents(z, labels=torch.arange(4) % 10)).numpy().reshape(4, 28, 28)
    assert np.allclose(load(flow_file, backend="exact").sample(4, seed=3), want, atol=1e-6)
    assert np.abs(np.rint(a * 255) - np.rint(want * 255)).max() <= 1, eng.backend


@pytest.mark.parametrize("backend", ["onnx", "bf16"])
def test_the_decoder_runs_on_the_image_backends(flow_file, backend):
    """The DiT stays fp32 eager; the decoder is a feed-forward image net like the GAN generator, so every image
    backend runs it (and ``auto`` chooses among them): the pictures stay those of fp32 within a grey level."""
    exact = load(flow_file, backend="exact")
    eng = load(flow_file, backend=backend)
    assert eng.backend == backend and exact.backend == "eager"
    z = np.random.default_rng(0).standard_normal((16, 98), dtype=np.float32)
    want, got = exact.decode_latents(z), eng.decode_latents(z)
    assert got.shape == (16, 28, 28) and 0 <= got.min() and got.max() <= 1
    assert np.abs(np.rint(got * 255) - np.rint(want * 255)).max() <= 1
    assert np.abs(np.rint(eng.sample(3, seed=2) * 255) - np.rint(exact.sample(3, seed=2) * 255)).max() <= 1


def test_auto_measures_the_decoder_backends_and_reports_them(flow_file, tmp_path, monkeypatch):
    monkeypatch.setenv("GENLOOM_ENGINE_CACHE", str(tmp_path))
    eng = load(flow_file)
    assert eng.auto is not None and eng.auto["backend"] == eng.backend and not eng.auto["cached"]
    assert set(eng.auto["grey_levels"]) | set(eng.auto["skipped"]) >= {"mixed", "bf16", "int8", "onnx"}
    assert "mixed" in eng.auto["skipped"]  # an MLP-only backend: the conv decoder is skipped, not an error
    again = load(flow_file)
    assert again.backend == eng.backend and again.auto["cached"]


def test_engine_trajectory_ends_at_the_sample(flow_file):
    eng = load(flow_file, backend="exact")  # one decoder batch for the whole path vs one for the sample
    tr = eng.trajectory(2, seed=5, steps=4, labels=[1, 2])
    assert tr["t"][0] == 1.0 and len(tr["t"]) == 4
    assert tr["states"].shape == tr["predictions"].shape == (4, 2, 28, 28)
    assert tr["network_evaluations"] == 8  # Heun: two per step
    assert np.allclose(tr["images"], eng.sample(2, seed=5, steps=4, labels=[1, 2]), atol=1e-6)


@pytest.mark.parametrize("kw,field", [({"steps": 0}, "steps"), ({"steps": 1000}, "steps"),
                                      ({"guidance": -1.0}, "guidance"), ({"guidance": "a"}, "guidance"),
                                      ({"labels": [10]}, "labels"), ({"n": 0}, "n")])
def test_engine_rejects_bad_input_naming_the_field(flow_file, kw, field):
    eng = load(flow_file)
    args = {"n": 2, **kw}
    with pytest.raises(RequestError, match=f"^{field}: "):
        eng.sample(args.pop("n"), **args)


def test_steps_and_guidance_are_refused_for_other_kinds():
    from genloom.core.requests import ModelInfo

    with pytest.raises(RequestError, match="^steps: only flow models"):
        check("sample", {"n": 1, "steps": 4}, model=ModelInfo(kind="gan"))
    with pytest.raises(RequestError, match="^op: trajectory needs a model of kind flow"):
        check("trajectory", {"n": 1}, model=ModelInfo(kind="vae"))


def test_run_batch_serves_flow_requests_as_the_engine_does(flow_file):
    eng = load(flow_file)
    reqs = [{"op": "sample", **check("sample", {"n": 2, "seed": 1, "steps": 2, "guidance": 2.0})},
            {"op": "sample", **check("sample", {"n": 3, "seed": 2, "labels": 4})},
            {"op": "trajectory", **check("trajectory", {"n": 1, "seed": 9, "steps": 2})}]
    out = run_batch(eng, reqs)
    assert np.array_equal(out[0], eng.sample(2, seed=1, steps=2, guidance=2.0))
    assert np.array_equal(out[1], eng.sample(3, seed=2, labels=[4, 4, 4]))
    grid = eng.trajectory_grid(1, seed=9, steps=2)  # rows: states then predictions, each ending in the sample
    assert np.array_equal(out[2], grid) and grid.shape == (6, 28, 28)
    assert np.array_equal(grid[2], eng.trajectory(1, seed=9, steps=2)["images"][0])


def test_python_api_sample_takes_steps_and_guidance(flow_file):
    import genloom

    got = genloom.sample(flow_file, 2, seed=1, steps=2, guidance=2.0)
    assert np.array_equal(got, load(flow_file).sample(2, seed=1, steps=2, guidance=2.0))
    got = genloom.sample(flow_file, 2, seed=1, steps=2, sampler="euler")
    assert np.array_equal(got, load(flow_file).sample(2, seed=1, steps=2, sampler="euler"))
    assert not np.array_equal(got, load(flow_file).sample(2, seed=1, steps=2, sampler="heun"))


def test_the_sampler_field_is_checked_against_the_model(flow_file):
    """The edge's sampler names are the model's; a shortcut request to a plain flow model is refused naming the
    fix, before any work."""
    from genloom.core.requests import FLOW_SAMPLERS
    from genloom.models.flow import SAMPLERS

    assert FLOW_SAMPLERS == SAMPLERS
    eng = load(flow_file)
    with pytest.raises(RequestError, match="^sampler: .*needs a shortcut model"):
        eng.sample(1, steps=2, sampler="shortcut")
    with pytest.raises(RequestError, match="^sampler: must be one of"):
        check("sample", {"n": 1, "sampler": "rk4"})
    assert eng.sample(1, seed=0, sampler="euler", steps=2).shape == (1, 28, 28)
