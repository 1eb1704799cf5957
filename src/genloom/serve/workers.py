"""Supervised model worker processes: start, watch, restart with backoff, retry once, hot-swap.

One ``Supervisor`` per served model owns its current ``WorkerProcess``. A worker that dies (kill -9, OOM, a
segfault) is noticed at once — its pipe closes — and every batch it held is retried once on the restarted
worker; a second failure is answered 503. Nothing waits forever: batches are bounded by their requests'
deadlines, and a worker that stops answering past them is killed and replaced.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
from multiprocessing import forkserver
import os
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import numpy as np

from genloom.errors import GenloomError
from genloom.serve import ipc

START_TIMEOUT_S = 120.0
HANG_GRACE_S = 5.0  # a batch still running this long after its last deadline means a hung worker
_ctx_lock = threading.Lock()
_ctx: Any = None
_preload = ["genloom.core.forkserver_guard", "genloom.serve.worker_main"]  # the guard: it dies with the server
# modules a kind imports lazily on load; preloading them keeps restarts fast. Building a module on the meta
# device imports torch._dynamo (4 s on a busy CPU), so the LM's restart would otherwise take seconds.
PRELOAD_BY_KIND = {"lm": ["torch._dynamo", "genloom.models.transformer", "genloom.models.lm_generate"],
                   "gan": ["genloom.models.gan"]}


def configure_preload(kinds: set[str]) -> None:
    """Call before the first worker starts: what the forkserver imports once for every worker of these kinds."""
    for kind in sorted(kinds):
        for mod in PRELOAD_BY_KIND.get(kind, []):
            if mod not in _preload:
                _preload.append(mod)


def mp_context() -> Any:
    """A forkserver that has imported torch and the engine once: a (re)start forks it in milliseconds."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            _ctx = mp.get_context("forkserver")
            _ctx.set_forkserver_preload(list(_preload))
        return _ctx


class WorkerCrashed(Exception):
    """The worker process died while holding this work."""


class WorkerUnavailable(Exception):
    """No live worker within the deadline (restarting, or failed twice): HTTP 503."""


class ModelLoadError(GenloomError):
    """The model file could not be loaded by a worker (bad file on start or reload)."""


class InputRejected(GenloomError):
    """The engine refused one request's input (HTTP 422)."""


class WorkerProcess:
    """Server-side handle of one worker process: a pipe, a reader thread, the futures it owes."""

    def __init__(self, path: Path, *, threads: int, slots: int, backend: str = "auto", device: str = "cpu",
                 precision: str = "auto",
                 on_exit: Callable[["WorkerProcess"], None],
                 on_tokens: Callable[["WorkerProcess", dict[str, Any]], None]) -> None:
        self.path = path
        self.threads, self.slots, self.backend = threads, slots, backend
        self.device, self.precision = device, precision
        self.on_exit, self.on_tokens = on_exit, on_tokens
        self.pending: dict[int, asyncio.Future] = {}  # batch id -> future of its outputs
        self.streams: dict[int, asyncio.Queue] = {}  # LM request id -> its event queue
        self.retired = False
        self.dead = False  # set once, by whoever notices first (pipe EOF, failed send, is_alive() false)
        self.pid: int | None = None
        self.started_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future = self._loop.create_future()
        self._conn: Connection | None = None
        self._proc: Any = None
        self._send_lock = threading.Lock()

    async def start(self, *, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        from genloom.serve import worker_main

        ctx = mp_context()
        # start (or restart) the forkserver from this thread, the event loop's, which lives as long as the server:
        # the forkserver's parent-death signal (core/forkserver_guard.py) is tied to the thread that starts it
        forkserver.ensure_running()
        parent, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=worker_main.main,
                                 args=(child, str(self.path), self.threads, self.slots, os.getpid(), self.backend,
                                       self.device, self.precision),
                                 daemon=True, name=f"genloom-worker:{self.path.name}")
        await asyncio.to_thread(self._proc.start)  # the first start launches the forkserver (imports torch)
        child.close()
        self._conn = parent
        self.pid = self._proc.pid
        self.started_at = time.monotonic()
        threading.Thread(target=self._read, daemon=True, name=f"genloom-reader-{self.pid}").start()
        try:
            msg = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.kill()
            raise ModelLoadError(f"{self.path}: the worker did not load the model within {timeout:.0f}s") from None
        if msg.get("op") != "ready":
            self.kill()
            raise ModelLoadError(msg.get("error") or f"{self.path}: the worker exited while loading the model")
        return msg

    @property
    def alive(self) -> bool:
        return not self.dead and self._proc is not None and self._proc.is_alive()

    def send(self, header: dict[str, Any], arrays: list[np.ndarray] | None = None) -> None:
        if self._conn is None:
            raise WorkerCrashed("worker not started")
        try:
            with self._send_lock:
                self._conn.send_bytes(ipc.encode(header, arrays))
        except (BrokenPipeError, OSError) as e:
            raise WorkerCrashed(f"worker pipe closed: {e}") from None

    def kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()

    async def stop(self, *, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout``."""
        self.retired = True
        try:
            self.send({"op": "stop"})
        except WorkerCrashed:
            pass
        if self._proc is not None:
            await asyncio.to_thread(self._proc.join, timeout)
            if self._proc.is_alive():
                self._proc.kill()
                await asyncio.to_thread(self._proc.join, 1.0)

    # -- reader thread --------------------------------------------------------------------------------------
    def _read(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            while True:
                try:
                    header, arrays = ipc.decode(conn.recv_bytes())
                except (EOFError, OSError):
                    break
                self._loop.call_soon_threadsafe(self._dispatch, header, arrays)
            self._loop.call_soon_threadsafe(self._closed)
        except RuntimeError:  # the event loop is closed: the server is gone, nobody is waiting
            pass

    def _dispatch(self, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        op = header.get("op")
        if op in ("ready", "load_error"):
            if not self._ready.done():
                self._ready.set_result(header)
        elif op == "result":
            fut = self.pending.pop(header["id"], None)
            if fut is not None and not fut.done():
                fut.set_result((header, arrays))
        elif op == "tokens":
            self.on_tokens(self, header)

    def _closed(self) -> None:
        if not self._ready.done():
            self._ready.set_result({"op": "load_error"})
        if self._proc is not None:
            self._proc.join(0)  # reap
        crash = WorkerCrashed(f"worker process {self.pid} exited")
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(crash)
        self.pending.clear()
        for q in self.streams.values():
            q.put_nowait(("crash", str(crash)))
        self.notice_death()

    def notice_death(self) -> None:
        """Tell the supervisor (once) that this worker is gone, so it stops routing work here and restarts."""
        if not self.dead:
            self.dead = True
            self.on_exit(self)


def unpack_outputs(header: dict[str, Any], arrays: list[np.ndarray]) -> list[Any]:
    """A worker's batch result → one numpy array or exception per item."""
    if not header.get("ok"):
        raise RuntimeError(f"model worker failed the batch: {header.get('error')}")
    out: list[Any] = []
    for o in header["outputs"]:
        if o.get("ok"):
            out.append(arrays[o["array"]])
        elif o.get("input"):
            out.append(InputRejected(o.get("error", "invalid input")))
        else:
            out.append(RuntimeError(o.get("error", "inference failed")))
    return out
