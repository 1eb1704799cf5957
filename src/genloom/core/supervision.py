"""The one process model of ``genloom serve`` and ``genloom worker``: a supervisor owns the processes that hold
the models.

- A child process calls ``bind_to_parent(supervisor_pid)`` first thing: the kernel sends it SIGKILL when its
  parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and a watchdog thread checks every ``POLL_S`` seconds that
  the supervisor is still alive (for other platforms, and for a forkserver child whose direct parent is not
  the supervisor). So after ``kill -9`` of the supervisor no model process keeps running unsupervised; an AMQP
  worker's connection dies with it and the broker requeues its unacked messages.
- The supervisor restarts a child that died with exponential backoff (``Backoff``), reset after a child has
  run ``stable_s`` seconds.
- ``stop_processes`` stops such servers started as subprocesses (tests, benchmarks): SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

PR_SET_PDEATHSIG = 1
POLL_S = 0.25  # the watchdog's period: a child outlives its supervisor by at most this (plus scheduling)


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot be our supervisor, but do not guess)
        return True
    return True


def bind_to_parent(supervisor_pid: int | None = None, *, poll_s: float = POLL_S, pdeathsig: bool = True) -> None:
    """Make this process die (SIGKILL) when its parent or ``supervisor_pid`` dies. Call it in the child.

    ``pdeathsig=False`` keeps only the watchdog: the kernel sends PR_SET_PDEATHSIG when the parent *thread*
    that started the child exits, which for a child started from a thread pool is not the parent's death.
    """
    parent = os.getppid()
    supervisor = supervisor_pid or parent
    if pdeathsig:
        _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent or not _alive(supervisor):  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent or not _alive(supervisor):
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="genloom-parent-watch").start()


class Backoff:
    """Delays before restarting a crashed child: ``first · 2^k`` capped at ``most``; ``k`` resets once a child
    ran ``stable_s`` seconds (a worker that keeps crashing does not spin the CPU; one crash a day restarts fast)."""

    def __init__(self, first: float = 0.5, most: float = 10.0, *, stable_s: float = 30.0) -> None:
        self.first, self.most, self.stable_s = first, most, stable_s
        self.attempt = 0

    def next(self, lived_s: float) -> float:
        """The delay before the next start, given how long the child that just died had run."""
        if lived_s > self.stable_s:
            self.attempt = 0
        delay = min(self.most, self.first * 2 ** self.attempt)
        self.attempt += 1
        return delay


def stop_processes(procs: list[subprocess.Popen[Any]], *, timeout: float = 30.0) -> None:
    """Stop started ``genloom serve`` / ``genloom worker`` processes (``subprocess.Popen``) the way an operator
    would: SIGTERM to each still running (a graceful drain), then up to ``timeout`` seconds for each to exit;
    one that does not is killed — with its whole process group when it leads one (``start_new_session``), so
    its model processes go too."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                if os.getpgid(p.pid) == p.pid:
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.kill()
            except ProcessLookupError:
                pass
            p.wait()
