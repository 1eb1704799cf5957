"""LM serving in-process: /generate (JSON and SSE), continuous batching in the worker, cancellation."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import torch

from genloom.export import load, save
from genloom.models.lm_generate import generate
from genloom.models.transformer import LMConfig, TransformerLM
from genloom.serve.app import create_app
from genloom.serve.config import ModelSettings, ModelSpec, ServerConfig
from genloom.serve.service import Server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]  # generous: the machine is shared
VOCAB = list("\n abcdefgh")


def tiny_lm(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=len(VOCAB), block_size=16, n_layer=1, n_head=2, n_embd=16)
    return save(TransformerLM(cfg, VOCAB), path)


@pytest_asyncio.fixture
async def lm(tmp_path: Path):
    path = tiny_lm(tmp_path / "lm.safetensors")
    settings = ModelSettings(max_batch_size=3, max_queue=4, max_new_tokens=40)
    server = Server(ServerConfig(models=(ModelSpec("lm", path, settings),), access_log=False))
    await server.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(server)),
                                 base_url="http://test") as client:
        client.server, client.path = server, path  # type: ignore[attr-defined]
        yield client
    await server.stop()


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def test_generate_matches_the_reference_decoder(lm: httpx.AsyncClient) -> None:
    body = {"prompt": "ab", "max_new_tokens": 25, "temperature": 0.9, "seed": 3}
    r = await lm.post("/v1/models/lm/generate", json=body)
    assert r.status_code == 200, r.text
    model = load(lm.path)  # type: ignore[attr-defined]
    expected = generate(model, ["ab"], max_new_tokens=25, temperature=0.9, seed=3)[0]
    assert r.json()["text"] == expected and r.json()["tokens"] == 25


async def test_stream_sends_one_event_per_token_then_done(lm: httpx.AsyncClient) -> None:
    body = {"prompt": "a", "max_new_tokens": 12, "temperature": 0.0, "stream": True}
    r = await lm.post("/v1/models/lm/generate", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    tokens = [d["text"] for e, d in events if e == "token"]
    assert len(tokens) == 12 and events[-1][0] == "done" and events[-1][1]["tokens"] == 12
    greedy = (await lm.post("/v1/models/lm/generate", json={**body, "stream": False})).json()["text"]
    assert "".join(tokens) == greedy


async def test_concurrent_requests_share_the_decode_loop(lm: httpx.AsyncClient) -> None:
    # 6 requests on 3 slots: they join as rows free up, each still gets exactly its own seeded text
    bodies = [{"prompt": "ba"[: 1 + i % 2], "max_new_tokens": 8 + i, "temperature": 1.0, "seed": i} for i in range(6)]
    rs = await asyncio.gather(*(lm.post("/v1/models/lm/generate", json=b) for b in bodies))
    model = load(lm.path)  # type: ignore[attr-defined]
    for b, r in zip(bodies, rs):
        assert r.status_code == 200, r.text
        ref = generate(model, [b["prompt"]], max_new_tokens=b["max_new_tokens"], temperature=1.0, seed=b["seed"])[0]
        assert r.json()["text"] == ref
    metrics = (await lm.get("/metrics")).text
    assert 'genloom_tokens_generated_total{model="lm"} ' + f"{float(sum(8 + i for i in range(6)))}" in metrics


async def test_stop_strings_and_validation(lm: httpx.AsyncClient) -> None:
    r = await lm.post("/v1/models/lm/generate", json={"prompt": "a", "max_new_tokens": 30, "temperature": 0,
                                                       "stop": "a"})
    assert r.status_code == 200 and "a" not in r.json()["text"]
    r = await lm.post("/v1/models/lm/generate", json={"prompt": "xyz"})
    assert r.status_code == 422 and r.json()["field"] == "prompt" and "'x'" in r.json()["error"]
    r = await lm.post("/v1/models/lm/generate", json={"prompt": "a", "max_new_tokens": 41})
    assert r.status_code == 422 and r.json()["field"] == "max_new_tokens"
    r = await lm.post("/v1/models/lm/generate", json={"prompt": "a", "top_p": 0})
    assert r.status_code == 422 and r.json()["field"] == "top_p"
    r = await lm.post("/v1/models/lm/sample", json={})
    assert r.status_code == 404


async def test_overload_is_503_and_a_closed_stream_frees_its_slot(lm: httpx.AsyncClient) -> None:
    server = lm.server  # type: ignore[attr-defined]
    sup = server.services["lm"].supervisor
    body = {"prompt": "a", "max_new_tokens": 40, "stream": True}
    async with lm.stream("POST", "/v1/models/lm/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data"):
                break  # read one token, then hang up
    for _ in range(100):
        if sup.open_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert sup.open_streams == 0
    # slots (3) + queue (4) = 7 generations at most; the 8th and later are refused at once
    many = [lm.post("/v1/models/lm/generate", json={"prompt": "a", "max_new_tokens": 40}) for _ in range(10)]
    codes = sorted(r.status_code for r in await asyncio.gather(*many))
    assert codes.count(200) >= 7 and set(codes) <= {200, 503}


async def test_worker_killed_mid_stream_ends_the_stream_with_an_error_not_a_hang(tmp_path: Path) -> None:
    import os
    import signal

    path = tiny_lm(tmp_path / "lm.safetensors")
    server = Server(ServerConfig(models=(ModelSpec("lm", path, ModelSettings(max_new_tokens=100_000)),),
                                 access_log=False))
    await server.start()
    sup = server.services["lm"].supervisor
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(server)),
                                     base_url="http://test", timeout=30) as c:
            body = {"prompt": "a", "max_new_tokens": 100_000, "stream": True}
            task = asyncio.create_task(c.post("/v1/models/lm/generate", json=body))
            tokens = lambda: server.metrics.registry.get_sample_value("genloom_tokens_generated_total",
                                                                      {"model": "lm"}) or 0
            while tokens() < 5:  # tokens are flowing
                await asyncio.sleep(0.01)
            os.kill(sup.worker.pid, signal.SIGKILL)
            r = await asyncio.wait_for(task, 20)
            events = sse_events(r.text)
            assert events[-1][0] == "error" and events[-1][1]["status"] == 503
            assert any(e == "token" for e, _ in events)
            r = await c.post("/v1/models/lm/generate", json={"prompt": "a", "max_new_tokens": 5})
            assert r.status_code == 200 and r.json()["tokens"] == 5  # the restarted worker serves
            assert sup.restarts == 1
    finally:
        await server.stop()


async def test_deadline_bounds_a_plain_generation_but_only_the_first_token_of_a_stream(tmp_path: Path) -> None:
    path = tiny_lm(tmp_path / "lm.safetensors")
    settings = ModelSettings(max_new_tokens=100_000, timeout_s=5)
    server = Server(ServerConfig(models=(ModelSpec("lm", path, settings),), access_log=False))
    await server.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(server)),
                                     base_url="http://test", timeout=30) as c:
            body = {"prompt": "a", "max_new_tokens": 3000}
            short = {"X-Request-Timeout": "0.2"}  # 3000 decode steps take well over 0.2 s
            r = await c.post("/v1/models/lm/generate", json=body, headers=short)
            assert r.status_code == 504 and "deadline" in r.json()["error"]
            r = await c.post("/v1/models/lm/generate", json={**body, "stream": True}, headers=short)
            events = sse_events(r.text)
            assert events[-1] == ("done", events[-1][1]) and events[-1][1]["tokens"] == 3000
    finally:
        await server.stop()
