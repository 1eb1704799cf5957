"""The server's state without HTTP: one ``ModelService`` (supervised worker + batcher) per served model."""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from genloom.core.batcher import Batcher, Entry
from genloom.core.requests import ModelInfo
from genloom.serve.config import ModelSpec, ServerConfig
from genloom.serve.metrics import Metrics
from genloom.serve.supervisor import Supervisor
from genloom.serve.workers import configure_preload
from genloom.serve import tracing

log = logging.getLogger("genloom.serve")


class ModelService:
    """A served model: its supervisor (worker process) and, for image models, its batcher."""

    def __init__(self, spec: ModelSpec, *, config: ServerConfig, metrics: Metrics) -> None:
        self.name = spec.name
        self.settings = spec.settings
        self.metrics = metrics
        self.supervisor = Supervisor(spec, backoff=config.restart_backoff_s, metrics=metrics)
        self.kind = self.supervisor.kind
        self.batcher: Batcher | None = None
        self._info: tuple[Any, ModelInfo] | None = None
        if self.kind != "lm":
            s = spec.settings
            self.batcher = Batcher(self._run_batch, max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms,
                                   max_queue=s.max_queue, on_batch=self._on_batch)
        metrics.track(model=self.name, depth=lambda: self.batcher.depth if self.batcher else 0,
                      streams=lambda: self.supervisor.open_streams, up=lambda: float(self.supervisor.ready))
        if self.kind == "lm":
            metrics.track_lm(model=self.name, running=lambda: len(self.supervisor.running),
                             waiting=lambda: self.supervisor.open_streams - len(self.supervisor.running))

    @property
    def header(self) -> Any:
        return self.supervisor.header

    @property
    def vocab(self) -> set[str] | None:
        v = self.info.vocab
        return None if v is None else set(v)

    @property
    def info(self) -> ModelInfo:
        """What request validation needs to know (kind, classes, vocabulary) of the file served now."""
        h = self.header
        if self._info is None or self._info[0] is not h:
            self._info = (h, ModelInfo.of_header(h))
        return self._info[1]

    async def start(self) -> None:
        await self.supervisor.start()
        if self.batcher is not None:
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await self.supervisor.stop()

    async def _run_batch(self, entries: list[Entry]) -> list[Any]:
        items, arrays = [], []
        for e in entries:
            item = dict(e.item)
            for key, arr in zip(item.pop("_array_keys", []), e.arrays):
                item[key] = len(arrays)
                arrays.append(arr)
            items.append(item)
        deadline = max(e.deadline for e in entries)
        return await self.supervisor.run_batch(items, arrays, deadline=deadline)

    def _on_batch(self, entries: list[Entry], seconds: float) -> None:
        m = self.metrics
        m.batch_size.labels(self.name).observe(sum(e.size for e in entries))
        m.batch_seconds.labels(self.name).observe(seconds)
        qw = m.queue_wait.labels(self.name)
        size = sum(e.size for e in entries)
        for e in entries:
            if e.started is not None:
                qw.observe(e.started - e.enqueued)
                if tracing.ENABLED:
                    tracing.record("genloom.queue_wait", start=e.enqueued, end=e.started, model=self.name,
                                   request_id=e.request_id)
        if tracing.ENABLED and entries[0].started is not None:
            tracing.record("genloom.batch", start=entries[0].started, end=entries[0].started + seconds,
                           model=self.name, size=size, requests=len(entries))

    def describe(self) -> dict[str, Any]:
        h = self.header
        return {"name": self.name, "kind": self.kind, "config": h.config, "provenance": h.provenance,
                "ready": self.supervisor.ready,
                "limits": {"max_n": self.settings.max_n, "max_new_tokens": self.settings.max_new_tokens,
                           "max_batch_size": self.settings.max_batch_size,
                           "max_wait_ms": self.settings.max_wait_ms, "timeout_s": self.settings.timeout_s}}

    def status(self) -> dict[str, Any]:
        sup = self.supervisor
        return {"ready": sup.ready, "state": sup.state, "pid": sup.worker.pid if sup.worker else None,
                "restarts": sup.restarts, "queue_depth": self.batcher.depth if self.batcher else 0,
                "streams": sup.open_streams}


class Server:
    """All served models, started and stopped together (the ASGI lifespan calls start/stop)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.services = {spec.name: ModelService(spec, config=config, metrics=self.metrics) for spec in config.models}
        configure_preload({s.kind for s in self.services.values()})
        self.draining = False
        self.started = False
        self.start_error: str | None = None

    async def start(self) -> None:
        t0 = time.monotonic()
        results = await asyncio.gather(*(s.start() for s in self.services.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            self.start_error = str(errors[0])
            await self.stop()
            raise errors[0]
        self.started = True
        # Everything loaded so far (torch, numpy, the app) lives for the whole run: move it out of the GC's view,
        # so a full collection scans only per-request garbage instead of pausing ~100 ms over torch's objects.
        gc.collect()
        gc.freeze()
        log.info("models ready", extra={"models": list(self.services), "seconds": round(time.monotonic() - t0, 3)})

    async def stop(self) -> None:
        self.draining = True
        await asyncio.gather(*(s.stop() for s in self.services.values()), return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and all(s.supervisor.ready for s in self.services.values())
