"""OpenAI-compatible endpoints in-process (httpx ASGITransport): request validation, the chat template, n and
prompt lists, overload as 429 or 503, the running/waiting gauges. The real `openai` client over loopback is
tests/e2e/test_openai_client.py."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from genloom.export import load
from genloom.models.lm_generate import generate
from genloom.serve.app import create_app
from genloom.serve.config import ModelSettings, ModelSpec, ServerConfig
from genloom.serve.openai_schema import OpenAIError, parse_chat, parse_completion, render_chat
from genloom.serve.service import Server
from test_serve_lm import tiny_lm

pytestmark = pytest.mark.timeout(120)
SETTINGS = ModelSettings(max_new_tokens=50)


def test_chat_template() -> None:
    msgs = [{"role": "system", "content": "Verona."}, {"role": "user", "name": "ROMEO", "content": "Hark"},
            {"role": "assistant", "content": [{"type": "text", "text": "Peace"}, {"type": "text", "text": "!"}]}]
    assert render_chat(msgs) == "Verona.\n\nROMEO:\nHark\n\nASSISTANT:\nPeace!\n\nASSISTANT:\n"
    with pytest.raises(OpenAIError, match="role"):
        render_chat([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a"}, "model"),
    ({"model": "lm", "prompt": "a", "frobnicate": 1}, "frobnicate"),
    ({"model": "lm", "prompt": "a", "frequency_penalty": 1.0}, "frequency_penalty"),
    ({"model": "lm", "prompt": "a", "max_tokens": 51}, "max_tokens"),
    ({"model": "lm", "prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ({"model": "lm", "prompt": ["a"] * 4, "n": 5}, "n"),
    ({"model": "lm", "prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "lm", "prompt": [1, 2]}, "prompt"),
    ({"model": "lm", "prompt": "a", "seed": "x"}, "seed"),
])
def test_completion_params_are_checked_and_named(body: dict, param: str) -> None:
    with pytest.raises(OpenAIError) as e:
        parse_completion(body, SETTINGS)
    assert e.value.status == 400 and e.value.param == param


def test_neutral_values_of_unsupported_fields_pass_and_top_p_zero_is_greedy() -> None:
    r = parse_completion({"model": "lm", "prompt": "a", "presence_penalty": 0, "logprobs": None, "user": "u",
                          "top_p": 0, "stop": "\n", "seed": -1}, SETTINGS)
    assert r.sampling["temperature"] == 0 and r.sampling["stop"] == ["\n"] and r.sampling["seed"] == 2**63 - 1
    assert r.sampling["max_new_tokens"] == 16  # OpenAI's completions default
    chat = parse_chat({"model": "lm", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7,
                       "stop": "x"}, SETTINGS)
    assert chat.sampling["max_new_tokens"] == 7 and chat.sampling["stop"] == ["x", "\n\n"]


@pytest_asyncio.fixture
async def api(tmp_path: Path, request: pytest.FixtureRequest):
    path = tiny_lm(tmp_path / "lm.safetensors")
    status, slots, queue = getattr(request, "param", (503, 1, 1))
    settings = ModelSettings(max_batch_size=slots, max_queue=queue, max_new_tokens=100_000)
    server = Server(ServerConfig(models=(ModelSpec("lm", path, settings),), access_log=False,
                                 overload_status=status))
    await server.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(server)),
                                 base_url="http://test", timeout=60) as client:
        client.path = path  # type: ignore[attr-defined]
        yield client
    await server.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("api", [(503, 2, 4)], indirect=True)
async def test_prompt_lists_and_n_give_one_choice_each_with_consecutive_seeds(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/completions", json={"model": "lm", "prompt": ["ab", "c"], "n": 2, "max_tokens": 6,
                                                 "temperature": 1.0, "seed": 9, "echo": True})
    assert r.status_code == 200, r.text
    body = r.json()
    model = load(api.path)  # type: ignore[attr-defined]
    expected = [p + generate(model, [p], max_new_tokens=6, temperature=1.0, seed=9 + k)[0]
                for k, p in enumerate(["ab", "ab", "c", "c"])]
    assert [c["text"] for c in body["choices"]] == expected and [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 24, "total_tokens": 27}
    r = await api.post("/v1/completions", json={"model": "lm", "prompt": "a", "n": 7})  # can never fit: 2 + 4
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


@pytest.mark.asyncio
async def test_bad_json_and_unknown_model_in_openai_shape(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await api.post("/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "a"}]})
    err = r.json()["error"]
    assert r.status_code == 404 and err["code"] == "model_not_found" and err["param"] == "model"
    assert set(err) == {"message", "type", "param", "code"} and "X-Request-Id" in r.headers


async def _overload(api: httpx.AsyncClient, path: str, body: dict) -> httpx.Response:
    """Two long generations take the one slot and the one waiting place; the third request is refused."""
    long = {"model": "lm", "prompt": "a", "max_tokens": 400}
    held = [asyncio.ensure_future(api.post("/v1/completions", json=long)) for _ in range(2)]
    try:
        for _ in range(500):
            metrics = (await api.get("/metrics")).text
            running = re.search(r'^genloom_num_requests_running{model="lm"} (\S+)$', metrics, re.M)
            waiting = re.search(r'^genloom_num_requests_waiting{model="lm"} (\S+)$', metrics, re.M)
            if running and waiting and (float(running.group(1)), float(waiting.group(1))) == (1.0, 1.0):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the gauges never showed 1 running and 1 waiting")
        return await api.post(path, json=body)
    finally:
        codes = [r.status_code for r in await asyncio.gather(*held)]
        assert codes[0] == 200 and codes[1] in (200, 504), codes  # the second may outwait its deadline


@pytest.mark.asyncio
@pytest.mark.parametrize("api", [(429, 1, 1)], indirect=True)
async def test_overload_is_429_with_retry_after_when_the_operator_says_so(api: httpx.AsyncClient) -> None:
    r = await _overload(api, "/v1/completions", {"model": "lm", "prompt": "a", "max_tokens": 2})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    r = await _overload(api, "/v1/models/lm/generate", {"prompt": "a", "max_new_tokens": 2})  # the native API too
    assert r.status_code == 429 and "Retry-After" in r.headers


@pytest.mark.asyncio
async def test_overload_is_503_by_default(api: httpx.AsyncClient) -> None:
    r = await _overload(api, "/v1/completions", {"model": "lm", "prompt": "ab"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error" and "Retry-After" in r.headers


@pytest.mark.asyncio
async def test_streamed_chunks_are_openai_chunks(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/completions", json={"model": "lm", "prompt": "a", "max_tokens": 5, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    events = [e.removeprefix("data: ") for e in r.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[0]["usage"] is None
    await asyncio.sleep(0)
