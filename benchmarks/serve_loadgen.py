"""A small closed-loop HTTP/1.1 load generator (keep-alive connections on raw asyncio streams + uvloop).

    python benchmarks/serve_loadgen.py --url http://127.0.0.1:8000/v1/models/vae/sample \
        --body '{"n": 1, "format": "npy"}' --concurrency 64 --duration 10 [--header X-Request-Timeout:2]

Each of ``--concurrency`` connections sends one request, reads the whole response, and sends the next, until
``--duration`` seconds or ``--requests`` in total (closed loop); with ``--rate R`` it starts R requests per second
whatever the server does (open loop, for overload). Prints one JSON object: requests/s, latency percentiles
(p50/p99, ms), status counts, errors (connection failures, timeouts). Light enough that the generator is not
the bottleneck on a busy 2-core machine (~30 µs of CPU per request). For 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np


def build_request(url: str, body: bytes, headers: list[str], method: str) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    if u.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("serve_loadgen only targets 127.0.0.1")
    lines = [f"{method} {u.path or '/'} HTTP/1.1", f"Host: {u.hostname}:{u.port}", "Connection: keep-alive",
             "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return u.hostname, int(u.port or 80), ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, body, headers


async def run(*, url: str, body: bytes, concurrency: int, duration: float, requests: int | None,
              headers: list[str], method: str = "POST", timeout: float = 30.0) -> dict[str, Any]:
    host, port, raw = build_request(url, body, headers, method)
    lat: list[float] = []
    statuses: dict[int, int] = {}
    slow_503: list[float] = []
    errors = {"connect": 0, "timeout": 0, "reset": 0}
    t_end = time.monotonic() + duration
    budget = [requests if requests is not None else 1 << 62]

    async def client() -> None:
        reader = writer = None
        while time.monotonic() < t_end and budget[0] > 0:
            budget[0] -= 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.monotonic()
                writer.write(raw)
                status, _, h = await asyncio.wait_for(read_response(reader), timeout)
                dt = time.monotonic() - t0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    lat.append(dt)
                elif status == 503:
                    slow_503.append(dt)
                if h.get("connection") == "close":
                    writer.close()
                    writer = None
            except TimeoutError:
                errors["timeout"] += 1
                writer = None
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                errors["connect" if writer is None else "reset"] += 1
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.monotonic() - t0
    a = np.array(lat) * 1000 if lat else np.array([np.nan])
    total = sum(statuses.values())
    return {"requests": total, "ok": statuses.get(200, 0), "seconds": round(wall, 3),
            "rps": round(statuses.get(200, 0) / wall, 1), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(np.max(a)), 2),
            "status": {str(k): v for k, v in sorted(statuses.items())}, "errors": errors,
            "p99_503_ms": round(float(np.percentile(slow_503, 99)) * 1000, 2) if slow_503 else None}


async def run_open(*, url: str, body: bytes, rate: float, duration: float, headers: list[str],
                   method: str = "POST", timeout: float = 30.0, max_connections: int = 1024) -> dict[str, Any]:
    """Open loop: start ``rate`` requests per second whatever the server does (the way overload arrives)."""
    host, port, raw = build_request(url, body, headers, method)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    lat: dict[int, list[float]] = {}
    errors = {"connect": 0, "timeout": 0, "reset": 0, "no_connection": 0}
    open_conns = [0]

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if open_conns[0] >= max_connections:
            errors["no_connection"] += 1
            return None
        open_conns[0] += 1
        try:
            return await asyncio.open_connection(host, port)
        except OSError:
            open_conns[0] -= 1
            errors["connect"] += 1
            return None

    async def one() -> None:
        t0 = time.monotonic()
        reused = bool(idle)
        conn = idle.pop() if idle else await connect()
        while conn is not None:
            reader, writer = conn
            try:
                writer.write(raw)
                status, _, h = await asyncio.wait_for(read_response(reader), timeout)
            except TimeoutError:
                errors["timeout"] += 1
                writer.close()
                open_conns[0] -= 1
                return
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                writer.close()
                open_conns[0] -= 1
                if reused:  # the server closed an idle keep-alive connection: retry once on a new one
                    reused = False
                    conn = await connect()
                    continue
                errors["reset"] += 1
                return
            lat.setdefault(status, []).append(time.monotonic() - t0)
            if h.get("connection") == "close":
                writer.close()
                open_conns[0] -= 1
            else:
                idle.append((reader, writer))
            return

    tasks = []
    t_start = time.monotonic()
    i = 0
    while (now := time.monotonic()) < t_start + duration:
        due = int((now - t_start) * rate) + 1  # requests that should have started by now
        while i < due:
            tasks.append(asyncio.create_task(one()))
            i += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    wall = time.monotonic() - t_start
    for _, w in idle:
        w.close()

    def pct(xs: list[float], q: float) -> float | None:
        return round(float(np.percentile(xs, q)) * 1000, 2) if xs else None

    return {"sent": i, "offered_rps": round(i / duration, 1), "seconds": round(wall, 3),
            "ok_rps": round(len(lat.get(200, [])) / duration, 1),
            "status": {str(k): len(v) for k, v in sorted(lat.items())}, "errors": errors,
            "latency_ms": {str(k): {"p50": pct(v, 50), "p99": pct(v, 99), "max": pct(v, 100)}
                           for k, v in sorted(lat.items())}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body", default="{}")
    p.add_argument("--method", default="POST")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--header", action="append", default=[], help="NAME:VALUE (repeatable)")
    p.add_argument("--rate", type=float, default=None, help="open loop: requests per second (ignores "
                   "--concurrency)")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.rate is not None:
        out = asyncio.run(run_open(url=args.url, body=args.body.encode(), rate=args.rate, duration=args.duration,
                                   headers=args.header, method=args.method))
        print(json.dumps(out))
        return
    out = asyncio.run(run(url=args.url, body=args.body.encode(), concurrency=args.concurrency,
                          duration=args.duration, requests=args.requests, headers=args.header, method=args.method))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
