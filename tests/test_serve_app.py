"""The HTTP API in-process (httpx ASGITransport) against real worker processes serving tiny VAE files."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio
import torch

from genloom.engine import load as load_engine
from genloom.export import save
from genloom.models.vae import VAE, VAEConfig
from genloom.serve.app import create_app
from genloom.serve.config import ModelSettings, ModelSpec, ServerConfig
from genloom.serve.service import Server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]  # generous: the machine is shared
TOKEN = "test-token"


def tiny_vae(path: Path, *, latent: int = 4, num_classes: int = 0, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save(VAE(VAEConfig(enc_hidden=(16,), dec_hidden=(16,), latent=latent, num_classes=num_classes)), path)


@pytest_asyncio.fixture
async def api(tmp_path: Path):
    paths = {"tiny": tiny_vae(tmp_path / "tiny.safetensors"),
             "cond": tiny_vae(tmp_path / "cond.safetensors", num_classes=3, seed=1)}
    settings = ModelSettings(max_batch_size=16, max_wait_ms=5, max_queue=64, max_n=32)
    cfg = ServerConfig(models=tuple(ModelSpec(n, p, settings) for n, p in paths.items()), max_body_bytes=64_000,
                       admin_token=TOKEN, access_log=False)
    server = Server(cfg)
    await server.start()
    transport = httpx.ASGITransport(app=create_app(server))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        client.server, client.paths = server, paths  # type: ignore[attr-defined]
        yield client
    await server.stop()


def npy(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-npy"
    return np.load(io.BytesIO(resp.content))


async def test_models_lists_name_kind_config(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/models")
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"tiny", "cond"}
    assert models["tiny"]["kind"] == "vae" and models["tiny"]["config"]["latent"] == 4
    assert models["cond"]["config"]["num_classes"] == 3 and models["tiny"]["ready"] is True


async def test_sample_matches_the_engine_and_is_seeded(api: httpx.AsyncClient) -> None:
    a = npy(await api.post("/v1/models/tiny/sample", json={"n": 5, "seed": 7, "format": "npy"}))
    b = npy(await api.post("/v1/models/tiny/sample", json={"n": 5, "seed": 7, "format": "npy"}))
    c = npy(await api.post("/v1/models/tiny/sample", json={"n": 5, "seed": 8, "format": "npy"}))
    assert a.shape == (5, 28, 28) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    expected = load_engine(api.paths["tiny"]).sample(5, seed=7)  # type: ignore[attr-defined]
    np.testing.assert_allclose(a, expected, atol=1e-6)


async def test_concurrent_requests_are_batched_and_each_gets_its_own_images(api: httpx.AsyncClient) -> None:
    reqs = [api.post("/v1/models/tiny/sample", json={"n": 1, "seed": i, "format": "npy"}) for i in range(24)]
    outs = [npy(r) for r in await asyncio.gather(*reqs)]
    eng = load_engine(api.paths["tiny"])  # type: ignore[attr-defined]
    for i in (0, 11, 23):
        np.testing.assert_allclose(outs[i], eng.sample(1, seed=i), atol=1e-6)
    metrics = (await api.get("/metrics")).text
    count = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith('genloom_batch_size_count{model="tiny"}')))
    assert count < 24  # fewer forward passes than requests


async def test_formats_png_and_json(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/models/tiny/sample", json={"n": 4})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    j = (await api.post("/v1/models/tiny/sample", json={"n": 2, "format": "json", "seed": 1})).json()
    assert j["shape"] == [2, 28, 28] and np.asarray(j["images"]).shape == (2, 28, 28)


async def test_conditional_labels(api: httpx.AsyncClient) -> None:
    x = npy(await api.post("/v1/models/cond/sample", json={"n": 3, "seed": 0, "labels": [2, 1, 0], "format": "npy"}))
    eng = load_engine(api.paths["cond"])  # type: ignore[attr-defined]
    np.testing.assert_allclose(x, eng.sample(3, seed=0, labels=[2, 1, 0]), atol=1e-6)
    r = await api.post("/v1/models/cond/sample", json={"n": 2, "labels": [5, 0]})
    assert r.status_code == 422 and r.json()["field"] == "labels" and "out of range" in r.json()["error"]


@pytest.mark.parametrize("body,field,words", [
    ({"n": 0}, "n", "between 1 and 32"),
    ({"n": 33}, "n", "between 1 and 32"),
    ({"n": "3"}, "n", "integer"),
    ({"n": True}, "n", "integer"),
    ({"seed": -1}, "seed", "between"),
    ({"format": "gif"}, "format", "png, npy, json"),
    ({"labels": [1]}, "labels", "not conditional"),
    ({"nn": 3}, "nn", "unknown field"),
])
async def test_invalid_input_is_422_naming_the_field(api: httpx.AsyncClient, body: dict, field: str, words: str
                                                     ) -> None:
    r = await api.post("/v1/models/tiny/sample", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and words in r.json()["error"]


async def test_bad_json_unknown_model_wrong_endpoint_and_body_limit(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/models/tiny/sample", content=b"{not json")
    assert r.status_code == 422 and r.json()["field"] == "body"
    r = await api.post("/v1/models/nope/sample", json={})
    assert r.status_code == 404 and "tiny" in r.json()["error"]
    r = await api.post("/v1/models/tiny/generate", json={"prompt": "a"})
    assert r.status_code == 404 and "lm" in r.json()["error"]
    r = await api.post("/v1/models/tiny/reconstruct", content=b"[" + b"0," * 40_000 + b"0]")
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = await api.post("/v1/models/tiny/sample", json={}, headers={"X-Request-Timeout": "soon"})
    assert r.status_code == 422 and r.json()["field"] == "X-Request-Timeout"


async def test_reconstruct_and_interpolate(api: httpx.AsyncClient) -> None:
    x = np.random.default_rng(0).random((3, 28, 28)).round(3)
    r = npy(await api.post("/v1/models/tiny/reconstruct", json={"images": x.tolist(), "format": "npy"}))
    np.testing.assert_allclose(r, load_engine(api.paths["tiny"]).reconstruct(x), atol=1e-5)  # type: ignore
    r = await api.post("/v1/models/tiny/reconstruct", json={"images": (x * 2).tolist()})
    assert r.status_code == 422 and r.json()["field"] == "images" and "[0, 1]" in r.json()["error"]
    path = npy(await api.post("/v1/models/tiny/interpolate", json={"a": 1, "b": 2, "steps": 5, "format": "npy"}))
    assert path.shape == (5, 28, 28)
    np.testing.assert_allclose(path[0], load_engine(api.paths["tiny"]).sample(1, seed=1)[0], atol=1e-5)  # type: ignore
    r = await api.post("/v1/models/tiny/interpolate", json={"a": [0.0, 1.0], "b": 2})
    assert r.status_code == 422 and "shape (n, 4)" in r.json()["error"]


async def test_health_ready_metrics_docs_request_id(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"]["tiny"]["pid"] > 0
    r = await api.post("/v1/models/tiny/sample", json={"n": 1}, headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    ids = {(await api.get("/healthz")).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(ids)  # a fresh, unique id when the client sends none
    text = (await api.get("/metrics")).text
    for name in ("genloom_requests_total", "genloom_request_latency_seconds_bucket", "genloom_queue_depth",
                 "genloom_batch_size_bucket", "genloom_worker_restarts_total", "genloom_rejected_requests_total",
                 "genloom_tokens_generated_total"):
        assert name in text
    assert 'genloom_requests_total{endpoint="sample",model="tiny",status="200"}' in text
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/models/{name}/sample" in spec["paths"]
    assert "max_new_tokens" in (await api.get("/docs")).text


async def test_kill_9_worker_retries_and_recovers(api: httpx.AsyncClient) -> None:
    pid = (await api.get("/readyz")).json()["models"]["tiny"]["pid"]
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    rs = await asyncio.gather(*(api.post("/v1/models/tiny/sample", json={"n": 1, "seed": i, "format": "npy"})
                                for i in range(10)))
    assert [r.status_code for r in rs] == [200] * 10  # queued and in-flight work retried on the new worker
    while (await api.get("/readyz")).status_code != 200:
        assert time.monotonic() - t0 < 3.0
        await asyncio.sleep(0.05)
    st = (await api.get("/readyz")).json()["models"]["tiny"]
    assert st["pid"] != pid and st["restarts"] == 1
    assert 'genloom_worker_restarts_total{model="tiny"} 1.0' in (await api.get("/metrics")).text


async def test_admin_reload_swaps_the_model_and_refuses_bad_files(api: httpx.AsyncClient, tmp_path: Path) -> None:
    url = "/admin/models/tiny/reload"
    assert (await api.post(url)).status_code == 401
    assert (await api.post(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    new = tiny_vae(tmp_path / "new.safetensors", latent=6, seed=3)
    r = await api.post(url, json={"path": str(new)}, headers=auth)
    assert r.status_code == 200, r.text
    models = {m["name"]: m for m in (await api.get("/v1/models")).json()["models"]}
    assert models["tiny"]["config"]["latent"] == 6
    x = npy(await api.post("/v1/models/tiny/sample", json={"n": 2, "seed": 0, "format": "npy"}))
    np.testing.assert_allclose(x, load_engine(new).sample(2, seed=0), atol=1e-6)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    r = await api.post(url, json={"path": str(bad)}, headers=auth)
    assert r.status_code == 422 and "old model keeps serving" in r.json()["error"]
    assert (await api.post("/v1/models/tiny/sample", json={"n": 1})).status_code == 200
    assert (await api.get("/readyz")).status_code == 200


@pytest.mark.parametrize("body", [b"", b"  ", b"[1, 2]", b"3", b"null"])
async def test_an_empty_or_non_object_body_is_422(api: httpx.AsyncClient, body: bytes) -> None:
    r = await api.post("/v1/models/tiny/sample", content=body)
    assert r.status_code == 422 and r.json()["field"] == "body", r.text


async def test_a_bug_is_500_with_the_traceback_logged_not_422(api: httpx.AsyncClient,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    svc = api.server.services["tiny"]  # type: ignore[attr-defined]

    def broken(*a: object, **k: object) -> None:
        raise ValueError("an internal bug, not the caller's input")

    monkeypatch.setattr(svc.batcher, "submit", broken)
    with caplog.at_level("ERROR", logger="genloom.serve"):
        r = await api.post("/v1/models/tiny/sample", json={"n": 1}, headers={"X-Request-Id": "bug-1"})
    assert r.status_code == 500 and "bug-1" in r.json()["error"] and "internal bug" not in r.json()["error"]
    assert any(rec.exc_info and "internal bug" in str(rec.exc_info[1]) for rec in caplog.records)


async def test_a_vae_with_a_pixel_head_is_served_like_any_vae(tmp_path: Path) -> None:
    """The autoregressive-head VAE (decoded pixel by pixel) through the server: the engine's images, batched."""
    torch.manual_seed(0)
    path = save(VAE(VAEConfig(enc_hidden=(16,), dec_hidden=(16,), latent=4, ar_kernel=3)), tmp_path / "px.safetensors")
    cfg = ServerConfig(models=(ModelSpec("px", path, ModelSettings(max_batch_size=8, max_wait_ms=20, max_n=8)),),
                       access_log=False)
    server = Server(cfg)
    await server.start()
    try:
        transport = httpx.ASGITransport(app=create_app(server))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            got = await asyncio.gather(*[client.post("/v1/models/px/sample", json={"n": 2, "seed": s, "format": "npy"})
                                         for s in range(4)])
            eng = load_engine(path)
            for s, r in enumerate(got):
                np.testing.assert_allclose(npy(r), eng.sample(2, seed=s), atol=1e-5)
            rec = await client.post("/v1/models/px/reconstruct", json={"images": npy(got[0]).tolist()})
            assert rec.status_code == 200, rec.text
    finally:
        await server.stop()
