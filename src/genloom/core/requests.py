"""Request bodies: one table per endpoint drives both validation (422 naming the field) and the OpenAPI spec."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from genloom.serve.config import ModelSettings


class ValidationError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Field:
    name: str
    types: tuple[type, ...]  # accepted JSON types (bool is never an int here)
    default: Any = None
    required: bool = False
    nullable: bool = True
    check: Callable[[Any, ModelSettings], str | None] | None = None  # → error message or None
    doc: str = ""
    openapi: dict[str, Any] | None = None


Check = Callable[[Any, ModelSettings], "str | None"]


def _range(lo: float, hi_name: str | None = None, hi: float | None = None) -> Check:
    def check(v: Any, s: ModelSettings) -> str | None:
        top = getattr(s, hi_name) if hi_name else hi
        if v < lo or (top is not None and v > top):
            return f"must be between {lo} and {top}, got {v}" if top is not None else f"must be ≥ {lo}, got {v}"
        return None
    return check


def _choice(*options: str) -> Callable[[Any, ModelSettings], str | None]:
    def check(v: Any, s: ModelSettings) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}, got {v!r}"
    return check


def _int_list(v: Any, s: ModelSettings) -> str | None:
    items = v if isinstance(v, list) else [v]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return "must be an integer or a list of integers"
    return None


def _str_list(v: Any, s: ModelSettings) -> str | None:
    items = v if isinstance(v, list) else [v]
    if not all(isinstance(x, str) and x for x in items) or len(items) > 8:
        return "must be a non-empty string or a list of at most 8 non-empty strings"
    return None


def _seed(v: Any, s: ModelSettings) -> str | None:
    return None if 0 <= v < 2**63 else f"must be between 0 and 2**63 - 1, got {v}"


def _z_or_seed(v: Any, s: ModelSettings) -> str | None:
    if isinstance(v, int):
        return _seed(v, s)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return "must be a seed (integer) or a latent vector (list of numbers)"
    return None


INT, NUM, STR, BOOL, LIST = (int,), (int, float), (str,), (bool,), (list,)
FORMAT = Field("format", STR, "png", nullable=False, check=_choice("png", "npy", "json"),
               doc="response body: png (image grid), npy (float32 array), json (nested lists)",
               openapi={"type": "string", "enum": ["png", "npy", "json"]})
LABELS = Field("labels", (int, list), None, check=_int_list, doc="class label(s) of a conditional model")

SCHEMAS: dict[str, tuple[Field, ...]] = {
    "sample": (
        Field("n", INT, 1, nullable=False, check=_range(1, "max_n"), doc="number of images"),
        Field("seed", INT, None, check=_seed, doc="random seed; the same seed gives the same images"),
        LABELS, FORMAT,
    ),
    "generate": (
        Field("prompt", STR, "", nullable=False, doc="text to continue"),
        Field("max_new_tokens", INT, 200, nullable=False, check=_range(1, "max_new_tokens"),
              doc="tokens to generate"),
        Field("temperature", NUM, 0.8, nullable=False, check=_range(0, None, 10), doc="0 = greedy"),
        Field("top_k", INT, None, check=_range(1), doc="keep the k most likely tokens"),
        Field("top_p", NUM, None, check=lambda v, s: None if 0 < v <= 1 else f"must be in (0, 1], got {v}",
              doc="nucleus sampling mass"),
        Field("seed", INT, None, check=_seed, doc="random seed"),
        Field("stop", (str, list), None, check=_str_list, doc="stop string(s)"),
        Field("stream", BOOL, False, nullable=False, doc="true: text/event-stream, one event per token"),
    ),
    "reconstruct": (
        Field("images", LIST, required=True, nullable=False, doc="images (n, 28, 28) or (n, 784) in [0, 1]",
              openapi={"type": "array", "items": {}}),
        LABELS,
        Field("format", STR, "json", nullable=False, check=_choice("png", "npy", "json"), doc=FORMAT.doc,
              openapi=FORMAT.openapi),
    ),
    "interpolate": (
        Field("a", (int, list), 0, nullable=False, check=_z_or_seed, doc="start: a seed or a latent vector"),
        Field("b", (int, list), 1, nullable=False, check=_z_or_seed, doc="end: a seed or a latent vector"),
        Field("steps", INT, 8, nullable=False, check=_range(2, None, 256), doc="images along the path"),
        Field("label", INT, None, doc="class label of a conditional model"),
        Field("format", STR, "png", nullable=False, check=_choice("png", "npy", "json"), doc=FORMAT.doc,
              openapi=FORMAT.openapi),
    ),
}


def parse(endpoint: str, body: bytes, settings: ModelSettings) -> dict[str, Any]:
    """JSON body → dict of every field of the endpoint (defaults filled in), or ValidationError."""
    if body.strip():
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValidationError("body", f"not valid JSON ({e})") from None
    else:
        data = {}
    if not isinstance(data, dict):
        raise ValidationError("body", "must be a JSON object")
    fields = SCHEMAS[endpoint]
    known = {f.name for f in fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(unknown[0], f"unknown field; {endpoint} accepts {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    for f in fields:
        if f.name not in data:
            if f.required:
                raise ValidationError(f.name, "is required")
            out[f.name] = f.default
            continue
        v = data[f.name]
        if v is None:
            if not f.nullable:
                raise ValidationError(f.name, "must not be null")
            out[f.name] = None
            continue
        ok = isinstance(v, f.types) and not (isinstance(v, bool) and bool not in f.types)
        if not ok:
            want = " or ".join(_TYPE_NAMES[t] for t in f.types)
            raise ValidationError(f.name, f"must be {want}, got {_TYPE_NAMES.get(type(v), type(v).__name__)}")
        if f.check is not None:
            msg = f.check(v, settings)
            if msg:
                raise ValidationError(f.name, msg)
        out[f.name] = v
    return out


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list",
               dict: "an object", type(None): "null"}
_OPENAPI_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array"}


def json_schema(endpoint: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for f in SCHEMAS[endpoint]:
        if f.openapi is not None:
            p = dict(f.openapi)
        elif len(f.types) == 1 or f.types == NUM:
            p = {"type": "number" if f.types == NUM else _OPENAPI_TYPES[f.types[0]]}
        else:
            p = {"oneOf": [{"type": _OPENAPI_TYPES[t]} for t in f.types]}
        p["description"] = f.doc
        if not f.required:
            p["default"] = f.default
        if f.nullable:
            p["nullable"] = True
        props[f.name] = p
    return {"type": "object", "properties": props, "additionalProperties": False,
            "required": [f.name for f in SCHEMAS[endpoint] if f.required]}
