"""genloom serve under stress, over loopback: GAN and LM throughput, overload, kill -9, hot reload.

    python benchmarks/serve_scenarios.py [--only gan,lm,overload,kill,reload] [--seconds 8]

Starts ``genloom serve`` once with default-size models (random weights: serving cost does not depend on
training): a VAE (784-400-20), a conv WGAN generator, a char Transformer LM (4 layers, 128 wide, 65 chars).
Prints one JSON object per scenario:

- gan: 64 closed-loop clients, ``sample`` n = 1 → req/s, p50/p99.
- lm: 16 and 64 concurrent SSE streams (64 new tokens each, back to back) → tokens/s, time to first token.
- overload: capacity C of VAE ``sample`` n = 256 (closed loop), then an open loop at 4·C with a 1 s deadline
  (X-Request-Timeout) → share of fast 503s, their p99, p99 of accepted requests vs the deadline, other 5xx.
- kill: 64 clients on VAE n = 1; kill -9 of the worker after 3 s → success rate, slowest request, time to ready.
- reload: 64 clients; POST /admin/models/vae/reload every 2 s alternating two files → failed requests.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import serve_loadgen  # noqa: E402

TOKEN = "bench-token"


def make_models(d: Path) -> dict[str, Path]:
    import torch

    from genloom.export import save
    from genloom.models.gan import GAN, GANConfig
    from genloom.models.transformer import LMConfig, TransformerLM
    from genloom.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vocab = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    return {"vae": save(VAE(VAEConfig()), d / "vae.safetensors"),
            "vae_b": save(VAE(VAEConfig()), d / "vae_b.safetensors"),
            "gan": save(GAN(GANConfig()), d / "gan.safetensors"),
            "lm": save(TransformerLM(LMConfig(vocab_size=len(vocab)), vocab), d / "lm.safetensors")}


def start(models: dict[str, Path], port: int) -> subprocess.Popen:
    env = {**os.environ, "GENLOOM_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "genloom.cli", "serve", f"vae={models['vae']}",
                             f"gan={models['gan']}", f"lm={models['lm']}", "--port", str(port), "--no-access-log",
                             "--log-level", "warning", "--max-queue", "1024"], env=env)
    t_end = time.monotonic() + 180
    while time.monotonic() < t_end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server not ready")


async def gan(base: str, seconds: float) -> dict:
    return await serve_loadgen.run(url=base + "/v1/models/gan/sample", body=b'{"n": 1, "format": "npy"}',
                                   concurrency=64, duration=seconds, requests=None, headers=[])


async def lm(base: str, seconds: float, streams: int) -> dict:
    ttft: list[float] = []
    tokens = [0]
    failures: dict[str, int] = {}
    body = {"prompt": "ROMEO:", "max_new_tokens": 64, "temperature": 0.8, "stream": True}
    t_end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=streams)) as c:
        async def client() -> None:
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                first = True
                async with c.stream("POST", "/v1/models/lm/generate", json=body) as r:
                    if r.status_code != 200:
                        failures[str(r.status_code)] = failures.get(str(r.status_code), 0) + 1
                        await r.aread()
                        continue
                    async for line in r.aiter_lines():
                        if line == "event: token":
                            tokens[0] += 1
                            if first:
                                ttft.append(time.monotonic() - t0)
                                first = False

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(streams)))
        wall = time.monotonic() - t0
    a = np.array(ttft) * 1000
    return {"streams": streams, "tokens_per_s": round(tokens[0] / wall, 1), "requests": len(ttft),
            "ttft_p50_ms": round(float(np.percentile(a, 50)), 1), "ttft_p99_ms": round(float(np.percentile(a, 99)), 1),
            "failures": failures}


async def overload(base: str, seconds: float) -> dict:
    url, body = base + "/v1/models/vae/sample", b'{"n": 256, "format": "npy"}'
    cap = await serve_loadgen.run(url=url, body=body, concurrency=64, duration=5, requests=None, headers=[])
    rate = 4 * cap["rps"]
    async with httpx.AsyncClient(base_url=base) as c:
        before = (await c.get("/metrics")).text
    res = await serve_loadgen.run_open(url=url, body=body, rate=rate, duration=seconds,
                                       headers=["X-Request-Timeout: 1"], max_connections=2048)
    async with httpx.AsyncClient(base_url=base) as c:
        ready = (await c.get("/readyz")).status_code
        server_side = server_latency((await c.get("/metrics")).text, "vae", "sample", before=before)
    other_5xx = sum(v for k, v in res["status"].items() if k.startswith("5") and k not in ("503", "504"))
    return {"capacity_rps": cap["rps"], "offered_rps": res["offered_rps"], "ok_rps": res["ok_rps"],
            "status": res["status"], "latency_ms": res["latency_ms"], "errors": res["errors"],
            "other_5xx": other_5xx, "ready_after": ready, "server_side": server_side}


def _buckets(metrics: str, model: str, endpoint: str) -> dict[str, dict[str, float]]:
    counts: dict[str, dict[str, float]] = {}
    for line in metrics.splitlines():
        if not line.startswith("genloom_request_latency_seconds_bucket{") or f'model="{model}"' not in line \
                or f'endpoint="{endpoint}"' not in line:
            continue
        labels = dict(kv.split("=") for kv in line[line.index("{") + 1:line.index("}")].split(","))
        counts.setdefault(labels["status"].strip('"'), {})[labels["le"].strip('"')] = float(line.split()[-1])
    return counts


def server_latency(metrics: str, model: str, endpoint: str, *, before: str = "") -> dict[str, dict[str, float]]:
    """Share of requests per status answered within 5 ms / 100 ms / 1 s, from the server's own histogram
    (the difference between two scrapes: only the requests in between)."""
    counts = _buckets(metrics, model, endpoint)
    old = _buckets(before, model, endpoint)
    for status, b in counts.items():
        for le in b:
            b[le] -= old.get(status, {}).get(le, 0.0)
    counts = {k: v for k, v in counts.items() if v["+Inf"] > 0}
    out = {}
    for status, b in counts.items():
        total = b["+Inf"]
        out[status] = {"count": total, **{f"within_{k}s": round(b[k] / total, 4) for k in ("0.005", "0.1", "1.0")}}
    return out


async def kill(base: str, seconds: float) -> dict:
    async with httpx.AsyncClient(base_url=base) as c:
        pid = (await c.get("/readyz")).json()["models"]["vae"]["pid"]
        recovered: list[float] = []

        async def killer() -> None:
            await asyncio.sleep(3)
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            while (await c.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.01)
            recovered.append(time.monotonic() - t0)

        load = serve_loadgen.run(url=base + "/v1/models/vae/sample", body=b'{"n": 1, "format": "npy"}',
                                 concurrency=64, duration=seconds, requests=None, headers=[])
        res, _ = await asyncio.gather(load, killer())
    return {"requests": res["requests"], "ok": res["ok"], "success": round(res["ok"] / res["requests"], 5),
            "status": res["status"], "errors": res["errors"], "max_ms": res["max_ms"], "p99_ms": res["p99_ms"],
            "ready_again_s": round(recovered[0], 3)}


async def reload(base: str, seconds: float, files: tuple[Path, Path]) -> dict:
    codes: list[int] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        async def reloader() -> None:
            i = 0
            t_end = time.monotonic() + seconds - 1
            while time.monotonic() < t_end:
                await asyncio.sleep(2)
                r = await c.post("/admin/models/vae/reload", json={"path": str(files[i % 2 == 0])},
                                 headers={"Authorization": f"Bearer {TOKEN}"})
                codes.append(r.status_code)
                i += 1

        load = serve_loadgen.run(url=base + "/v1/models/vae/sample", body=b'{"n": 1, "format": "npy"}',
                                 concurrency=64, duration=seconds, requests=None, headers=[])
        res, _ = await asyncio.gather(load, reloader())
    return {"reloads": codes, "requests": res["requests"], "failed": res["requests"] - res["ok"],
            "status": res["status"], "errors": res["errors"], "p99_ms": res["p99_ms"], "max_ms": res["max_ms"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="gan,lm,overload,kill,reload")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start(models, port)
        base = f"http://127.0.0.1:{port}"
        try:
            for name in args.only.split(","):
                if name == "gan":
                    out = asyncio.run(gan(base, args.seconds))
                elif name == "lm":
                    out = {"runs": [asyncio.run(lm(base, args.seconds, n)) for n in (16, 64)]}
                elif name == "overload":
                    out = asyncio.run(overload(base, args.seconds))
                elif name == "kill":
                    out = asyncio.run(kill(base, max(args.seconds, 8)))
                elif name == "reload":
                    out = asyncio.run(reload(base, max(args.seconds, 8), (models["vae"], models["vae_b"])))
                else:
                    raise SystemExit(f"unknown scenario {name!r}")
                print(json.dumps({"scenario": name, **out}), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
