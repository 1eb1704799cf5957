"""OpenTelemetry spans (optional extra): queue wait, batch and inference spans for a served request."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from genloom.export import save  # noqa: E402
from genloom.models.vae import VAE, VAEConfig  # noqa: E402
from genloom.serve.app import create_app  # noqa: E402
from genloom.serve.config import ModelSpec, ServerConfig  # noqa: E402
from genloom.serve.service import Server  # noqa: E402


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_spans_for_queue_wait_batch_and_inference(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = otel_sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    torch.manual_seed(0)
    path = save(VAE(VAEConfig(enc_hidden=(8,), dec_hidden=(8,), latent=2)), tmp_path / "m.safetensors")
    server = Server(ServerConfig(models=(ModelSpec("m", path),), access_log=False))
    await server.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(server)),
                                     base_url="http://t") as c:
            r = await c.post("/v1/models/m/sample", json={"n": 2, "format": "npy"}, headers={"X-Request-Id": "r1"})
            assert r.status_code == 200
    finally:
        await server.stop()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"genloom.queue_wait", "genloom.batch", "genloom.inference"} <= set(spans)
    assert spans["genloom.queue_wait"].attributes["genloom.request_id"] == "r1"
    assert spans["genloom.batch"].attributes["genloom.size"] == 2
    for s in spans.values():
        assert s.end_time >= s.start_time
    # inference happens inside the batch
    assert spans["genloom.batch"].start_time <= spans["genloom.inference"].start_time
