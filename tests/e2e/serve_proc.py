"""`genloom serve` as a child process on a loopback port, for the end-to-end tests: ready when /readyz says so.

Its output goes to a log file, not a pipe (a pipe nobody reads blocks a chatty server once 64 KiB are
buffered); a failed start names the log's tail."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from genloom.core.supervision import stop_processes

TOKEN = "e2e-token"  # GENLOOM_ADMIN_TOKEN of the servers these tests start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """``genloom serve ARGS --port PORT --no-access-log``; waits ≤ ``ready_s`` for /readyz (worker processes
    start slowly on a loaded 2-core machine)."""

    def __init__(self, args: list[str], port: int | None = None, *, log: Path | None = None,
                 ready_s: float = 120, admin_token: str | None = TOKEN) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if log is None:
            fd, name = tempfile.mkstemp(prefix="genloom-serve-", suffix=".log")
            os.close(fd)
            log = Path(name)
        self.log_path = log
        self.log = log.open("w")
        env = dict(os.environ)
        if admin_token:
            env["GENLOOM_ADMIN_TOKEN"] = admin_token
        self.p = subprocess.Popen([sys.executable, "-m", "genloom.cli", "serve", *args, "--port", str(self.port),
                                   "--no-access-log"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        t_end = time.monotonic() + ready_s
        while time.monotonic() < t_end:
            assert self.p.poll() is None, f"genloom serve exited: {self.tail()}"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"genloom serve was not ready in {ready_s:.0f} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        stop_processes([self.p], timeout=15)  # SIGTERM (a graceful drain), then SIGKILL after 15 s
        if not self.log.closed:
            self.log.close()
