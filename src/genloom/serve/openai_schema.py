"""OpenAI-compatible request bodies for LM models: validation (400 naming the field) and the chat template.

``/v1/completions`` and ``/v1/chat/completions`` accept the fields of OpenAI's API that a character LM can honour
(``max_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``stream``, ``stream_options``, ``echo``)
and, so that existing client code runs unchanged, the fields it cannot honour when they hold their neutral value
(``presence_penalty: 0``, ``logprobs: null``, ``user``, ...). A non-neutral value of those, or a field OpenAI does
not define, is refused with 400 and the field's name — never silently ignored.

Chat template (a plain character LM has no chat tokens, so a conversation is rendered as a script, the format
of Tiny Shakespeare)::

    <system message content>\\n\\n            (each system message, as a stage direction without a speaker)
    USER:\\n<content>\\n\\n                 (a user message; its optional "name" replaces USER)
    ASSISTANT:\\n<content>\\n\\n            (an assistant message; its optional "name" replaces ASSISTANT)
    ASSISTANT:\\n                          (the generation prompt: the model speaks next)

The reply ends at the first blank line (the stop string ``"\\n\\n"`` is always added) or at ``max_tokens``.
Every character of the rendered prompt must be in the model's vocabulary (else 422 naming the message).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from genloom.serve.config import ModelSettings

ROLE_SPEAKERS = {"user": "USER", "assistant": "ASSISTANT"}
TURN_END = "\n\n"
MAX_N = 16  # choices per request (OpenAI allows 128; each is one decode slot)
MAX_PROMPTS = 16  # prompts per /v1/completions request
MAX_STOP = 4
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_DEFAULT_MAX_TOKENS = 256  # OpenAI's chat default is "up to the context"; a char LM rambles: keep it short

# fields OpenAI defines that a character LM cannot honour: accepted only with their neutral value(s)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0, None), "frequency_penalty": (0, 0.0, None), "logit_bias": (None, {}),
    "logprobs": (None, False), "top_logprobs": (None, 0), "best_of": (None, 1), "suffix": (None, ""),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False), "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]), "reasoning_effort": (None,), "prediction": (None,), "audio": (None,),
}
_FREE = {"user", "metadata", "store", "service_tier"}  # informational: accepted with any value
_COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
             499: "client_closed_request", 503: "server_error", 504: "timeout"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class LMRequest:
    """A validated completion or chat request: one or more prompts, each generated ``n`` times."""

    model: str
    prompts: list[str]
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    sampling: dict[str, Any]  # max_new_tokens, temperature, top_k, top_p, seed, stop (the worker's params)


def _bad(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code="invalid_value")


def _number(d: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise _bad(key, f"must be a number between {lo} and {hi}, got {v!r}")
    return float(v)


def _integer(d: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(key, f"must be an integer between {lo} and {hi}, got {v!r}")
    return v


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" ({e.msg} at char {e.pos})" if isinstance(e, json.JSONDecodeError) else ""
        raise OpenAIError(400, f"the body is not valid JSON{where}; send a JSON object",
                          code="invalid_json") from None
    if not isinstance(d, dict):
        raise OpenAIError(400, f"the body must be a JSON object, got {type(d).__name__}", code="invalid_json")
    return d


def _check_fields(d: dict[str, Any], allowed: set[str]) -> None:
    for key, v in d.items():
        if key in allowed or key in _FREE:
            continue
        if key in _NEUTRAL:
            if v not in _NEUTRAL[key]:
                raise OpenAIError(400, f"{key}={json.dumps(v)} is not supported by genloom's character LMs; "
                                       f"omit it or send {json.dumps(_NEUTRAL[key][0])}", param=key,
                                  code="unsupported_parameter")
            continue
        raise OpenAIError(400, f"unrecognized request argument supplied: {key}", param=key,
                          code="unrecognized_argument")


def _sampling(d: dict[str, Any], settings: ModelSettings, *, default_max: int, max_key: str,
              extra_stop: list[str]) -> dict[str, Any]:
    limit = settings.max_new_tokens
    max_new = _integer(d, max_key, min(default_max, limit), 0, limit)
    temperature = _number(d, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(d, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:  # the limit of nucleus sampling as p → 0: the most likely token
        temperature, top_p = 0.0, 1.0
    stop = d.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise _bad("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOP:
        raise _bad("stop", f"at most {MAX_STOP} stop sequences, got {len(stops)}")
    stops = [s for s in stops if s]  # OpenAI ignores empty stop strings
    stops += [s for s in extra_stop if s not in stops]
    seed = _integer(d, "seed", None, -(2**63), 2**63 - 1)
    if seed is not None and seed < 0:
        seed %= 2**63  # OpenAI takes any int64; the engine's seeds are non-negative
    return {"max_new_tokens": max_new, "temperature": temperature, "top_k": None,
            "top_p": None if top_p >= 1.0 else top_p, "seed": seed, "stop": stops or None}


def _common(d: dict[str, Any]) -> tuple[str, int, bool, bool]:
    model = d.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "model: required, a model id from GET /v1/models", param="model",
                          code="missing_required_parameter" if model is None else "invalid_value")
    n = _integer(d, "n", 1, 1, MAX_N)
    assert n is not None
    stream = d.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false, got {stream!r}")
    opts = d.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise _bad("stream_options", "is only allowed when stream is true")
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}:
            raise _bad("stream_options", 'must be an object like {"include_usage": true}')
        include_usage = bool(opts.get("include_usage", False))
    return model, n, stream, include_usage


def parse_completion(d: dict[str, Any], settings: ModelSettings) -> LMRequest:
    _check_fields(d, COMPLETION_FIELDS)
    model, n, stream, include_usage = _common(d)
    prompt = d.get("prompt", "")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (int, list)) for p in prompt):
        raise _bad("prompt", "token-id prompts are not supported (the vocabulary is per model, see "
                             "GET /playground/info); send text")
    else:
        raise _bad("prompt", "must be a string or a non-empty list of strings")
    if len(prompts) > MAX_PROMPTS:
        raise _bad("prompt", f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
    if len(prompts) * n > MAX_N:
        raise _bad("n", f"prompts × n = {len(prompts) * n} exceeds {MAX_N} sequences per request")
    echo = d.get("echo", False)
    if not isinstance(echo, bool):
        raise _bad("echo", f"must be true or false, got {echo!r}")
    sampling = _sampling(d, settings, default_max=COMPLETIONS_DEFAULT_MAX_TOKENS, max_key="max_tokens",
                         extra_stop=[])
    return LMRequest(model, prompts, n, stream, include_usage, echo, sampling)


def _content(m: dict[str, Any], i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, list):
        parts = []
        for j, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content[{j}]", "only text parts ({\"type\": \"text\", \"text\": ...}) "
                                                          "are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content", "must be a string or a list of text parts")


def render_chat(messages: list[dict[str, Any]]) -> str:
    """The documented template (module docstring): a script of speakers, ending with the assistant's cue."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        text = _content(m, i)
        if role in ("system", "developer"):
            out.append(f"{text}{TURN_END}")
        elif role in ROLE_SPEAKERS:
            name = m.get("name")
            if name is not None and (not isinstance(name, str) or not name or "\n" in name):
                raise _bad(f"messages[{i}].name", "must be a non-empty single-line string")
            out.append(f"{name or ROLE_SPEAKERS[role]}:\n{text}{TURN_END}")
        else:
            raise _bad(f"messages[{i}].role", f"must be system, developer, user or assistant, got {role!r} "
                                              f"(tool messages need tool calls, which a character LM cannot make)")
    out.append(f"{ROLE_SPEAKERS['assistant']}:\n")
    return "".join(out)


def parse_chat(d: dict[str, Any], settings: ModelSettings) -> LMRequest:
    _check_fields(d, CHAT_FIELDS)
    model, n, stream, include_usage = _common(d)
    messages = d.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise OpenAIError(400, "messages: required, a non-empty list of {\"role\", \"content\"} objects",
                          param="messages", code="missing_required_parameter" if messages is None else
                          "invalid_value")
    for i, m in enumerate(messages):
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise _bad(f"messages[{i}]", f"unsupported field(s) {', '.join(sorted(extra))}")
    max_key = "max_completion_tokens" if d.get("max_completion_tokens") is not None else "max_tokens"
    sampling = _sampling(d, settings, default_max=CHAT_DEFAULT_MAX_TOKENS, max_key=max_key, extra_stop=[TURN_END])
    return LMRequest(model, [render_chat(messages)], n, stream, include_usage, False, sampling)
