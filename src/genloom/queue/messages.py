"""The AMQP wire format of ``genloom worker`` / ``genloom submit``: names, headers, request validation, results.

Request (JSON body, published persistent to queue ``genloom.<model>`` on the default exchange, with
``reply_to`` and ``correlation_id`` properties)::

    {"id": "r-1", "model": "vae", "op": "sample",   "params": {"n": 1, "seed": 0, "labels": null, "format": "u8"}}
    {"id": "r-2", "model": "lm",  "op": "generate", "params": {"prompt": "Once", "max_new_tokens": 50, ...}}

Response (JSON body, published to ``reply_to`` with the request's ``correlation_id``)::

    {"id": "r-1", "ok": true,  "result": {"format": "u8", "shape": [1, 28, 28], "data": "<base64>"}}
    {"id": "r-1", "ok": false, "error": "n: must be between 1 and 1024, got 0", "code": "invalid"}

Sample results are compact: ``format="u8"`` (default) is base64 of the uint8 pixels round(255·x), row-major
(n, 28, 28) — 784 bytes per image, quantisation error ≤ 1/510; ``format="f32"`` is base64 of the exact
little-endian float32 values in [0, 1]. ``decode_images`` turns either back into a float32 numpy array.
Params follow the one request schema of every transport (``core/requests.py``: the same limits, defaults and
error text as HTTP, the CLI and Python). Error codes: ``invalid`` (bad JSON or params: dead-lettered, never retried), ``unknown_model``, ``failed``
(a transient failure that exhausted its retries).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from genloom.core import requests
from genloom.core.requests import DEFAULT_LIMITS, Limits, ModelInfo

QUEUE_PREFIX = "genloom."
DEAD_SUFFIX = ".dead"  # dead-letter queue of model m: "genloom.m.dead"
H_RETRIES = "x-genloom-retries"  # how many times this request was retried (republished) so far
H_REASON = "x-genloom-reason"  # why a message was dead-lettered (one line)
H_ERROR_CODE = "x-genloom-error-code"
H_ORIGIN = "x-genloom-origin-queue"
OPS = ("sample", "generate")
FORMATS = ("u8", "f32")
MAX_ID_LEN = 256
# the AMQP-only field of each op (how the result is encoded); the rest is the core schema (core/requests.py)
EXTRA: dict[str, tuple[requests.Field, ...]] = {"sample": (requests.format_field(*FORMATS),), "generate": ()}


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
    """Model names become queue names: the rule of ``core/names.py``."""
    from genloom.core.names import check_name

    return check_name(name)


def encode_request(req: Request) -> bytes:
    return json.dumps({"id": req.id, "model": req.model, "op": req.op, "params": req.params},
                      separators=(",", ":")).encode()


def parse_request(body: bytes, *, kinds: Mapping[str, "ModelInfo | str"], limits: Limits = DEFAULT_LIMITS
                  ) -> Request:
    """Validate a request body against the served models (name -> ``ModelInfo`` or kind). Raises InvalidRequest.

    The envelope (id, model, op, params) is checked here; the params go through the one request schema
    (``core.requests``), so they get the same limits and error text as over HTTP, the CLI and Python.
    """
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
        raise InvalidRequest(f"op: must be one of {', '.join(OPS)}, got {op!r}", request_id=rid)
    info = kinds[model]
    try:
        checked = requests.check(op, params, limits=limits, where="params", extra=EXTRA[op],
                                 model=info if isinstance(info, ModelInfo) else ModelInfo(info))
    except requests.RequestError as e:
        raise InvalidRequest(str(e), request_id=rid) from None
    return Request(rid, model, op, checked)


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
