"""The real `openai` Python client against `genloom serve` over loopback: completions and chat, streaming and
not, errors in OpenAI's shape, and a client that disconnects mid-stream (its decode slot is freed at once)."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import torch

from genloom.export import load, save
from genloom.models.lm_generate import generate
from genloom.models.transformer import LMConfig, TransformerLM
from genloom.serve.openai_schema import render_chat

from test_serve_e2e import Proc, free_port

pytestmark = pytest.mark.timeout(180)
VOCAB = list("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def tiny_chat_lm(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=len(VOCAB), block_size=32, n_layer=1, n_head=2, n_embd=16)
    return save(TransformerLM(cfg, VOCAB), path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("openai_e2e")
    path = tiny_chat_lm(d / "lm.safetensors")
    vae = d / "vae.safetensors"
    from test_serve_e2e import make_vae

    make_vae(vae)
    cfg = d / "serve.toml"
    cfg.write_text("[defaults]\nmax_new_tokens = 100000\nmax_batch_size = 4\n")
    proc = Proc([f"lm={path}", f"vae={vae}", "--config", str(cfg)], free_port())
    proc.path = path  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(server: Proc) -> TransformerLM:
    return load(server.path)  # type: ignore[attr-defined]


def test_models_list_is_openai_shaped_and_keeps_the_playground_format(client: openai.OpenAI, server: Proc) -> None:
    ids = {m.id: m for m in client.models.list()}
    assert set(ids) == {"lm", "vae"} and ids["lm"].object == "model" and ids["lm"].owned_by == "genloom"
    raw = httpx.get(server.url + "/v1/models").json()
    assert raw["object"] == "list" and {m["name"] for m in raw["models"]} == {"lm", "vae"}  # the playground's
    assert raw["data"][0]["kind"] in ("lm", "vae")  # genloom's own fields ride along in each entry


def test_completion_matches_the_reference_decoder(client: openai.OpenAI, model: TransformerLM) -> None:
    r = client.completions.create(model="lm", prompt="ROMEO:", max_tokens=20, temperature=0.7, seed=5)
    expected = generate(model, ["ROMEO:"], max_new_tokens=20, temperature=0.7, seed=5)[0]
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"
    assert r.object == "text_completion" and r.model == "lm"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 20, 26)


def test_streamed_completion_equals_the_plain_one_and_reports_usage(client: openai.OpenAI) -> None:
    kw = dict(model="lm", prompt="Be", max_tokens=30, temperature=0.9, seed=11)
    plain = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30


def test_stream_ends_with_done_and_n_choices_use_consecutive_seeds(server: Proc, model: TransformerLM) -> None:
    body = {"model": "lm", "prompt": "A", "max_tokens": 12, "temperature": 1.0, "seed": 3, "n": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        raw = r.read().decode()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert raw.endswith("data: [DONE]\n\n")
    import json

    texts = ["", "", ""]
    for block in raw.strip().split("\n\n")[:-1]:
        for c in json.loads(block.removeprefix("data: "))["choices"]:
            texts[c["index"]] += c["text"]
    expected = [generate(model, ["A"], max_new_tokens=12, temperature=1.0, seed=3 + k)[0] for k in range(3)]
    assert texts == expected


def test_chat_uses_the_documented_template_streaming_and_not(client: openai.OpenAI, model: TransformerLM) -> None:
    messages = [{"role": "system", "content": "A play."}, {"role": "user", "content": "Who goes there?"}]
    prompt = render_chat(messages)
    assert prompt == "A play.\n\nUSER:\nWho goes there?\n\nASSISTANT:\n"
    r = client.chat.completions.create(model="lm", messages=messages, max_tokens=25, temperature=0)
    expected = generate(model, [prompt], max_new_tokens=25, temperature=0, stop=["\n\n"])[0]
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == expected
    assert r.object == "chat.completion" and r.usage.prompt_tokens == len(prompt)
    chunks = list(client.chat.completions.create(model="lm", messages=messages, max_tokens=25, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_errors_arrive_in_openai_shape_with_the_right_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="a")
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):  # an image model is not an LM
        client.completions.create(model="vae", prompt="a")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="lm", prompt="a", temperature=3)
    assert e.value.status_code == 400 and e.value.param == "temperature" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="lm", prompt="a", presence_penalty=0.5)
    assert e.value.param == "presence_penalty"
    with pytest.raises(openai.UnprocessableEntityError) as e:  # '#' is not in the model's vocabulary
        client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "#1"}])
    assert "'#1'" in e.value.message or "#" in e.value.message


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf'^{name}{{model="lm"}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_client_disconnect_mid_stream_frees_its_decode_slot_at_once(client: openai.OpenAI, server: Proc) -> None:
    stream = client.completions.create(model="lm", prompt="A", max_tokens=90_000, temperature=1.0, stream=True)
    got = 0
    for _ in stream:
        got += 1
        if got == 5:
            break
    assert _metric(server.url, "genloom_num_requests_running") == 1.0
    stream.close()  # drops the connection, like a client that goes away
    t0 = time.monotonic()
    while _metric(server.url, "genloom_num_requests_running") and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    freed = time.monotonic() - t0
    assert _metric(server.url, "genloom_num_requests_running") == 0.0, "the slot was not freed"
    assert freed < 2.0, f"slot freed only after {freed:.2f} s"
    ready = httpx.get(server.url + "/readyz").json()["models"]["lm"]
    assert ready["streams"] == 0
    # the metrics users scale on are there and counted this stream's first token
    text = httpx.get(server.url + "/metrics").text
    for name in ("genloom_time_to_first_token_seconds_count", "genloom_time_per_output_token_seconds_count",
                 "genloom_e2e_request_latency_seconds_count", "genloom_request_queue_time_seconds_count"):
        assert re.search(rf'^{name}{{model="lm"}} [1-9]', text, re.M), name
