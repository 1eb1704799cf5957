"""Every transport serves the flow family with the engine's images: `genloom sample` (CLI), HTTP (`genloom serve`
over loopback: sample with steps/guidance, the trajectory, the playground's model list) and AMQP (a real
RabbitMQ, `genloom worker`'s QueueWorker)."""
from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import torch

from genloom.cli import main
from genloom.engine import load
from genloom.export import save
from genloom.models.flow import FlowConfig, FlowModel
from test_serve_e2e import Proc, free_port

pytestmark = pytest.mark.timeout(240)


def tiny_flow(path: Path) -> Path:
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=16, depth=1, heads=2, num_classes=10, sample_steps=3,
                             shortcut_levels=3))  # a shortcut model: the ODE samplers and its learned steps
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.1)
    m.ema.load_state_dict(m.dit.state_dict())
    return save(m, path)


@pytest.fixture(scope="module")
def flow_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_flow(tmp_path_factory.mktemp("flow") / "flow.safetensors")


@pytest.fixture(scope="module")
def server(flow_path: Path) -> Iterator[Proc]:
    proc = Proc([f"flow={flow_path}"], free_port())
    yield proc
    proc.stop()


def test_cli_sample_writes_the_engine_images(flow_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.npy"
    assert main(["sample", str(flow_path), "-n", "3", "--seed", "4", "--steps", "2", "--guidance", "1.5",
                 "--labels", "5", "-o", str(out)]) == 0
    want = load(flow_path).sample(3, seed=4, steps=2, guidance=1.5, labels=[5])
    np.testing.assert_array_equal(np.load(out), want)
    # 2 steps: level 1 of 3 (4 steps would be the finest level, the velocity: Euler's)
    assert main(["sample", str(flow_path), "-n", "2", "--sampler", "shortcut", "--steps", "2", "-o", str(out)]) == 0
    short = load(flow_path).sample(2, seed=0, steps=2, sampler="shortcut")
    np.testing.assert_array_equal(np.load(out), short)
    assert not np.array_equal(short, load(flow_path).sample(2, seed=0, steps=2, sampler="euler"))


def test_http_sample_and_trajectory_match_the_engine(server: Proc, flow_path: Path) -> None:
    eng = load(flow_path)
    body = {"n": 2, "seed": 3, "steps": 2, "guidance": 2.0, "labels": [1, 2], "format": "npy"}
    r = httpx.post(f"{server.url}/v1/models/flow/sample", json=body, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), eng.sample(2, seed=3, steps=2, guidance=2.0,
                                                                           labels=[1, 2]), atol=1e-6)
    r = httpx.post(f"{server.url}/v1/models/flow/trajectory", json={"n": 1, "seed": 3, "steps": 4, "format": "npy"},
                   timeout=60)
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content))
    np.testing.assert_allclose(got, eng.trajectory_grid(1, seed=3, steps=4), atol=1e-6)
    assert got.shape == (2 * 5, 28, 28)
    png = httpx.post(f"{server.url}/v1/models/flow/trajectory", json={"seed": 3}, timeout=60)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    bad = httpx.post(f"{server.url}/v1/models/flow/sample", json={"n": 1, "steps": 0}, timeout=60)
    assert bad.status_code == 422 and bad.json()["field"] == "steps"
    body = {"n": 2, "seed": 3, "steps": 4, "sampler": "shortcut", "format": "npy"}
    r = httpx.post(f"{server.url}/v1/models/flow/sample", json=body, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), eng.sample(2, seed=3, steps=4, sampler="shortcut"),
                               atol=1e-6)
    r = httpx.post(f"{server.url}/v1/models/flow/trajectory",
                   json={"seed": 3, "steps": 2, "sampler": "shortcut", "format": "npy"}, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), eng.trajectory_grid(1, seed=3, steps=2,
                                                                                   sampler="shortcut"), atol=1e-6)
    for body, says in (({"steps": 3, "sampler": "shortcut"}, "power of two"), ({"sampler": "rk4"}, "one of")):
        bad = httpx.post(f"{server.url}/v1/models/flow/sample", json={"n": 1, **body}, timeout=60)
        assert bad.status_code in (400, 422) and bad.json()["field"] == "sampler", bad.text
        assert says in bad.text
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]
    assert [m["kind"] for m in models] == ["flow"]


def test_amqp_serves_flow_samples_as_the_engine_does(flow_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from queue_helpers import require_broker, unique_model

    from genloom.queue import admin
    from genloom.queue import messages as m
    from genloom.queue.client import QueueClient
    from genloom.queue.worker import QueueWorker, WorkerConfig

    url = require_broker()
    name = unique_model()
    eng = load(flow_path)

    async def run() -> list:
        worker = QueueWorker(WorkerConfig(url=url, models={name: str(flow_path)}, name=f"w-{name}"))
        await worker.start()
        try:
            async with QueueClient(url, timeout=60) as client:
                params = [{"n": 2, "seed": 1, "format": "f32", "steps": 2, "guidance": 3.0},
                          {"n": 1, "seed": 2, "format": "f32", "labels": [7]},
                          {"n": 2, "seed": 3, "format": "f32", "steps": 2, "sampler": "shortcut"}]
                return params, await client.run_many(name, params)
        finally:
            await worker.stop()
            await admin.delete_model_queues(url, name)

    params, results = asyncio.run(run())
    for p, r in zip(params, results):
        assert not isinstance(r, Exception) and r.ok, r
        kw = {k: p[k] for k in ("steps", "guidance", "labels", "sampler") if k in p}
        np.testing.assert_allclose(m.decode_images(r.result), eng.sample(p["n"], seed=p["seed"], **kw), atol=1e-6)


def test_http_serves_the_adversarial_generator_by_default_and_the_teacher_otherwise(tmp_path: Path) -> None:
    """A file with an adversarial 4-step generator: HTTP's default request (no sampler, no steps) runs the generator
    (4 shortcut steps), any other setting the teacher — the same images as a file holding the teacher alone."""
    import dataclasses

    torch.manual_seed(0)
    cfg = FlowConfig(ae_channels=2, ae_dim=8, dim=16, depth=1, heads=2, num_classes=0, shortcut_levels=3,
                     adv_steps=4, sampler="shortcut", sample_steps=4)
    m = FlowModel(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.1)
    m.ema.load_state_dict(m.dit.state_dict())
    teacher = FlowModel(dataclasses.replace(cfg, adv_steps=0))
    teacher.load_state_dict(m.state_dict(), strict=False)
    adv_path, plain_path = save(m, tmp_path / "adv.safetensors"), save(teacher, tmp_path / "plain.safetensors")
    plain = load(plain_path)
    proc = Proc([f"flowadv={adv_path}"], free_port())
    try:
        url = f"{proc.url}/v1/models/flowadv/sample"
        r = httpx.post(url, json={"n": 2, "seed": 3, "format": "npy"}, timeout=60)
        assert r.status_code == 200, r.text
        got = np.load(io.BytesIO(r.content))
        np.testing.assert_allclose(got, load(adv_path).sample(2, seed=3, sampler="shortcut", steps=4), atol=1e-6)
        assert not np.allclose(got, plain.sample(2, seed=3, sampler="shortcut", steps=4), atol=1e-3)
        for body in ({"sampler": "shortcut", "steps": 2}, {"sampler": "heun", "steps": 2}):
            r = httpx.post(url, json={"n": 2, "seed": 3, "format": "npy", **body}, timeout=60)
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.load(io.BytesIO(r.content)), plain.sample(2, seed=3, **body), atol=1e-6)
        info = httpx.get(f"{proc.url}/v1/models", timeout=30).json()["models"][0]
        assert info["kind"] == "flow", info
    finally:
        proc.stop()
