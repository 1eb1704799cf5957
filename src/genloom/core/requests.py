"""The one request schema and validator of every transport: CLI, Python (``genloom.engine``), HTTP, AMQP.

One table per operation (``SCHEMAS``) drives validation, defaults and the OpenAPI spec; ``check`` applies it to
a dict of parameters and then checks them against the model (labels vs classes, prompt vs vocabulary), so the
same bad request gets the same ``RequestError`` text and the same limit on every transport:

=========  ==============================================================================
CLI        ``genloom: error: <field>: <message>``, exit 2
Python     ``RequestError`` (a ``GenloomError`` and ``ValueError``) with ``.field``
HTTP       422 ``{"error": "<field>: <message>", "field": "<field>"}``
AMQP       ``{"ok": false, "error": "<field>: <message>", "code": "invalid"}``, dead-lettered
=========  ==============================================================================

Transport-only fields (HTTP ``format`` / ``stream``, AMQP ``format``) are passed as ``extra`` fields: their
values are checked here too, but they do not reach the model. ``Limits`` holds the caps; the defaults are the
same everywhere (``genloom serve --max-n`` / ``--max-new-tokens`` change them for one server).
This module imports neither torch nor numpy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from genloom.errors import GenloomError

SEED_LIMIT = 2**63  # seeds are 0 … 2**63 - 1 (numpy's SeedSequence and torch both take them)
MAX_STOP = 8  # stop strings per request


class RequestError(GenloomError, ValueError):
    """A request that can never succeed. ``str(e)`` is ``"<field>: <message>"``; ``e.field`` names the field."""

    def __init__(self, field: str | None, message: str | None = None) -> None:
        if message is None:  # RequestError("one line") — no field to name
            field, message = None, field or ""
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


@dataclass(frozen=True)
class Limits:
    """Caps of one request: the same defaults on every transport."""

    max_n: int = 1024  # images per sample request (a 1024-image u8 AMQP result is ~1 MB of base64)
    max_new_tokens: int = 4096  # tokens per generate request
    max_prompt_chars: int = 10_000
    max_steps: int = 256  # images along an interpolation path


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about the model a request goes to."""

    kind: str  # vae | gan | lm | …
    num_classes: int = 0
    vocab: frozenset[str] | None = None
    shortcut_levels: int = 0  # flow: a shortcut model's step-size levels (0: none)
    sample_steps: int = 0  # flow: the file's default steps

    @classmethod
    def of_header(cls, header: Any) -> "ModelInfo":
        """From a model file's header (``export.ModelFile`` or ``engine.lite.LiteHeader``)."""
        raw = header.metadata.get("genloom.vocab")
        c = header.config
        return cls(kind=header.kind, num_classes=int(c.get("num_classes", 0) or 0),
                   vocab=frozenset(json.loads(raw)) if raw else None,
                   shortcut_levels=int(c.get("shortcut_levels", 0) or 0), sample_steps=int(c.get("sample_steps", 0) or 0))


def shortcut_problem(levels: int, steps: int) -> str | None:
    """Why a flow model with ``levels`` shortcut levels cannot take ``steps`` shortcut steps; None if it can."""
    if not levels:
        return "sampler 'shortcut' needs a shortcut model (trained with --shortcut-levels); use euler or heun"
    most = 2 ** (levels - 1)
    if steps < 1 or steps & (steps - 1) or steps > most:
        return f"the shortcut sampler takes a power of two of steps, 1 … {most}, not {steps}"
    return None


Check = Callable[[Any, Limits], "str | None"]


@dataclass(frozen=True)
class Field:
    name: str
    types: tuple[type, ...]  # accepted JSON types (bool is never an int here)
    default: Any = None
    required: bool = False
    nullable: bool = True
    check: Check | None = None  # → error message or None
    doc: str = ""
    openapi: dict[str, Any] | None = None


def _range(lo: float, hi_name: str | None = None, hi: float | None = None) -> Check:
    def check(v: Any, limits: Limits) -> str | None:
        top = getattr(limits, hi_name) if hi_name else hi
        if v < lo or (top is not None and v > top):
            return f"must be between {lo} and {top}, got {v}" if top is not None else f"must be ≥ {lo}, got {v}"
        return None
    return check


def _choice(*options: str) -> Check:
    def check(v: Any, limits: Limits) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}, got {v!r}"
    return check


def _int_list(v: Any, limits: Limits) -> str | None:
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return "must be an integer or a non-empty list of integers"
    return None


def _str_list(v: Any, limits: Limits) -> str | None:
    items = v if isinstance(v, list) else [v]
    if not all(isinstance(x, str) and x for x in items) or not 1 <= len(items) <= MAX_STOP:
        return f"must be a non-empty string or a list of at most {MAX_STOP} non-empty strings"
    return None


def _seed(v: Any, limits: Limits) -> str | None:
    return None if 0 <= v < SEED_LIMIT else f"must be between 0 and 2**63 - 1, got {v}"


def _prompt(v: Any, limits: Limits) -> str | None:
    n = limits.max_prompt_chars
    return None if len(v) <= n else f"must be at most {n} characters, got {len(v)}"


def _z_or_seed(v: Any, limits: Limits) -> str | None:
    if isinstance(v, int):
        return _seed(v, limits)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return "must be a seed (integer) or a latent vector (list of numbers)"
    return None


INT, NUM, STR, BOOL, LIST = (int,), (int, float), (str,), (bool,), (list,)
LABELS = Field("labels", (int, list), None, check=_int_list, doc="class label(s) of a conditional model: one "
               "for all images or one per image; null cycles through the classes")
SEED = Field("seed", INT, None, check=_seed, doc="random seed; the same seed gives the same output on every "
             "transport (null: a fresh one)")


def format_field(*choices: str, default: str | None = None) -> Field:
    """A transport's ``format`` field (HTTP: png | npy | json; AMQP: u8 | f32)."""
    return Field("format", STR, default or choices[0], nullable=False, check=_choice(*choices),
                 doc="response encoding: " + " | ".join(choices), openapi={"type": "string", "enum": list(choices)})


MAX_FLOW_STEPS = 256
MAX_GUIDANCE = 20.0
FLOW_STEPS = Field("steps", INT, None, check=_range(1, None, MAX_FLOW_STEPS),
                   doc="flow models: ODE steps (null: the model file's default)")
GUIDANCE = Field("guidance", NUM, None, check=_range(0, None, MAX_GUIDANCE),
                 doc="flow models: classifier-free guidance w (0 unconditional, 1 conditional, > 1 guided; "
                     "null: the model file's default)")
FLOW_SAMPLERS = ("euler", "heun", "shortcut")  # models/flow.py's SAMPLERS (defined here: no torch at the edge)
SAMPLER = Field("sampler", STR, None, check=_choice(*FLOW_SAMPLERS),
                doc="flow models: euler | heun (ODE solvers) | shortcut (a shortcut model's learned steps; steps a "
                    "power of two) (null: the model file's default)",
                openapi={"type": "string", "enum": list(FLOW_SAMPLERS)})
FLOW_ONLY = ("steps", "guidance", "sampler")  # sample fields that only flow models take

SCHEMAS: dict[str, tuple[Field, ...]] = {
    "sample": (
        Field("n", INT, 1, nullable=False, check=_range(1, "max_n"), doc="number of images"),
        SEED, LABELS, FLOW_STEPS, GUIDANCE, SAMPLER,
    ),
    "trajectory": (
        Field("n", INT, 1, nullable=False, check=_range(1, None, 16), doc="number of images (at most 16)"),
        SEED, LABELS, FLOW_STEPS, GUIDANCE, SAMPLER,
    ),
    "generate": (
        Field("prompt", STR, "", nullable=False, check=_prompt, doc="text to continue"),
        Field("max_new_tokens", INT, 200, nullable=False, check=_range(1, "max_new_tokens"),
              doc="tokens to generate"),
        Field("temperature", NUM, 0.8, nullable=False, check=_range(0, None, 10), doc="0 = greedy"),
        Field("top_k", INT, None, check=_range(1), doc="keep the k most likely tokens"),
        Field("top_p", NUM, None, check=lambda v, s: None if 0 < v <= 1 else f"must be in (0, 1], got {v}",
              doc="nucleus sampling mass"),
        SEED,
        Field("stop", (str, list), None, check=_str_list, doc="stop string(s): generation ends before the "
              "first one (it is not returned)"),
    ),
    "reconstruct": (
        Field("images", LIST, required=True, nullable=False, doc="images (n, 28, 28) or (n, 784) in [0, 1]",
              openapi={"type": "array", "items": {}}),
        LABELS,
    ),
    "interpolate": (
        Field("a", (int, list), 0, nullable=False, check=_z_or_seed, doc="start: a seed or a latent vector"),
        Field("b", (int, list), 1, nullable=False, check=_z_or_seed, doc="end: a seed or a latent vector"),
        Field("steps", INT, 8, nullable=False, check=_range(2, "max_steps"), doc="images along the path"),
        Field("label", INT, None, doc="class label of a conditional model"),
    ),
}
IMAGE_KINDS = ("vae", "gan", "flow")
KINDS_OF_OP = {"sample": IMAGE_KINDS, "generate": ("lm",), "reconstruct": ("vae",), "interpolate": ("vae",),
               "trajectory": ("flow",)}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list",
               dict: "an object", type(None): "null"}
_OPENAPI_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array"}


def _plain(v: Any) -> Any:
    """numpy scalars and arrays (Python callers) → the JSON types the schema speaks."""
    return v.tolist() if hasattr(v, "tolist") and not isinstance(v, (str, bytes)) else v


def check(op: str, params: Any, *, limits: Limits = DEFAULT_LIMITS, model: ModelInfo | None = None,
          extra: Sequence[Field] = (), where: str = "body") -> dict[str, Any]:
    """Validate one request's parameters → a dict of every field (defaults filled in), or RequestError.

    ``where`` names the container in the error for a non-object (``body`` over HTTP, ``params`` over AMQP).
    With ``model``, the request is also checked against it (op vs kind, labels vs classes, prompt vs vocab)
    and ``labels`` comes back as a list of n class ids (or None).
    """
    if op not in SCHEMAS:
        raise RequestError("op", f"must be one of {', '.join(SCHEMAS)}, got {op!r}")
    if not isinstance(params, Mapping):
        raise RequestError(where, f"must be a JSON object, got {_TYPE_NAMES.get(type(params), type(params).__name__)}")
    fields = (*SCHEMAS[op], *extra)
    known = [f.name for f in fields]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise RequestError(str(unknown[0]), f"unknown field; {op} accepts {', '.join(known)}")
    out: dict[str, Any] = {}
    for f in fields:
        if f.name not in params:
            if f.required:
                raise RequestError(f.name, "is required")
            out[f.name] = f.default
            continue
        v = _plain(params[f.name])
        if v is None:
            if not f.nullable:
                raise RequestError(f.name, "must not be null")
            out[f.name] = None
            continue
        if not isinstance(v, f.types) or (isinstance(v, bool) and bool not in f.types):
            want = " or ".join(_TYPE_NAMES[t] for t in f.types)
            raise RequestError(f.name, f"must be {want}, got {_TYPE_NAMES.get(type(v), type(v).__name__)}")
        if f.check is not None:
            msg = f.check(v, limits)
            if msg:
                raise RequestError(f.name, msg)
        out[f.name] = v
    if op == "generate" and isinstance(out["stop"], str):
        out["stop"] = [out["stop"]]
    for name in FLOW_ONLY if op == "sample" else ():  # unset flow-only fields stay out: VAE/GAN requests unchanged
        if out.get(name) is None:
            del out[name]
    if model is not None:
        check_model(op, out, model)
    return out


def check_model(op: str, p: dict[str, Any], model: ModelInfo) -> None:
    """The checks that need the model: op vs kind, labels vs classes, prompt vs vocabulary (normalises labels)."""
    kinds = KINDS_OF_OP[op]
    if model.kind not in kinds:
        other = next((o for o, k in KINDS_OF_OP.items() if model.kind in k), None)
        hint = f" (use {other})" if other else ""
        raise RequestError("op", f"{op} needs a model of kind {' or '.join(kinds)}; this model is of kind "
                                 f"{model.kind}{hint}")
    if op in ("sample", "trajectory"):
        p["labels"] = check_labels(p["labels"], p["n"], model.num_classes)
        if model.kind != "flow":
            given = next((f for f in FLOW_ONLY if p.get(f) is not None), None)
            if given:
                raise RequestError(given, f"only flow models take {given}; this model is of kind {model.kind}")
        elif p.get("sampler") == "shortcut":
            problem = shortcut_problem(model.shortcut_levels, p.get("steps") or model.sample_steps)
            if problem:
                raise RequestError("sampler", problem)
    elif op == "reconstruct":
        if p["labels"] is not None:
            p["labels"] = check_labels(p["labels"], len(p["images"]), model.num_classes)
    elif op == "interpolate":
        label = p["label"]
        if label is not None and not (model.num_classes and 0 <= label < model.num_classes):
            raise RequestError("label", f"must be in 0..{model.num_classes - 1} for this conditional model"
                               if model.num_classes else "given but this model is not conditional; pass null")
    elif op == "generate" and model.vocab is not None:
        bad = list(dict.fromkeys(ch for ch in p["prompt"] if ch not in model.vocab))
        if bad:
            chars = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in bad[:5]) + (", …" if len(bad) > 5 else "")
            raise RequestError("prompt", f"character {chars} is not in the model's vocabulary" if len(bad) == 1
                               else f"characters {chars} are not in the model's vocabulary")


def check_labels(labels: Any, n: int, num_classes: int) -> list[int] | None:
    """None, one label or n labels → a list of n class ids (None stays None: the model cycles the classes)."""
    if labels is None:
        return None
    if not num_classes:
        raise RequestError("labels", "given but this model is not conditional; pass null")
    items = labels if isinstance(labels, list) else [labels]
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise RequestError("labels", f"has {len(items)} values but n is {n}; give one label or n labels")
    bad = next((v for v in items if not 0 <= v < num_classes), None)
    if bad is not None:
        raise RequestError("labels", f"value {bad} out of range 0..{num_classes - 1}")
    return list(items)


def parse(op: str, body: bytes, *, limits: Limits = DEFAULT_LIMITS, model: ModelInfo | None = None,
          extra: Sequence[Field] = ()) -> dict[str, Any]:
    """A JSON body (HTTP) → ``check``. An empty body is not an object: 422 like any other non-object."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError("body", f"not valid JSON ({e}); send a JSON object like {{}}") from None
    return check(op, data, limits=limits, model=model, extra=extra)


def json_schema(op: str, extra: Sequence[Field] = ()) -> dict[str, Any]:
    fields = (*SCHEMAS[op], *extra)
    props: dict[str, Any] = {}
    for f in fields:
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
            "required": [f.name for f in fields if f.required]}
