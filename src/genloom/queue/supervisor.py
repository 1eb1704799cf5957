"""``genloom worker`` processes: a supervisor that restarts its worker process after a crash.

The supervisor (the process you start) loads nothing heavy; it starts one worker process that loads the
models, connects and consumes (``run_worker``). Worker processes are forked from the supervisor, which has imported
torch and genloom but never runs them (no thread pools yet, so forking is safe): a restart costs the time to load
the model file (~1 s), not a fresh ``import torch`` (10+ s on a busy machine). The worker process dies with the
supervisor (``core.supervision.bind_to_parent``: kill -9 of the supervisor leaves no orphan consuming
unsupervised). If the worker process dies (kill -9, segfault, out of memory), its
unacked messages go back to the queue at once (the broker sees the socket close) and the supervisor starts a new
one after a backoff (0.5 s doubling to 10 s; reset after 30 s of healthy running). SIGTERM/SIGINT: the
supervisor forwards SIGTERM; the worker stops consuming, finishes and acks what it holds, and exits 0.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from typing import Any

from genloom.core.supervision import Backoff, bind_to_parent
from genloom.errors import GenloomError
from genloom.queue.poison import CrashLog
from genloom.queue.worker import QueueWorker, WorkerConfig

log = logging.getLogger("genloom.queue.supervisor")
EXIT_BAD_INPUT = 2
_EARLY_STOP = threading.Event()  # SIGTERM/SIGINT received while the worker process was still starting  # a config/model/connection problem at first start: restarting will not help


async def run_worker(config: WorkerConfig, *, restarts: int = 0, ready: "mp.synchronize.Event | None" = None,
                     crash_log: Any = None, culprits: frozenset[str] = frozenset()) -> int:
    """Run one worker until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
    worker = QueueWorker(config, restarts=restarts, crash_log=crash_log, culprits=culprits)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    if ready is not None:
        ready.set()
    if _EARLY_STOP.is_set():
        stop.set()
    await stop.wait()
    log.info("stopping: finishing in-flight work")
    await worker.stop()
    return 0


def _child(config: WorkerConfig, restarts: int, ready: "mp.synchronize.Event", supervisor_pid: int,
           crash_log: Any = None, culprits: frozenset[str] = frozenset()) -> None:
    bind_to_parent(supervisor_pid)  # kill -9 of the supervisor: this process dies too, its deliveries requeue
    for sig in (signal.SIGTERM, signal.SIGINT):  # not the supervisor's handlers (inherited by fork): a signal
        signal.signal(sig, lambda *_: _EARLY_STOP.set())  # before the event loop runs stops right after start
    logging.root.handlers.clear()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the stdlib loop works, a little slower
        pass
    try:
        code = asyncio.run(run_worker(config, restarts=restarts, ready=ready, crash_log=crash_log,
                                      culprits=culprits))
    except GenloomError as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    sys.exit(code)


def supervise(config: WorkerConfig, *, max_restarts: int | None = None) -> int:
    """Start the worker process and keep one running until SIGTERM/SIGINT. Returns the exit code."""
    import torch  # noqa: F401  (imported once here; every forked worker shares it)

    ctx = mp.get_context("fork")
    stopping = False
    proc: mp.process.BaseProcess | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # one graceful stop; a repeat could hit the worker after its loop closed (use kill -9)
            return
        stopping = True
        if proc is not None and proc.pid is not None and proc.exitcode is None:
            os.kill(proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    restarts, ever_ready = 0, False
    crash_log = CrashLog.create(ctx)  # the keys of the batch in a forward pass, written by the worker process
    culprits: list[str] = []  # messages that killed a worker process while running alone (poison.py)
    backoff = Backoff(0.5, 10.0, stable_s=30.0)
    try:
        while True:
            ready = ctx.Event()
            CrashLog(crash_log).clear()
            proc = ctx.Process(target=_child, args=(config, restarts, ready, os.getpid(), crash_log,
                                                    frozenset(culprits)), name=f"{config.name}-{restarts}")
            proc.start()
            started = time.monotonic()
            log.info("worker process %d started (restart %d)", proc.pid, restarts)
            proc.join()
            ever_ready = ever_ready or ready.is_set()
            code = proc.exitcode
            if stopping:
                return 0 if code == 0 else 1
            if code == 0:
                return 0
            if code == EXIT_BAD_INPUT and not ever_ready:
                return EXIT_BAD_INPUT  # bad model file, flag or URL: the child printed why
            if max_restarts is not None and restarts >= max_restarts:
                log.error("worker process died (exit %s); %d restarts used up", code, restarts)
                return 1
            held = CrashLog.read(crash_log)
            if len(held) == 1 and held[0] not in culprits:  # it died running this one message alone
                culprits[:] = (culprits + held)[-1000:]
                log.warning("message %s killed the worker process while running alone", held[0])
            delay = backoff.next(time.monotonic() - started)
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            print(f"genloom worker: worker process {proc.pid} died ({how}); restarting in {delay:.1f} s",
                  file=sys.stderr, flush=True)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not stopping:
                time.sleep(0.05)
            if stopping:
                return 0
            restarts += 1
    finally:
        for s, h in old.items():  # after a stop, a repeated signal must not kill us while the interpreter exits
            signal.signal(s, signal.SIG_IGN if stopping else h)
