"""One ``Supervisor`` per served model: its worker process, restarts with backoff, retries, hot reload."""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from genloom.core.supervision import Backoff
from genloom.export import ModelFile, read_header
from genloom.serve import tracing
from genloom.core.batcher import DeadlineExceeded, Overloaded
from genloom.serve.config import ModelSpec
from genloom.serve.workers import (HANG_GRACE_S, InputRejected, ModelLoadError, WorkerCrashed, WorkerProcess,
                                   WorkerUnavailable, unpack_outputs)

log = logging.getLogger("genloom.serve")
STABLE_S = 10.0  # a worker that lived this long resets the restart backoff
_ids = itertools.count(1)


class Supervisor:
    def __init__(self, spec: ModelSpec, *, backoff: tuple[float, float] = (0.05, 5.0),
                 metrics: Any = None) -> None:
        self.name = spec.name
        self.settings = spec.settings
        self.path = Path(spec.path)
        self.header: ModelFile = read_header(self.path)
        self.kind = self.header.kind
        self.backoff = Backoff(*backoff, stable_s=STABLE_S)
        self._delay = 0.0
        self.metrics = metrics
        self.worker: WorkerProcess | None = None
        self.state = "starting"  # starting | ready | restarting | stopped
        self.restarts = 0
        self._ready = asyncio.Event()
        self._stopping = False
        self._restart_task: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()
        self.open_streams = 0
        self.running: set[int] = set()  # LM request ids holding a decode slot (the rest of open_streams wait)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _new_worker(self, path: Path) -> WorkerProcess:
        return WorkerProcess(path, threads=self.settings.threads, slots=self.settings.max_batch_size,
                             backend=self.settings.backend, device=self.settings.device,
                             precision=self.settings.precision,
                             on_exit=self._on_exit, on_tokens=self._on_tokens)

    async def start(self) -> None:
        w = self._new_worker(self.path)
        await w.start()  # ModelLoadError propagates: a bad file at start-up stops the server with its message
        self._install(w)

    def _install(self, w: WorkerProcess) -> None:
        self.worker = w
        self.state = "ready"
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.worker is not None and self.worker.alive

    async def stop(self) -> None:
        self._stopping = True
        self.state = "stopped"
        self._ready.clear()
        if self._restart_task is not None:
            self._restart_task.cancel()
        if self.worker is not None:
            await self.worker.stop()

    def _on_exit(self, w: WorkerProcess) -> None:
        if w.retired or self._stopping or w is not self.worker:
            return
        lived = time.monotonic() - w.started_at
        self._delay = self.backoff.next(lived)
        self.restarts += 1
        self.state = "restarting"
        self._ready.clear()
        if self.metrics is not None:
            self.metrics.worker_restarts.labels(self.name).inc()
        log.warning("worker crashed", extra={"model": self.name, "pid": w.pid, "restarts": self.restarts})
        self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        delay = self._delay
        while not self._stopping:
            await asyncio.sleep(delay)  # core.supervision.Backoff: a worker that keeps crashing does not spin
            w = self._new_worker(self.path)
            try:
                await w.start()
            except ModelLoadError as e:
                log.error("worker restart failed", extra={"model": self.name, "error": str(e)})
                delay = self.backoff.next(0.0)
                continue
            if self._stopping:
                await w.stop()
                return
            self._install(w)
            log.info("worker restarted", extra={"model": self.name, "pid": w.pid})
            return

    async def reload(self, path: Path | None = None) -> dict[str, Any]:
        """Load ``path`` (default: the current file again) in a new worker, then swap it in atomically.

        The new worker is fully loaded before any request reaches it, and the old one finishes what it holds
        before it exits, so no request fails. A file that does not load raises ModelLoadError; the old model
        keeps serving.
        """
        async with self._reload_lock:
            path = Path(path or self.path)
            try:
                header = read_header(path)
            except Exception as e:
                raise ModelLoadError(str(e)) from None
            if header.kind != self.kind:
                raise ModelLoadError(f"{path} is a {header.kind} model; {self.name!r} serves a {self.kind} model — "
                                     f"serve it under another name")
            new = self._new_worker(path)
            await new.start()
            old = self.worker
            self.path, self.header = path, header
            self._install(new)
            if old is not None:
                old.retired = True
                asyncio.get_running_loop().create_task(self._retire(old))
            log.info("model reloaded", extra={"model": self.name, "path": str(path), "pid": new.pid})
            return {"model": self.name, "path": str(path), "pid": new.pid}

    async def _retire(self, old: WorkerProcess, *, timeout: float = 60.0) -> None:
        t_end = time.monotonic() + timeout
        while (old.pending or old.streams) and time.monotonic() < t_end and old.alive:
            await asyncio.sleep(0.01)
        await old.stop()

    async def _wait_ready(self, deadline: float) -> WorkerProcess:
        w = self.worker
        if w is not None and self._ready.is_set() and not w.alive:
            w.notice_death()  # died a moment ago; its pipe EOF has not reached the reader thread yet
        if not self.ready:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._ready.wait(), max(0.0, left))
            except TimeoutError:
                raise WorkerUnavailable(f"model {self.name!r} is restarting; retry shortly") from None
        assert self.worker is not None
        return self.worker

    # -- image batches ----------------------------------------------------------------------------------------
    async def run_batch(self, items: list[dict[str, Any]], arrays: list[np.ndarray], *, deadline: float
                        ) -> list[Any]:
        """Send one batch; on a worker crash retry it once on the restarted worker, then give up with 503."""
        for attempt in (0, 1):
            w = await self._wait_ready(deadline)
            bid = next(_ids)
            fut = asyncio.get_running_loop().create_future()
            w.pending[bid] = fut
            try:
                w.send({"op": "batch", "id": bid, "items": items}, arrays)
                header, out_arrays = await asyncio.wait_for(fut, deadline - time.monotonic() + HANG_GRACE_S)
            except WorkerCrashed:
                w.pending.pop(bid, None)
                w.notice_death()
                if attempt == 1:
                    raise WorkerUnavailable(f"model {self.name!r}: the worker crashed twice on this batch") from None
                if self.metrics is not None:
                    self.metrics.retries.labels(self.name).inc()
                continue
            except TimeoutError:  # the worker stopped answering: replace it
                w.pending.pop(bid, None)
                w.kill()
                raise WorkerUnavailable(f"model {self.name!r}: the worker stopped responding; restarting it"
                                        ) from None
            if tracing.ENABLED and "compute_s" in header:
                now = time.monotonic()
                tracing.record("genloom.inference", start=now - header["compute_s"], end=now, model=self.name,
                               pid=w.pid, items=len(items))
            return unpack_outputs(header, out_arrays)
        raise AssertionError("unreachable")

    # -- LM streams -------------------------------------------------------------------------------------------
    def _on_tokens(self, w: WorkerProcess, header: dict[str, Any]) -> None:
        for rid, waited in header.get("admitted", ()):
            if rid in w.streams:
                self.running.add(rid)
                if self.metrics is not None:
                    self.metrics.lm_queue.labels(self.name).observe(waited)
        for rid, text in header.get("events", []):
            q = w.streams.get(rid)
            if q is not None:
                q.put_nowait(("token", text))
        n = int(header.get("n", 0))  # tokens sampled in this decode step, over all requests
        for rid, reason, error, *ntok in header.get("done", []):
            q = w.streams.get(rid)
            if q is not None:
                q.put_nowait(("error", error) if error else ("done", (reason, ntok[0] if ntok else None)))
        if n and self.metrics is not None:
            self.metrics.tokens.labels(self.name).inc(n)

    async def stream(self, params: dict[str, Any], *, deadline: float, idle_s: float | None = None,
                     info: dict[str, Any] | None = None) -> AsyncIterator[str]:
        """Tokens (as text) of one LM request, joined to the worker's running decode loop.

        ``deadline`` bounds the whole generation; with ``idle_s`` (streaming) it bounds only the first token,
        and after it each next token must come within ``idle_s`` — a long stream may run as long as the client
        reads it, a stalled one still ends.

        A crash before the first token retries once on the restarted worker; after it, the stream fails with
        WorkerUnavailable (the client has text it cannot un-receive). Closing the iterator (the client left)
        removes the request from the decode loop at the next step. ``info`` (optional) receives
        ``finish_reason`` ("stop" | "length") and ``completion_tokens`` when the generation completes.
        """
        t_start = time.monotonic()
        m = self.metrics
        limit = self.settings.max_batch_size + self.settings.max_queue
        if self.open_streams >= limit:
            raise Overloaded(f"{self.open_streams} generations in progress or waiting (limit {limit})",
                             retry_after=1.0)
        self.open_streams += 1
        try:
            for attempt in (0, 1):
                w = await self._wait_ready(deadline)
                rid = next(_ids)
                q: asyncio.Queue = asyncio.Queue()
                w.streams[rid] = q
                produced, finished = False, False
                t_last = 0.0
                try:
                    w.send({"op": "lm_add", "rid": rid, **params})
                    while True:
                        left = (deadline - time.monotonic() if idle_s is None or not produced else idle_s)
                        try:
                            kind, value = await asyncio.wait_for(q.get(), max(0.0, left))
                        except TimeoutError:
                            raise DeadlineExceeded("deadline passed during generation") from None
                        if kind == "token":
                            now = time.monotonic()
                            if m is not None:
                                if produced:
                                    m.inter_token.labels(self.name).observe(now - t_last)
                                else:
                                    m.ttft.labels(self.name).observe(now - t_start)
                            produced, t_last = True, now
                            yield value
                        elif kind == "done":
                            finished = True
                            if m is not None:
                                m.e2e.labels(self.name).observe(time.monotonic() - t_start)
                            if info is not None:
                                info["finish_reason"], info["completion_tokens"] = value
                            return
                        elif kind == "error":
                            finished = True
                            raise InputRejected(value)
                        else:  # crash
                            finished = True
                            if produced or attempt == 1:
                                raise WorkerUnavailable(f"model {self.name!r}: the worker crashed mid-generation")
                            break
                except WorkerCrashed:
                    w.notice_death()
                    if attempt == 1:
                        raise WorkerUnavailable(f"model {self.name!r}: the worker is restarting") from None
                finally:
                    w.streams.pop(rid, None)
                    self.running.discard(rid)
                    if not finished:
                        try:
                            w.send({"op": "lm_cancel", "rid": rid})
                        except WorkerCrashed:
                            pass
        finally:
            self.open_streams -= 1
