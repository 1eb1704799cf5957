"""Route handlers of the HTTP API (``app.py`` holds the app factory and the HTTP plumbing)."""
from __future__ import annotations

import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from genloom.core import requests
from genloom.core.batcher import DeadlineExceeded, Overloaded
from genloom.engine.base import check_images
from genloom.errors import GenloomError
from genloom.serve import edge
from genloom.serve import logs
from genloom.serve.encode import EXTRA, MEDIA, encode_images
from genloom.serve.openapi import docs_html, openapi_spec
from genloom.serve.service import ModelService, Server
from genloom.serve.workers import InputRejected, ModelLoadError, WorkerUnavailable

Handler = Callable[[Request, str], Awaitable[Response]]
log = logging.getLogger("genloom.serve")


def routes(server: Server) -> list[BaseRoute]:
    cfg = server.config

    def endpoint(name: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Request id, error mapping, metrics and the access log around one handler."""

        async def run(request: Request) -> Response:
            t0 = time.monotonic()
            rid = edge.new_request_id(request)
            model = request.path_params.get("name")
            try:
                resp = await handler(request, rid)
            except edge.HTTPError as e:
                resp = edge.error_response(e, rid)
            except requests.RequestError as e:  # an operation this model does not have: no such resource
                resp = edge.error_response(edge.HTTPError(404 if e.field == "op" else 422, str(e), field=e.field),
                                           rid)
            except GenloomError as e:  # the caller's fault (bad input, bad file): 422 with the message
                resp = edge.error_response(edge.HTTPError(422, str(e)), rid)
            except Exception:  # a bug, not the caller's fault: 500, traceback in the log
                log.exception("internal error", extra={"request_id": rid, "path": request.url.path})
                resp = edge.error_response(edge.HTTPError(500, f"internal error (request id {rid}); see the "
                                                               f"server log"), rid)
            resp.headers["X-Request-Id"] = rid
            known = model if model in server.services else None
            if known is not None:
                status = str(resp.status_code)
                server.metrics.requests.labels(known, name, status).inc()
                server.metrics.latency.labels(known, name, status).observe(time.monotonic() - t0)
                if resp.status_code in (429, 503, 504):
                    server.metrics.rejected.labels(known, "deadline" if resp.status_code == 504 else "overload").inc()
            if cfg.access_log:
                logs.log_request(request_id=rid, method=request.method, path=request.url.path, model=model,
                                 status=resp.status_code, t0=t0)
            return resp

        return run

    def service(request: Request) -> ModelService:
        name = request.path_params["name"]
        svc = server.services.get(name)
        if svc is None:
            raise edge.HTTPError(404, f"unknown model {name!r}; GET /v1/models lists: {', '.join(server.services)}",
                                 field="name")
        return svc

    async def submit(request: Request, svc: ModelService, item: dict[str, Any], *, size: int, deadline: float,
                     rid: str, arrays: list[np.ndarray] | None = None) -> np.ndarray:
        assert svc.batcher is not None
        try:
            entry = svc.batcher.submit(item, size=size, deadline=deadline, arrays=arrays, request_id=rid)
            return await edge.wait_result(request, entry.future, deadline)
        except Overloaded as e:
            raise edge.HTTPError(cfg.overload_status, f"model {svc.name!r} is overloaded: {e}; retry later",
                                 headers=edge.retry_after(e.retry_after)) from None
        except DeadlineExceeded:
            raise edge.HTTPError(504, "deadline passed while queued; raise X-Request-Timeout or retry later"
                                 ) from None
        except WorkerUnavailable as e:
            raise edge.HTTPError(503, str(e), headers=edge.retry_after(1)) from None
        except InputRejected as e:
            raise edge.HTTPError(422, str(e)) from None

    async def body_of(request: Request, svc: ModelService, op: str) -> tuple[dict[str, Any], float]:
        if svc.kind not in requests.KINDS_OF_OP[op]:  # before reading the body: 404 for an op this model lacks
            requests.check_model(op, {}, svc.info)
        body = await edge.read_body(request, cfg.max_body_bytes)
        params = requests.parse(op, body, limits=svc.settings.limits, model=svc.info, extra=EXTRA[op])
        return params, edge.request_deadline(request, svc.settings.timeout_s)

    def image_response(images: np.ndarray, fmt: str, svc: ModelService) -> Response:
        return Response(encode_images(images, fmt, meta={"model": svc.name}), media_type=MEDIA[fmt])

    async def sample(request: Request, rid: str) -> Response:
        svc = service(request)
        p, deadline = await body_of(request, svc, "sample")
        item = {"op": "sample", "n": p["n"], "seed": p["seed"], "labels": p["labels"],
                **{k: p[k] for k in requests.FLOW_ONLY if p.get(k) is not None}}  # flow: steps, guidance, sampler
        images = await submit(request, svc, item, size=p["n"], deadline=deadline, rid=rid)
        return image_response(images, p["format"], svc)

    async def trajectory(request: Request, rid: str) -> Response:
        svc = service(request)
        p, deadline = await body_of(request, svc, "trajectory")
        item = {"op": "trajectory", "n": p["n"], "seed": p["seed"], "labels": p["labels"], "steps": p["steps"],
                "guidance": p["guidance"], "sampler": p["sampler"]}
        images = await submit(request, svc, item, size=p["n"], deadline=deadline, rid=rid)
        steps = p["steps"] or int(svc.header.config.get("sample_steps", 8))
        return Response(encode_images(images, p["format"], meta={"model": svc.name}, nrow=steps + 1),
                        media_type=MEDIA[p["format"]])

    async def reconstruct(request: Request, rid: str) -> Response:
        svc = service(request)
        p, deadline = await body_of(request, svc, "reconstruct")
        flat = check_images(p["images"], field="images", x_dim=int(svc.header.config.get("x_dim", 784)),
                            max_n=svc.settings.max_n)
        item = {"op": "reconstruct", "labels": p["labels"], "_array_keys": ["array"]}
        images = await submit(request, svc, item, size=len(flat), deadline=deadline, rid=rid,
                              arrays=[flat])
        return image_response(images, p["format"], svc)

    async def interpolate(request: Request, rid: str) -> Response:
        svc = service(request)
        p, deadline = await body_of(request, svc, "interpolate")
        item = {"op": "interpolate", "a": p["a"], "b": p["b"], "steps": p["steps"], "label": p["label"]}
        images = await submit(request, svc, item, size=p["steps"], deadline=deadline, rid=rid)
        return image_response(images, p["format"], svc)

    async def generate(request: Request, rid: str) -> Response:
        from genloom.serve.streaming import generate_response

        svc = service(request)
        p, deadline = await body_of(request, svc, "generate")
        return await generate_response(request, svc, p, deadline=deadline, request_id=rid)

    async def models(request: Request, rid: str) -> Response:
        from genloom.serve.openai import model_entry

        described = [s.describe() for s in server.services.values()]
        # OpenAI's list format ("object": "list", "data": [{"id", "object", "created", "owned_by", ...}]) for
        # OpenAI clients; "models" is the same list in genloom's original format (the playground reads it)
        return JSONResponse({"object": "list", "data": [model_entry(s, d) for s, d in
                                                         zip(server.services.values(), described)],
                             "models": described})

    async def healthz(request: Request, rid: str) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request, rid: str) -> Response:
        body = {"ready": server.ready, "draining": server.draining,
                "models": {n: s.status() for n, s in server.services.items()}}
        return JSONResponse(body, status_code=200 if server.ready else 503)

    async def metrics(request: Request, rid: str) -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    async def reload(request: Request, rid: str) -> Response:
        if not cfg.admin_token:
            raise edge.HTTPError(403, "admin endpoints are disabled; start the server with GENLOOM_ADMIN_TOKEN set")
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, f"Bearer {cfg.admin_token}".encode()):  # constant time
            raise edge.HTTPError(401, "missing or wrong bearer token (Authorization: Bearer $GENLOOM_ADMIN_TOKEN)",
                                 headers={"WWW-Authenticate": "Bearer"})
        svc = service(request)
        body = await edge.read_body(request, cfg.max_body_bytes)
        try:
            data = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError:
            raise edge.HTTPError(422, "body must be JSON like {\"path\": \"model.safetensors\"}", field="body"
                                 ) from None
        path = data.get("path") if isinstance(data, dict) else None
        if path is not None and not isinstance(path, str):
            raise edge.HTTPError(422, "path must be a string", field="path")
        try:
            out = await svc.supervisor.reload(Path(path) if path else None)
        except ModelLoadError as e:
            server.metrics.reloads.labels(svc.name, "refused").inc()
            raise edge.HTTPError(422, f"reload refused, the old model keeps serving: {e}", field="path") from None
        server.metrics.reloads.labels(svc.name, "ok").inc()
        return JSONResponse(out)

    async def openapi(request: Request, rid: str) -> Response:
        return JSONResponse(openapi_spec(server))

    async def docs(request: Request, rid: str) -> Response:
        return HTMLResponse(docs_html(openapi_spec(server)))

    table = [
        ("/v1/models", "models", models, ["GET"]),
        ("/v1/models/{name}/sample", "sample", sample, ["POST"]),
        ("/v1/models/{name}/generate", "generate", generate, ["POST"]),
        ("/v1/models/{name}/reconstruct", "reconstruct", reconstruct, ["POST"]),
        ("/v1/models/{name}/interpolate", "interpolate", interpolate, ["POST"]),
        ("/v1/models/{name}/trajectory", "trajectory", trajectory, ["POST"]),
        ("/admin/models/{name}/reload", "reload", reload, ["POST"]),
        ("/healthz", "healthz", healthz, ["GET"]),
        ("/readyz", "readyz", readyz, ["GET"]),
        ("/metrics", "metrics", metrics, ["GET"]),
        ("/openapi.json", "openapi", openapi, ["GET"]),
        ("/docs", "docs", docs, ["GET"]),
    ]
    return [Route(path, endpoint(name, fn), methods=methods, name=name) for path, name, fn, methods in table]
