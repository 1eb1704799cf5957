"""The AMQP wire format: request validation, result encoding, model-name rules (no broker needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genloom.core.requests import ModelInfo
from genloom.errors import GenloomError
from genloom.queue import messages as m

KINDS = {"vae": "vae", "lm": "lm", "cvae": ModelInfo("vae", num_classes=3)}


def body(**kw: object) -> bytes:
    return json.dumps({"id": "r1", "model": "vae", "op": "sample", "params": {}, **kw}).encode()


def test_valid_sample_request_gets_defaults() -> None:
    req = m.parse_request(body(params={"n": 3, "seed": 5}), kinds=KINDS)
    assert req == m.Request("r1", "vae", "sample", {"n": 3, "seed": 5, "labels": None, "format": "u8"})
    assert m.parse_request(m.encode_request(req), kinds=KINDS) == req


@pytest.mark.parametrize("raw, code, fragment", [
    (b"{not json", "invalid", "not JSON"),
    (b"\xff\xfe", "invalid", "body is not"),
    (b"[1, 2]", "invalid", "JSON object"),
    (body(id=""), "invalid", "id must be"),
    (body(model="nope"), "unknown_model", "unknown model 'nope'"),
    (body(op="train"), "invalid", "op: must be one of"),
    (body(params={"n": 0}), "invalid", "n: must be between 1 and 1024"),
    (body(params={"n": True}), "invalid", "n: must be an integer"),
    (body(model="cvae", params={"n": 2, "labels": [1, 2, 3]}), "invalid", "labels: has 3 values"),
    (body(params={"format": "png"}), "invalid", "format: must be one of u8, f32"),
    (body(params={"size": 3}), "invalid", "size: unknown field"),
    (body(params={"seed": -1}), "invalid", "seed: must be between"),
    (body(op="generate", params={"prompt": "x"}), "invalid", "op: generate needs a model of kind lm"),
    (body(model="lm", op="generate", params={"prompt": 3}), "invalid", "prompt: must be a string"),
    (body(model="lm", op="generate", params={"prompt": "a", "top_p": 0}), "invalid", "top_p: must be in (0, 1]"),
])
def test_invalid_requests_name_the_problem(raw: bytes, code: str, fragment: str) -> None:
    with pytest.raises(m.InvalidRequest) as e:
        m.parse_request(raw, kinds=KINDS)
    assert e.value.code == code
    assert fragment in str(e.value)


def test_invalid_params_keep_the_request_id_for_the_error_response() -> None:
    with pytest.raises(m.InvalidRequest) as e:
        m.parse_request(body(params={"n": -1}), kinds=KINDS)
    assert e.value.request_id == "r1"
    assert m.request_id_of(body(params={"n": -1})) == "r1"
    assert m.request_id_of(b"garbage") is None


def test_generate_request_defaults() -> None:
    req = m.parse_request(body(model="lm", op="generate", params={"prompt": "Once"}), kinds=KINDS)
    assert req.params == {"prompt": "Once", "max_new_tokens": 200, "temperature": 0.8, "top_k": None,
                          "top_p": None, "seed": None, "stop": None}


@pytest.mark.parametrize("fmt, tol", [("u8", 1 / 510 + 1e-7), ("f32", 0.0)])
def test_images_round_trip(fmt: str, tol: float) -> None:
    x = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    res = m.encode_images(x, fmt)
    assert res["shape"] == [3, 28, 28] and res["format"] == fmt
    back = m.decode_images(json.loads(json.dumps(res)))
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.abs(back - x).max() <= tol
    if fmt == "u8":
        assert len(res["data"]) == 4 * -(-3 * 784 // 3)  # base64 of 784 bytes per image


def test_responses_are_compact_json() -> None:
    assert json.loads(m.ok_response("a", {"x": 1})) == {"id": "a", "ok": True, "result": {"x": 1}}
    assert json.loads(m.error_response(None, "bad", "invalid")) == {"id": None, "ok": False, "error": "bad",
                                                                    "code": "invalid"}


@pytest.mark.parametrize("name", ["", "a b", "x/y", "vae.dead", "é", "a" * 201])
def test_bad_model_names_are_rejected(name: str) -> None:
    with pytest.raises(GenloomError, match="invalid model name"):
        m.check_model_name(name)
    assert m.check_model_name("vae-1_v2.fashion") == "vae-1_v2.fashion"
