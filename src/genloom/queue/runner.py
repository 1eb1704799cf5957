"""The queue worker's models: one loaded engine per model name, run in that model's own thread.

``ModelRunner.run`` executes a batch of validated requests through the one inference core of every transport
(``core.runner.run_batch``) and encodes each result for the wire; ``model_thread`` is the single-thread executor
the worker runs those forward passes in, with the process's torch thread count.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any

from genloom.core.requests import ModelInfo
from genloom.core.runner import run_batch
from genloom.queue import messages as m


class ModelRunner:
    """One loaded model: ``run`` executes a batch of validated requests (``core.runner.run_batch``) and encodes
    each result for the wire (``messages.encode_images`` / ``{"text": ...}``)."""

    def __init__(self, name: str, path: str, *, threads: int | None = 1, backend: str = "auto", device: str = "cpu",
                 precision: str = "auto") -> None:
        from genloom import engine
        from genloom.export import read_header

        self.name, self.path = name, path
        lm = read_header(path).kind == "lm"  # the LM has one backend (eager, KV cache)
        self.engine = engine.load(path, threads=threads, backend="auto" if lm else backend, device=device,
                                  precision=precision)
        self.kind: str = self.engine.kind
        self.info = ModelInfo.of_header(self.engine.header)

    def run(self, reqs: list[m.Request]) -> list[Any]:
        """The JSON result of each request, in order. Raises on a (transient) failure of the batch."""
        results = run_batch(self.engine, [{"op": r.op, **r.params} for r in reqs])
        out: list[Any] = []
        for r, res in zip(reqs, results):
            if isinstance(res, BaseException):
                raise res
            out.append({"text": res} if r.op == "generate" else m.encode_images(res, r.params["format"]))
        return out


def model_thread(name: str, threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that runs ``name``'s forward passes (they run one at a time per model)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}", initializer=_thread_setup,
                                                 initargs=(threads,))


def _thread_setup(threads: int) -> None:
    """Give the model thread the process's torch thread count. OpenMP's thread count is per thread: a thread
    that never called ``torch.set_num_threads`` runs OpenMP regions on every core, and on a busy machine its
    batch-1 forward passes took ~7.5 ms of CPU instead of ~0.1 ms (the loop thread's setting does not carry
    over to the executor thread)."""
    import sys

    torch = sys.modules.get("torch")  # the numpy backend never imports torch
    if torch is not None:
        torch.set_num_threads(threads)
