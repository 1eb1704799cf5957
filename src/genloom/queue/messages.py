"""The AMQP wire format of ``genloom worker`` / ``genloom submit``: names, headers, request validation, results.

Request (JSON body, published persistent to queue ``genloom.<model>`` on the default exchange, with
``reply_to`` and ``correlation_id`` properties)::

    {"id": "r-1", "model": "vae", "op": "sample",   "params": {"n": 1, "seed": 0, "labels": null, "format": "u8"}}
    {"id": "r-2", "model": "lm",  "op": "generate", "params": {"prompt": "Once", "max_new_tokens": 50, ...}}

Response (JSON body, published to ``reply_to`` with the request's ``correlation_id``)::

    {"id": "r-1", "ok": true,  "result": {"format": "u8", "shape": [1, 28, 28], "data": "<base64>"}}
    {"id": "r-1", "ok": false, "error": "params.n must be ...", "code": "invalid"}

Sample results are compact: ``format="u8"`` (default) is base64 of the uint8 pixels round(255·x), row-major
(n, 28, 28) — 784 bytes per image, quantisation error ≤ 1/510; ``format="f32"`` is base64 of the exact
little-endian float32 values in [0, 1]. ``decode_images`` turns either back into a float32 numpy array.
Error codes: ``invalid`` (bad JSON or params: dead-lettered, never retried), ``unknown_model``, ``failed``
(a transient failure that exhausted its retries).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUEUE_PREFIX = "genloom."
DEAD_SUFFIX = ".dead"  # dead-letter queue of model m: "genloom.m.dead"
H_RETRIES = "x-genloom-retries"  # how many times this request was retried (republished) so far
H_REASON = "x-genloom-reason"  # why a message was dead-lettered (one line)
H_ERROR_CODE = "x-genloom-error-code"
H_ORIGIN = "x-genloom-origin-queue"
OPS = ("sample", "generate")
FORMATS = ("u8", "f32")
MAX_ID_LEN = 256
MAX_SAMPLE_N = 1024  # images per request (a 1024-image u8 result is ~1 MB of base64)
MAX_PROMPT_CHARS = 10_000
MAX_NEW_TOKENS = 4096


class InvalidRequest(ValueError):
    """A request that can never succeed: it is dead-lettered without retry and answered with an error."""

    def __init__(self, message: str, *, code: str = "invalid", request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: str
    model: str
    op: str
    params: dict[str, Any] = field(default_factory=dict)


def queue_name(model: str) -> str:
    return QUEUE_PREFIX + model


def dead_letter_queue(model: str) -> str:
    return QUEUE_PREFIX + model + DEAD_SUFFIX


def check_model_name(name: str) -> str:
    """Model names become queue names: letters, digits, '-', '_', '.'; at most 200 characters."""
    ok = name and len(name) <= 200 and all(c.isalnum() or c in "-_." for c in name) and name.isascii()
    if not ok or name.endswith(DEAD_SUFFIX):
        raise ValueError(f"invalid model name {name!r}: use 1-200 letters, digits, '-', '_' or '.' "
                         f"(not ending in {DEAD_SUFFIX!r}), e.g. vae=runs/vae/model.safetensors")
    return name


def encode_request(req: Request) -> bytes:
    return json.dumps({"id": req.id, "model": req.model, "op": req.op, "params": req.params},
                      separators=(",", ":")).encode()


def parse_request(body: bytes, *, kinds: dict[str, str]) -> Request:
    """Validate a request body against the served models (name -> kind). Raises InvalidRequest."""
    try:
        d = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"body is not JSON ({e.msg} at char {e.pos}); send a UTF-8 JSON object"
                             if isinstance(e, json.JSONDecodeError) else "body is not UTF-8 JSON") from None
    if not isinstance(d, dict):
        raise InvalidRequest(f"body must be a JSON object, got {type(d).__name__}")
    rid = d.get("id")
    if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_ID_LEN:
        raise InvalidRequest(f"id must be a string of 1-{MAX_ID_LEN} characters")
    model, op, params = d.get("model"), d.get("op", "sample"), d.get("params", {})
    if model not in kinds:
        raise InvalidRequest(f"unknown model {model!r}; this worker serves {', '.join(sorted(kinds))}",
                             code="unknown_model", request_id=rid)
    if op not in OPS:
        raise InvalidRequest(f"op must be one of {', '.join(OPS)}, got {op!r}", request_id=rid)
    if not isinstance(params, dict):
        raise InvalidRequest("params must be a JSON object", request_id=rid)
    try:
        checked = _check_sample(params, kinds[model]) if op == "sample" else _check_generate(params, kinds[model])
    except InvalidRequest as e:
        e.request_id = rid
        raise
    return Request(rid, model, op, checked)


def _int(params: dict[str, Any], key: str, default: Any, lo: int, hi: int) -> Any:
    v = params.get(key, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidRequest(f"params.{key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _unknown(params: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(params) - allowed)
    if extra:
        raise InvalidRequest(f"unknown params {extra}; allowed: {sorted(allowed)}")


def _check_sample(params: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind not in ("vae", "gan"):
        raise InvalidRequest(f"op 'sample' needs an image model; this model is a {kind!r} (use op 'generate')")
    _unknown(params, {"n", "seed", "labels", "format"})
    n = _int(params, "n", 1, 1, MAX_SAMPLE_N)
    seed = _int(params, "seed", None, 0, 2**63 - 1)
    labels = params.get("labels")
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels]
    if labels is not None and not (isinstance(labels, list) and labels
                                   and all(isinstance(x, int) and not isinstance(x, bool) for x in labels)):
        raise InvalidRequest("params.labels must be null, an integer, or a list of integers")
    if labels is not None and len(labels) not in (1, n):
        raise InvalidRequest(f"params.labels has {len(labels)} values but n is {n}; give one label or n labels")
    fmt = params.get("format", "u8")
    if fmt not in FORMATS:
        raise InvalidRequest(f"params.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"n": n, "seed": seed, "labels": labels, "format": fmt}


def _check_generate(params: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind != "lm":
        raise InvalidRequest(f"op 'generate' needs a language model; this model is a {kind!r} (use op 'sample')")
    _unknown(params, {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed"})
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"params.prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    temp = params.get("temperature", 0.8)
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not 0 <= temp <= 10:
        raise InvalidRequest(f"params.temperature must be a number in [0, 10], got {temp!r}")
    top_p = params.get("top_p")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise InvalidRequest(f"params.top_p must be null or a number in (0, 1], got {top_p!r}")
    return {"prompt": prompt, "max_new_tokens": _int(params, "max_new_tokens", 200, 1, MAX_NEW_TOKENS),
            "temperature": float(temp), "top_k": _int(params, "top_k", None, 1, 1_000_000),
            "top_p": None if top_p is None else float(top_p), "seed": _int(params, "seed", None, 0, 2**63 - 1)}


# -- results -------------------------------------------------------------------------------------------------
def encode_images(images: np.ndarray, fmt: str) -> dict[str, Any]:
    """float32 (n, 28, 28) in [0, 1] → the compact JSON result (see the module docstring)."""
    if fmt == "u8":
        raw = np.rint(images * 255.0).astype(np.uint8).tobytes()  # round(255·x): error ≤ 1/510 per pixel
    else:
        raw = np.ascontiguousarray(images, dtype="<f4").tobytes()
    return {"format": fmt, "shape": list(images.shape), "data": base64.b64encode(raw).decode("ascii")}


def decode_images(result: dict[str, Any]) -> np.ndarray:
    """The inverse of ``encode_images``: float32 array of ``result["shape"]`` in [0, 1]."""
    raw = base64.b64decode(result["data"])
    shape = tuple(result["shape"])
    if result["format"] == "u8":
        return (np.frombuffer(raw, np.uint8).astype(np.float32) / 255.0).reshape(shape)  # (n, 28, 28)
    return np.frombuffer(raw, "<f4").reshape(shape).copy()  # (n, 28, 28)


def ok_response(rid: str, result: Any) -> bytes:
    return json.dumps({"id": rid, "ok": True, "result": result}, separators=(",", ":")).encode()


def error_response(rid: str | None, error: str, code: str) -> bytes:
    return json.dumps({"id": rid, "ok": False, "error": error, "code": code}, separators=(",", ":")).encode()


def request_id_of(body: bytes) -> str | None:
    """Best-effort id of a (possibly invalid) request, for its error response."""
    try:
        d = json.loads(body)
        rid = d.get("id") if isinstance(d, dict) else None
        return rid if isinstance(rid, str) and len(rid) <= MAX_ID_LEN else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
