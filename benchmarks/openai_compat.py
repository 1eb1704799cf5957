"""LM streaming through the OpenAI-compatible endpoint vs the native one, side by side on one server.

    python benchmarks/openai_compat.py [--model lm.safetensors] [--clients 32] [--max-tokens 200] \
        [--requests 2] [--rounds 5] [--json]

Starts ``genloom serve`` (one LM, ``--max-batch-size`` = clients, so every stream has a decode slot), then runs
rounds that alternate between ``POST /v1/models/lm/generate`` with ``stream: true`` (native SSE) and
``POST /v1/completions`` with ``stream: true`` (OpenAI chunks): in each round ``--clients`` closed-loop clients
each stream ``--requests`` generations of ``--max-tokens`` tokens with the same sampling settings. Per mode it
reports the median over rounds of tokens/s (all tokens of a round / its wall time), and over all requests of all
its rounds TTFT p50/p99 and the inter-token gap p99 (between consecutive token events of one stream).

Without ``--model`` the model is the default LM architecture of ``genloom train lm`` (4 layers × 4 heads × 128,
block 64, 65 characters) with random weights: decoding speed does not depend on the weights. The client is a
small HTTP/1.1 reader on raw asyncio streams (chunked transfer encoding, one SSE event per chunk), the same for
both modes, so the difference is the server's. For 127.0.0.1 only.
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
from typing import Any

import numpy as np

from genloom.core.supervision import stop_processes

PROMPT = "ROMEO:\n"
VOCAB = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def default_model(path: Path) -> Path:
    import torch

    from genloom.export import save
    from genloom.models.transformer import LMConfig, TransformerLM

    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=len(VOCAB), block_size=64, n_layer=4, n_head=4, n_embd=128)
    return save(TransformerLM(cfg, VOCAB), path)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (the HTTP process, its forkserver, the model worker process)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        tree += frontier
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user + system CPU seconds of each live pid (/proc/PID/stat fields 14 and 15)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(f[11]) + int(f[12])) / tick
        except (OSError, ValueError, IndexError):
            pass
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, clients: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "genloom", "serve", f"lm={model}", "--port", str(port),
                          "--max-batch-size", str(clients), "--max-queue", str(4 * clients), "--no-access-log",
                          "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_end = time.monotonic() + 180
    while time.monotonic() < t_end:
        if p.poll() is not None:
            raise SystemExit(f"genloom serve exited: {p.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return p
        except OSError:
            pass
        time.sleep(0.3)
    p.kill()
    raise SystemExit("genloom serve did not become ready in 180 s")


async def stream_once(port: int, path: str, body: bytes, reader_writer: list[Any]) -> dict[str, Any]:
    """One streaming request on a keep-alive connection: (ttft, gaps, tokens). Each chunk is one SSE event."""
    if not reader_writer:
        reader_writer.extend(await asyncio.open_connection("127.0.0.1", port))
    reader, writer = reader_writer
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
    t0 = time.perf_counter()
    writer.write(head + body)
    status_head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in status_head.split(b"\r\n", 1)[0]:
        raise RuntimeError(status_head.decode(errors="replace"))
    times: list[float] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        chunk = await reader.readexactly(size + 2)
        now = time.perf_counter()
        # token events only: not the native "done" event, not OpenAI's finish chunk or [DONE]
        if b"event: done" in chunk or b"[DONE]" in chunk or b'"finish_reason":"' in chunk:
            continue
        times.append(now)
    return {"ttft": times[0] - t0 if times else float("nan"), "gaps": np.diff(times).tolist(),
            "tokens": len(times)}


async def run_round(port: int, mode: str, *, clients: int, requests: int, max_tokens: int,
                    server_pid: int | None = None) -> dict[str, Any]:
    if mode == "native":
        path = "/v1/models/lm/generate"
        body = {"prompt": PROMPT, "max_new_tokens": max_tokens, "temperature": 0.8, "stream": True}
    else:
        path = "/v1/completions"
        body = {"model": "lm", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "stream": True}
    raw = json.dumps(body).encode()

    async def client() -> list[dict[str, Any]]:
        conn: list[Any] = []
        out = [await stream_once(port, path, raw, conn) for _ in range(requests)]
        conn[1].close()
        return out

    pids = process_tree(server_pid) if server_pid else []
    cpu0 = cpu_seconds(pids)
    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(pids)
    http_cpu = cpu1.get(server_pid, 0.0) - cpu0.get(server_pid, 0.0) if server_pid else 0.0
    other_cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0 and p != server_pid)
    reqs = [r for rs in per_client for r in rs]
    tokens = sum(r["tokens"] for r in reqs)
    return {"mode": mode, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "http_cpu_us_per_token": 1e6 * http_cpu / tokens, "worker_cpu_us_per_token": 1e6 * other_cpu / tokens,
            "ttft": [r["ttft"] for r in reqs], "gaps": [g for r in reqs for g in r["gaps"]]}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = np.array([t for r in rounds for t in r["ttft"]]) * 1000
    gaps = np.array([g for r in rounds for g in r["gaps"]]) * 1000
    return {"tokens_per_s_median": round(float(np.median([r["tokens_per_s"] for r in rounds])), 1),
            "tokens_per_s_rounds": [round(r["tokens_per_s"], 1) for r in rounds],
            "ttft_ms_p50": round(float(np.percentile(ttft, 50)), 1),
            "ttft_ms_p99": round(float(np.percentile(ttft, 99)), 1),
            "inter_token_ms_p50": round(float(np.percentile(gaps, 50)), 2),
            "inter_token_ms_p99": round(float(np.percentile(gaps, 99)), 2),
            "http_cpu_us_per_token": round(float(np.median([r["http_cpu_us_per_token"] for r in rounds])), 1),
            "worker_cpu_us_per_token": round(float(np.median([r["worker_cpu_us_per_token"] for r in rounds])), 1),
            "requests": int(len(ttft)), "tokens": int(sum(r["tokens"] for r in rounds))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="an LM .safetensors (default: see the docstring)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--requests", type=int, default=2, help="streams per client per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per mode (alternating)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop the server too
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(Path(tmp) / "lm.safetensors")
        port = free_port()
        server = start_server(model, port, args.clients)
        try:
            kw = dict(clients=args.clients, requests=args.requests, max_tokens=args.max_tokens)
            asyncio.run(run_round(port, "native", **{**kw, "requests": 1}))  # warm-up (not counted)
            asyncio.run(run_round(port, "openai", **{**kw, "requests": 1}))
            rounds: dict[str, list[dict[str, Any]]] = {"native": [], "openai": []}
            for i in range(args.rounds):
                order = ("native", "openai") if i % 2 == 0 else ("openai", "native")
                for mode in order:
                    r = asyncio.run(run_round(port, mode, **kw, server_pid=server.pid))
                    rounds[mode].append(r)
                    print(f"round {i} {mode}: {r['tokens_per_s']:.0f} tokens/s, HTTP process "
                          f"{r['http_cpu_us_per_token']:.0f} µs CPU/token, model worker "
                          f"{r['worker_cpu_us_per_token']:.0f} µs CPU/token", file=sys.stderr)
        finally:
            stop_processes([server])
    out = {mode: summarize(rs) for mode, rs in rounds.items()}
    out["openai_vs_native_throughput"] = round(out["openai"]["tokens_per_s_median"] /
                                               out["native"]["tokens_per_s_median"], 3)
    # per-round ratios of adjacent rounds (the same machine state), and the CPU cost of the layer: the extra
    # HTTP-process CPU per token as a share of all the server's CPU per token
    pairs = [o["tokens_per_s"] / n["tokens_per_s"] for o, n in zip(rounds["openai"], rounds["native"])]
    out["paired_ratio_median"] = round(float(np.median(pairs)), 3)
    nat, oai = out["native"], out["openai"]
    out["cpu_overhead_share"] = round((oai["http_cpu_us_per_token"] - nat["http_cpu_us_per_token"]) /
                                      (nat["http_cpu_us_per_token"] + nat["worker_cpu_us_per_token"]), 4)
    out["settings"] = {**vars(args), "model": str(args.model or "default architecture, random weights"),
                       "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(out))
        return
    print("| endpoint | tokens/s (median) | TTFT p50 | TTFT p99 | inter-token p50 | inter-token p99 "
          "| HTTP CPU/token | worker CPU/token |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, label in (("native", "native `/v1/models/lm/generate`"), ("openai", "OpenAI `/v1/completions`")):
        s = out[mode]
        print(f"| {label} | {s['tokens_per_s_median']:.0f} | {s['ttft_ms_p50']:.0f} ms | {s['ttft_ms_p99']:.0f} ms "
              f"| {s['inter_token_ms_p50']:.1f} ms | {s['inter_token_ms_p99']:.1f} ms "
              f"| {s['http_cpu_us_per_token']:.0f} µs | {s['worker_cpu_us_per_token']:.0f} µs |")
    print(f"\nOpenAI / native throughput: {out['openai_vs_native_throughput']:.3f} (medians), "
          f"{out['paired_ratio_median']:.3f} (median of paired rounds); extra CPU of the layer: "
          f"{100 * out['cpu_overhead_share']:.1f}% of the server's CPU per token")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
