"""The OpenAPI 3 description of the API (``GET /openapi.json``) and a self-contained ``/docs`` page.

The page needs no CDN (the server may run offline): it renders the spec as plain HTML.
"""
from __future__ import annotations

import html
import json
from typing import Any

from genloom import __version__
from genloom.core.requests import json_schema
from genloom.serve.encode import EXTRA

ERRORS = {"404": "unknown model", "413": "request body too large", "422": "invalid input; `field` names it",
          "503": "overloaded or restarting; see Retry-After", "504": "deadline passed (X-Request-Timeout)"}
IMAGE_CONTENT = {"image/png": {}, "application/x-npy": {}, "application/json": {}}


def _op(summary: str, schema: str | None, content: dict[str, Any], *, errors: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": content}}}
    if schema:
        op["requestBody"] = {"content": {"application/json": {"schema": json_schema(schema, EXTRA[schema])}}}
        op["parameters"] = [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "X-Request-Timeout", "in": "header", "schema": {"type": "number"},
             "description": "deadline in seconds (default: the model's timeout_s)"},
        ]
    if errors:
        op["responses"].update({code: {"description": d} for code, d in ERRORS.items()})
    return op


def openapi_spec(server: Any) -> dict[str, Any]:
    json_c = {"application/json": {}}
    paths = {
        "/v1/models": {"get": _op("list served models: OpenAI's list (object, data: id, object, created, owned_by "
                                  "+ the fields below) and models: name, kind, config, provenance", None, json_c,
                                  errors=False)},
        "/v1/models/{name}/sample": {"post": _op("images from a VAE, GAN or flow model", "sample", IMAGE_CONTENT)},
        "/v1/models/{name}/generate": {"post": _op("text from an LM; stream=true answers text/event-stream",
                                                    "generate", {"application/json": {}, "text/event-stream": {}})},
        "/v1/models/{name}/reconstruct": {"post": _op("VAE: decode(encode(images))", "reconstruct", IMAGE_CONTENT)},
        "/v1/models/{name}/interpolate": {"post": _op("VAE: images along the slerp path between two latents",
                                                       "interpolate", IMAGE_CONTENT)},
        "/v1/models/{name}/trajectory": {"post": _op("flow: the denoising path — per image a row of states x_t "
                                                      "and a row of predictions of the data, ending in the sample",
                                                      "trajectory", IMAGE_CONTENT)},
        "/v1/completions": {"post": {
            "summary": "OpenAI-compatible completions for LM models (model, prompt, max_tokens, temperature, top_p, "
                       "n, stop, seed, echo, stream, stream_options); errors {\"error\": {message, type, param, "
                       "code}}: 400 bad parameter, 404 unknown model, 422 prompt outside the vocabulary, 429/503 "
                       "overloaded",
            "responses": {"200": {"description": "OK", "content": {"application/json": {}, "text/event-stream": {}}}}}},
        "/v1/chat/completions": {"post": {
            "summary": "OpenAI-compatible chat for LM models: messages rendered as a script (SPEAKER:\\n text, "
                       "see serve/openai_schema.py), the reply ends at a blank line; same fields and errors as "
                       "/v1/completions (max_completion_tokens too)",
            "responses": {"200": {"description": "OK", "content": {"application/json": {}, "text/event-stream": {}}}}}},
        "/admin/models/{name}/reload": {"post": {"summary": "swap in a model file (Authorization: Bearer token); "
                                                            "body {\"path\": ...} optional",
                                                 "responses": {"200": {"description": "reloaded"},
                                                               "401": {"description": "bad token"},
                                                               "422": {"description": "file refused"}}}},
        "/healthz": {"get": _op("liveness", None, json_c, errors=False)},
        "/readyz": {"get": _op("readiness: 200 when every model's worker is up, else 503", None, json_c,
                               errors=False)},
        "/metrics": {"get": _op("Prometheus metrics", None, {"text/plain": {}}, errors=False)},
    }
    return {"openapi": "3.0.3", "info": {"title": "genloom serve", "version": __version__,
                                         "description": "models: " + ", ".join(getattr(server, "services", {}))},
            "paths": paths}


def docs_html(spec: dict[str, Any]) -> str:
    rows = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            fields = ""
            if body:
                fields = "<ul>" + "".join(
                    f"<li><code>{html.escape(k)}</code> — {html.escape(v.get('description', ''))} "
                    f"(default <code>{html.escape(json.dumps(v.get('default')))}</code>)</li>"
                    for k, v in body["properties"].items()) + "</ul>"
            rows.append(f"<h3><code>{method.upper()} {html.escape(path)}</code></h3>"
                        f"<p>{html.escape(op['summary'])}</p>{fields}")
    return ("<!doctype html><meta charset=utf-8><title>genloom serve API</title>"
            "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}</style>"
            f"<h1>genloom serve {html.escape(spec['info']['version'])}</h1>"
            f"<p>{html.escape(spec['info']['description'])} · <a href=/openapi.json>openapi.json</a></p>"
            + "".join(rows))
