"""`genloom worker` / `genloom submit` as processes: kill -9, SIGTERM, the submit CLI, bad input (bounded)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genloom.queue import admin
from genloom.queue.client import QueueClient, Response
from queue_helpers import cleanup, require_broker, tiny_vae, unique_model

pytestmark = pytest.mark.timeout(120)
GENLOOM = [sys.executable, "-m", "genloom.cli"]


def start_worker(model: str, path: Path, url: str, name: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*GENLOOM, "worker", f"{model}={path}", "--amqp", url, "--name", name, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def worker_child(sup: int, *, timeout: float = 60) -> int:
    """The supervisor's worker process (forked by it; not multiprocessing's resource tracker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parents = {}
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit():
                    parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
        kids = [p for p, pp in parents.items() if pp == sup and b"resource_tracker" not in _cmdline(p)]
        if kids:
            return kids[0]
        time.sleep(0.1)
    raise TimeoutError(f"supervisor {sup} started no worker process")


def stop(procs: list[subprocess.Popen[str]]) -> list[str]:
    outs = []
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            outs.append(p.communicate(timeout=60)[0])
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # its own session: the supervisor and its worker process
            outs.append(p.communicate()[0])
    return outs


def test_kill9_and_sigterm_lose_nothing(tmp_path: Path) -> None:
    """2 workers, 1000 requests: kill -9 A's worker process (its supervisor restarts it), then SIGTERM B mid-run
    (it finishes and acks what it holds, exits 0). Every id is answered exactly once. (A dropped connection is
    tested in test_queue_worker.py; the full 10,000-request chaos run is benchmarks/queue_chaos.py.)"""
    url = require_broker()
    model, path = unique_model(), tiny_vae(tmp_path / "vae.safetensors")
    names = [f"{model}-a", f"{model}-b"]
    procs = [start_worker(model, path, url, n, "--batch-size", "8", "--prefetch", "64") for n in names]
    try:
        asyncio.run(admin.wait_for_consumers(url, model, 2, timeout=90))
        results, events = asyncio.run(_chaos_run(url, model, 1000, procs))
        assert events == ["kill", "sigterm"]
        assert all(isinstance(r, Response) and r.ok for r in results), [r for r in results if not
                                                                         (isinstance(r, Response) and r.ok)][:3]
        assert sorted(r.id for r in results) == sorted(f"c-{i}" for i in range(1000))  # type: ignore[union-attr]
        assert asyncio.run(admin.drain_dead_letters(url, model)) == []
    finally:
        outs = stop(procs)
        cleanup(model)
    assert "died (killed by signal 9); restarting" in outs[0]  # the supervisor restarted it
    assert all(p.returncode == 0 for p in procs), [(p.returncode, o[-1500:]) for p, o in zip(procs, outs)]


async def _chaos_run(url: str, model: str, n: int, procs: list[subprocess.Popen[str]]
                     ) -> tuple[list[Response | BaseException], list[str]]:
    events: list[str] = []
    async with QueueClient(url, timeout=90) as client:
        # a small window keeps requests flowing for several seconds, so every event lands mid-run
        task = asyncio.ensure_future(client.run_many(model, ({"n": 16} for _ in range(n)), max_in_flight=16,
                                                     ids=(f"c-{i}" for i in range(n))))
        while client.answered < n // 10:
            await asyncio.sleep(0.02)
        os.kill(await asyncio.to_thread(worker_child, procs[0].pid), signal.SIGKILL)
        events.append("kill")
        while client.answered < n // 2:
            await asyncio.sleep(0.02)
        if client.answered < n - 16:
            procs[1].send_signal(signal.SIGTERM)  # A is back by now (restart ≈ 1 s): it takes over
            events.append("sigterm")
        results = await asyncio.wait_for(task, 90)
    return results, events


def test_submit_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    import numpy as np

    from genloom.cli import main
    from genloom.engine import load
    from genloom.queue.worker import QueueWorker, WorkerConfig

    url = require_broker()
    model, path = unique_model(), tiny_vae(tmp_path / "vae.safetensors")
    ready, done = threading.Event(), threading.Event()

    async def serve() -> None:  # a worker in this process, on its own event loop
        w = QueueWorker(WorkerConfig(url=url, models={model: str(path)}))
        await w.start()
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.05)
        await w.stop()

    t = threading.Thread(target=asyncio.run, args=(serve(),))
    t.start()
    try:
        assert ready.wait(60)
        assert main(["submit", "--amqp", url, "--model", model, "--count", "50", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["ok"] == 50 and summary["failed"] == 0 and summary["duplicates_dropped"] == 0
        assert summary["latency_ms"]["p50"] > 0 and summary["throughput_rps"] > 0
        assert main(["submit", "--amqp", url, "--model", model, "-n", "3", "--seed", "1",
                     "-o", str(tmp_path / "x.npy")]) == 0
        np.testing.assert_allclose(np.load(tmp_path / "x.npy"), load(path).sample(3, seed=1), atol=1 / 510 + 1e-6)
    finally:
        done.set()
        t.join(60)
        cleanup(model)


def test_bad_input_gives_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genloom.cli import main

    url = require_broker()
    assert main(["worker", f"x={tmp_path / 'missing.safetensors'}", "--amqp", url]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["worker", "bad name=" + str(tiny_vae(tmp_path / "v.safetensors"))]) == 2
    assert "invalid model name" in capsys.readouterr().err
    assert main(["submit", "--amqp", "amqp://guest:secret@127.0.0.1:1/", "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to RabbitMQ" in err and "secret" not in err  # never print the password
    assert main(["submit", "--amqp", url, "--model", unique_model()]) == 2
    assert "no worker serves model" in capsys.readouterr().err
    assert main(["submit", "--amqp", url, "--model", "x", "--count", "0"]) == 2


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
