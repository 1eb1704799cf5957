"""`genloom serve` as a real uvicorn process over loopback: crash, overload, hot reload, graceful shutdown."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import torch

from genloom.export import save
from genloom.models.vae import VAE, VAEConfig
from serve_proc import TOKEN, Proc, free_port  # noqa: F401  (other e2e files import them from here)

def make_vae(path: Path, *, latent: int = 8, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save(VAE(VAEConfig(enc_hidden=(64,), dec_hidden=(64,), latent=latent)), path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("serve_e2e")
    a, b = make_vae(d / "a.safetensors"), make_vae(d / "b.safetensors", seed=1)
    proc = Proc([f"vae={a}", "--max-wait-ms", "2"], free_port())
    proc.files = (a, b)  # type: ignore[attr-defined]
    yield proc
    proc.stop()


async def hammer(url: str, seconds: float, *, clients: int = 16, during=None) -> list[int | str]:
    """Closed-loop clients for ``seconds``; returns every outcome (status code, or the exception name)."""
    outcomes: list[int | str] = []
    t_end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_connections=clients)) as c:
        async def one(i: int) -> None:
            while time.monotonic() < t_end:
                try:
                    r = await c.post("/v1/models/vae/sample", json={"n": 1, "seed": i, "format": "npy"})
                    outcomes.append(r.status_code)
                except httpx.HTTPError as e:
                    outcomes.append(type(e).__name__)

        tasks = [asyncio.create_task(one(i)) for i in range(clients)]
        if during is not None:
            await during(c)
        await asyncio.gather(*tasks)
    return outcomes


@pytest.mark.timeout(150)  # includes starting the module's server on a busy machine
def test_kill_9_under_load_no_hang_and_ready_within_3s(server: Proc) -> None:
    pid = httpx.get(server.url + "/readyz").json()["models"]["vae"]["pid"]
    recovered: list[float] = []

    async def kill(c: httpx.AsyncClient) -> None:
        await asyncio.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        await asyncio.sleep(0.02)
        while (await c.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.02)
        recovered.append(time.monotonic() - t0)

    outcomes = asyncio.run(hammer(server.url, 4.0, during=kill))
    ok = outcomes.count(200)
    assert ok / len(outcomes) >= 0.999, {o: outcomes.count(o) for o in set(outcomes)}
    assert recovered and recovered[0] < 3.0
    st = httpx.get(server.url + "/readyz").json()["models"]["vae"]
    assert st["pid"] != pid and st["restarts"] >= 1


@pytest.mark.timeout(60)
def test_hot_reload_under_load_zero_failures(server: Proc) -> None:
    a, b = server.files  # type: ignore[attr-defined]
    reloads: list[int] = []

    async def reload(c: httpx.AsyncClient) -> None:
        for path in (b, a, b):
            await asyncio.sleep(0.7)
            r = await c.post("/admin/models/vae/reload", json={"path": str(path)},
                             headers={"Authorization": f"Bearer {TOKEN}"})
            reloads.append(r.status_code)

    outcomes = asyncio.run(hammer(server.url, 3.5, during=reload))
    assert reloads == [200, 200, 200]
    assert set(outcomes) == {200}, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.timeout(150)
def test_overload_fast_503_then_sigterm_drains(tmp_path: Path) -> None:
    path = make_vae(tmp_path / "m.safetensors")
    proc = Proc([f"vae={path}", "--max-queue", "4", "--max-batch-size", "4", "--max-wait-ms", "1000"], free_port())
    try:
        async def burst() -> list[tuple[int, float, str | None]]:
            async with httpx.AsyncClient(base_url=proc.url, timeout=10,
                                         limits=httpx.Limits(max_connections=64)) as c:
                async def one() -> tuple[int, float, str | None]:
                    t0 = time.monotonic()
                    r = await c.post("/v1/models/vae/sample", json={"n": 1, "format": "npy"})
                    return r.status_code, time.monotonic() - t0, r.headers.get("retry-after")
                return await asyncio.gather(*(one() for _ in range(40)))

        res = asyncio.run(burst())
        codes = [c for c, _, _ in res]
        assert set(codes) == {200, 503}, codes
        assert all(ra is not None and int(ra) >= 1 for c, _, ra in res if c == 503)
        assert max(dt for c, dt, _ in res if c == 503) < 1.0  # refused at once, not after queueing

        # a client that hangs up while its request is queued: the entry is dropped and counted as 499
        sock = socket.create_connection(("127.0.0.1", proc.port))
        sock.sendall(b"POST /v1/models/vae/sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 8\r\n\r\n{\"n\": 1}")
        t_end = time.monotonic() + 10
        while httpx.get(proc.url + "/readyz").json()["models"]["vae"]["queue_depth"] < 1:
            assert time.monotonic() < t_end
            time.sleep(0.01)
        sock.close()
        gone = 'genloom_requests_total{endpoint="sample",model="vae",status="499"} 1.0'
        while gone not in httpx.get(proc.url + "/metrics").text:
            assert time.monotonic() < t_end, "the disconnect was not noticed"
            time.sleep(0.05)

        while httpx.get(proc.url + "/readyz").json()["models"]["vae"]["queue_depth"]:  # the dropped entry left
            assert time.monotonic() < t_end
            time.sleep(0.05)

        # SIGTERM while requests wait in the batcher (1 s window): they all complete, then the process exits
        async def drain() -> list[int]:
            async with httpx.AsyncClient(base_url=proc.url, timeout=10) as c:
                reqs = [asyncio.create_task(c.post("/v1/models/vae/sample", json={"n": 1})) for _ in range(2)]
                async with httpx.AsyncClient(base_url=proc.url, timeout=5) as probe:
                    t_wait = time.monotonic() + 5
                    while (await probe.get("/readyz")).json()["models"]["vae"]["queue_depth"] < 2:
                        assert time.monotonic() < t_wait, "requests did not reach the queue"
                        await asyncio.sleep(0.01)
                proc.p.send_signal(signal.SIGTERM)
                return [r.status_code for r in await asyncio.gather(*reqs)]

        assert asyncio.run(drain()) == [200, 200]
        assert proc.p.wait(20) == 0
    finally:
        proc.stop()


@pytest.mark.timeout(30)
def test_cli_refuses_bad_models_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from genloom.cli import main

    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"junk")
    for args, words in (([str(tmp_path / "missing.safetensors")], "is not a file"),
                        ([f"a b={bad}"], "model name"),
                        ([str(bad)], "not a safetensors file"),
                        ([str(bad), "--max-batch-size", "0"], "max_batch_size=0")):
        assert main(["serve", *args, "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
