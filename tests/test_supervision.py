"""The one process model (core/supervision.py): kill -9 of a `genloom worker` supervisor or of a `genloom serve`
process leaves no genloom process behind after 2 s, and the killed worker's queue has no consumer left."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from genloom.core.supervision import Backoff
from genloom.queue import admin
from genloom.queue import messages as m
from queue_helpers import cleanup, require_broker, tiny_vae, unique_model

pytestmark = pytest.mark.timeout(120)
GENLOOM = [sys.executable, "-m", "genloom.cli"]


def session_processes(sid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of session ``sid``: [(pid, state)]."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state not in ("Z", "X"):
            out.append((int(d.name), state))
    return out


def wait_for_children(sid: int, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(session_processes(sid)) < count:
        assert time.monotonic() < deadline, f"session {sid} did not start {count} processes"
        time.sleep(0.1)


def kill9_and_check(proc: subprocess.Popen[str]) -> None:
    before = session_processes(proc.pid)
    assert len(before) >= 2, before  # the supervisor and at least one model process
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    time.sleep(2.0)
    left = session_processes(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)  # do not leak them into the rest of the suite
    assert left == [], f"processes left 2 s after kill -9 of {proc.pid}: {left} (were {before})"


def test_kill9_of_the_worker_supervisor_leaves_no_process_and_no_consumer(tmp_path: Path) -> None:
    url = require_broker()
    model = unique_model()
    path = tiny_vae(tmp_path / "vae.safetensors")
    proc = subprocess.Popen([*GENLOOM, "worker", f"{model}={path}", "--amqp", url, "--name", f"sup-{model}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        asyncio.run(admin.wait_for_consumers(url, model, 1, timeout=90))
        kill9_and_check(proc)
        info = asyncio.run(admin.queue_info(url, m.queue_name(model)))
        assert info is not None and info[1] == 0  # no orphan keeps consuming unsupervised
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cleanup(model)


def test_kill9_of_serve_leaves_no_process(tmp_path: Path) -> None:
    path = tiny_vae(tmp_path / "vae.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*GENLOOM, "serve", f"vae={path}", "--port", str(port), "--no-access-log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "genloom serve did not become ready"
            time.sleep(0.2)
        kill9_and_check(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_backoff_doubles_caps_and_resets_after_a_stable_run() -> None:
    b = Backoff(0.5, 4.0, stable_s=30.0)
    assert [b.next(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.next(31.0) == 0.5  # the child that just died had run long enough: start over
