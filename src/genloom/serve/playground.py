"""The web playground at ``GET /``: static HTML/JS/CSS from ``playground/`` plus two small JSON endpoints.

Mounted by ``app.EXTRA_ROUTES``. Everything is served by genloom itself (no CDN, no build step):

    GET /                      the page (playground/index.html)
    GET /playground/{file}     its assets (app.js, style.css)
    GET /playground/info       per-model extras the page needs: LM vocabulary, class names of conditional models
    GET /playground/stats      a JSON snapshot of the server's own Prometheus registry (cumulative counters,
                               histogram buckets, gauges); the page turns two snapshots into rates and a p99
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from genloom.serve.service import Server

HERE = Path(__file__).resolve().parent / "playground"
NO_CACHE = {"Cache-Control": "no-cache"}  # a reloaded server may serve a newer page


def class_names(dataset: str | None, num_classes: int) -> list[str]:
    """Names of a conditional model's labels: the dataset's class names when known, else the label numbers."""
    from genloom.data.images import DATASETS

    spec = DATASETS.get(dataset or "")
    if spec is not None and len(spec.classes) == num_classes:
        return list(spec.classes)
    return [str(i) for i in range(num_classes)]


def model_info(server: Server) -> dict[str, Any]:
    """What /v1/models does not carry: an LM's vocabulary (to pick a valid default prompt) and label names."""
    out: dict[str, Any] = {}
    for name, svc in server.services.items():
        header = svc.header
        raw_vocab = header.metadata.get("genloom.vocab")
        num_classes = int(header.config.get("num_classes", 0) or 0)
        out[name] = {
            "vocab": json.loads(raw_vocab) if raw_vocab else None,
            "class_names": class_names(header.provenance.get("dataset"), num_classes) if num_classes else [],
        }
    return out


def _histogram(samples: list[Any]) -> dict[str, Any]:
    """Cumulative buckets summed over every model and endpoint: {"le": [...], "counts": [...], "count", "sum"}."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for s in samples:
        if s.name.endswith("_bucket"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name.endswith("_count"):
            count += s.value
        elif s.name.endswith("_sum"):
            total += s.value
    edges = sorted(buckets)
    # +Inf is not valid JSON: the last bucket's upper edge is sent as null
    return {"le": [None if e == float("inf") else e for e in edges], "counts": [buckets[e] for e in edges],
            "count": count, "sum": total}


def stats(server: Server) -> dict[str, Any]:
    """One snapshot of the registry. Counters and histograms are cumulative; the client differences them."""
    families = {m.name: m for m in server.metrics.registry.collect()}

    def samples(name: str) -> list[Any]:
        fam = families.get(name)
        return list(fam.samples) if fam is not None else []

    def per_model(name: str, suffix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        for s in samples(name):
            if s.name == name + suffix:
                out[s.labels["model"]] = out.get(s.labels["model"], 0.0) + s.value
        return out

    requests = samples("genloom_requests")
    models: dict[str, Any] = {}
    for name, svc in server.services.items():
        reqs = [s for s in requests if s.name == "genloom_requests_total" and s.labels["model"] == name]
        models[name] = {
            "kind": svc.kind, "ready": svc.supervisor.ready,
            "requests": sum(s.value for s in reqs),
            "errors": sum(s.value for s in reqs if int(s.labels["status"]) >= 400),
        }
    for key, (family, suffix) in {"queue_depth": ("genloom_queue_depth", ""),
                                  "streams": ("genloom_active_streams", ""),
                                  "tokens": ("genloom_tokens_generated", "_total"),
                                  "restarts": ("genloom_worker_restarts", "_total")}.items():
        values = per_model(family, suffix)
        for name in models:
            models[name][key] = values.get(name, 0.0)
    return {
        "t": time.monotonic(),  # seconds; rates use the server's clock, not the browser's
        "ready": server.ready,
        "models": models,
        "requests": sum(m["requests"] for m in models.values()),
        "errors": sum(m["errors"] for m in models.values()),
        "tokens": sum(m["tokens"] for m in models.values()),
        "queue_depth": sum(m["queue_depth"] for m in models.values()),
        "streams": sum(m["streams"] for m in models.values()),
        "latency": _histogram(samples("genloom_request_latency_seconds")),
        "batch_size": _histogram(samples("genloom_batch_size")),
    }


def routes(server: Server) -> list[BaseRoute]:
    """``app.EXTRA_ROUTES`` hook: the page, its JSON endpoints and its static assets."""

    async def index(request: Request) -> Response:
        return FileResponse(HERE / "index.html", media_type="text/html; charset=utf-8", headers=NO_CACHE)

    async def info(request: Request) -> Response:
        return JSONResponse(model_info(server), headers=NO_CACHE)

    async def snapshot(request: Request) -> Response:
        return JSONResponse(stats(server), headers={"Cache-Control": "no-store"})

    return [
        Route("/", index, methods=["GET"], name="playground"),
        Route("/playground/info", info, methods=["GET"], name="playground_info"),
        Route("/playground/stats", snapshot, methods=["GET"], name="playground_stats"),
        Mount("/playground", StaticFiles(directory=HERE), name="playground_static"),
    ]
