"""The model worker process: loads one model file through ``genloom.engine`` and serves batches over a pipe.

Messages (``serve/ipc.py`` framing, no pickle). Server → worker:

- ``{"op": "batch", "id": B, "items": [{"op": "sample"|"reconstruct"|"interpolate", ...}]}``: one batch; every
  sample item is drawn with its own seed and all of them decoded in one forward pass.
- ``{"op": "lm_add", "rid": R, "prompt": ..., "max_new_tokens": ..., ...}`` / ``{"op": "lm_cancel", "rid": R}``:
  LM continuous batching — requests join and leave the decode loop between steps.
- ``{"op": "stop"}``: finish and exit.

Worker → server: ``ready`` (or ``load_error``), ``result`` per batch, ``tokens`` per decode step.
The process exits when the pipe closes or the server dies (``core.supervision.bind_to_parent``), so a dead
server never leaves orphans.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from genloom.serve import ipc

# imported here so a forkserver preloads them once and every (re)started worker forks with them in memory:
# a restart after kill -9 then costs a fork and a model load (~50 ms), not a torch import (seconds).
# workers.configure_preload() adds the LM's modules when an LM is served.
import torch
import genloom.engine.image
import genloom.export  # noqa: F401


def _error(e: BaseException) -> dict[str, Any]:
    from genloom.errors import GenloomError

    # only genloom's own errors are the caller's fault (422); anything else is a bug (500, traceback logged)
    return {"error": str(e) or type(e).__name__, "input": isinstance(e, GenloomError)}


class ImageWorker:
    """Runs batches of image requests on a VAE/GAN engine through ``core.runner.run_batch``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.rng = np.random.default_rng()  # unseeded requests share one stream (a Generator costs ~20 µs)

    def run(self, items: list[dict[str, Any]], arrays: list[np.ndarray]) -> tuple[list[dict], list[np.ndarray]]:
        from genloom.core.runner import run_batch

        reqs = [{**it, "images": arrays[it["array"]].copy()} if it["op"] == "reconstruct" else it for it in items]
        outs: list[dict[str, Any]] = []
        arrs: list[np.ndarray] = []
        for res in run_batch(self.engine, reqs, rng=self.rng):
            if isinstance(res, BaseException):
                outs.append({"ok": False, **_error(res)})
                if not outs[-1]["input"]:  # a bug: its traceback goes to the log
                    traceback.print_exception(res, file=sys.stderr)
            else:
                outs.append({"ok": True, "array": len(arrs)})
                arrs.append(np.asarray(res, dtype=np.float32))
        return outs, arrs


class TorchSampler:
    """For a kind the engine does not cover (yet): ``sample`` via the model's own ``generate``, and the raw
    model for the LM (whose decode loop lives in ``lm_worker``)."""

    def __init__(self, model: Any, kind: str) -> None:
        self.model, self.kind = model, kind

    def sample(self, n: int, *, seed: int | None = None, labels: Any = None) -> np.ndarray:
        from genloom.engine.base import check_labels, check_n, check_seed

        n = check_n(n)
        y = check_labels(labels, n, int(getattr(self.model.config, "num_classes", 0)))
        gen = torch.Generator().manual_seed(check_seed(seed))
        with torch.inference_mode():
            out = self.model.generate(n, generator=gen, labels=None if y is None else torch.from_numpy(y))
        # GAN generators end in tanh ([-1, 1]); VAE decoders in a sigmoid ([0, 1])
        x = out.float().numpy().reshape(n, 28, 28)  # (n, 28, 28)
        return np.clip((x + 1) / 2 if x.min() < 0 else x, 0.0, 1.0)


def _load(path: str, threads: int, backend: str = "auto", device: str = "cpu", precision: str = "auto") -> Any:
    import genloom.engine as engine_mod
    from genloom.export import load, read_header

    kind = read_header(path).kind
    try:
        engine = engine_mod.load(path, threads=threads, backend=backend if kind != "lm" else "auto", device=device,
                                 precision=precision)
        if kind != "lm" or hasattr(engine, "model"):
            return engine
    except Exception as e:
        if "does not serve models of kind" not in str(e):
            raise
    torch.set_num_threads(threads)
    return TorchSampler(load(path), kind)


def main(conn: Connection, path: str, threads: int, slots: int, supervisor_pid: int | None = None,
         backend: str = "auto", device: str = "cpu", precision: str = "auto") -> None:
    """Entry point of the worker process (forked by the forkserver: it dies with the server, see
    ``core.supervision``)."""
    from genloom.core.supervision import bind_to_parent

    bind_to_parent(supervisor_pid)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        engine = _load(path, threads, backend, device, precision)
    except Exception as e:  # an invalid file: tell the server and exit; the old worker (if any) keeps serving
        conn.send_bytes(ipc.encode({"op": "load_error", **_error(e)}))
        conn.close()
        return
    kind = engine.kind
    conn.send_bytes(ipc.encode({"op": "ready", "kind": kind, "pid": os.getpid()}))
    if kind == "lm":
        from genloom.serve.lm_worker import LMLoop

        LMLoop(engine.model, conn, slots=slots).run()
        return
    worker = ImageWorker(engine)
    while True:
        try:
            header, arrays = ipc.decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        op = header.get("op")
        if op == "stop":
            return
        if op != "batch":
            continue
        try:
            t0 = time.monotonic()
            outs, arrs = worker.run(header["items"], arrays)
            msg = ipc.encode({"op": "result", "id": header["id"], "ok": True, "outputs": outs,
                              "compute_s": time.monotonic() - t0}, arrs)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            msg = ipc.encode({"op": "result", "id": header["id"], "ok": False, **_error(e)})
        try:
            conn.send_bytes(msg)
        except (BrokenPipeError, OSError):
            return
