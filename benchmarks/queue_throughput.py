"""End-to-end RabbitMQ throughput: K `genloom worker` processes, one async client, VAE sample n = 1.

    .venv/bin/python benchmarks/queue_throughput.py --requests 10000 --workers 2 --repeats 3

For each batch size (default: 128 = batching on, 1 = batching off) it starts the workers, submits the requests
with at most --max-in-flight unanswered (submit → result, persistent + confirmed both ways), and reports the
throughput and the per-request latency p50/p99. Runs alternate between the settings so that machine noise hits
both alike; the summary gives medians and the ratio. The model is the lecture VAE (784-400-20) with random
weights (throughput does not depend on the weights).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from genloom.core.supervision import stop_processes
from genloom.queue import DEFAULT_URL as URL, admin
from genloom.queue.client import QueueClient, Response



def make_model(path: Path) -> Path:
    import torch

    from genloom.export import save
    from genloom.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    return save(VAE(VAEConfig()), path)


def start_workers(model: str, path: Path, *, k: int, batch_size: int, prefetch: int,
                  log_dir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(k):
        cmd = [sys.executable, "-m", "genloom.cli", "worker", f"{model}={path}", "--amqp", URL,
               "--batch-size", str(batch_size), "--prefetch", str(prefetch), "--name", f"bench-{i}"]
        log = open(log_dir / f"worker-{batch_size}-{i}.log", "wb")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    return procs


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (read only); NaN when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_where(pred: "Callable[[int, str, bytes], bool]") -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                comm, ppid = stat[stat.index("(") + 1:stat.rindex(")")], int(stat.rsplit(")", 1)[1].split()[1])
                if pred(ppid, comm, (d / "cmdline").read_bytes()):
                    out.append(int(d.name))
            except (OSError, ValueError):
                continue
    return out


async def one_run(model: str, n_requests: int, max_in_flight: int, *, sups: list[int] | None = None
                  ) -> dict[str, float]:
    workers = pids_where(lambda ppid, comm, cmd: ppid in (sups or []) and b"resource_tracker" not in cmd)
    # the broker's VM (not a short-lived rabbitmqctl, which is a beam.smp too)
    broker = pids_where(lambda ppid, comm, cmd: comm == "beam.smp" and b"rabbit\x00boot" in cmd)
    before = {p: cpu_seconds(p) for p in workers + broker}
    async with QueueClient(URL, timeout=120) as client:
        await client.check_model(model)
        t0, c0 = time.monotonic(), time.process_time()
        res = await client.run_many(model, ({"n": 1} for _ in range(n_requests)), max_in_flight=max_in_flight)
        elapsed, client_cpu = time.monotonic() - t0, time.process_time() - c0
    used = {p: cpu_seconds(p) - before[p] for p in before}
    ok = [r for r in res if isinstance(r, Response) and r.ok]
    lat = sorted(r.latency_s * 1000 for r in ok)
    return {"ok": len(ok), "failed": n_requests - len(ok), "seconds": elapsed, "rps": n_requests / elapsed,
            "p50_ms": lat[len(lat) // 2] if lat else float("nan"),
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
            "duplicates": client.duplicates,
            # CPU per request (µs), load-independent: where the work goes, and what 2 idle cores could do
            "cpu_us_client": 1e6 * client_cpu / n_requests,
            "cpu_us_workers": 1e6 * sum(used[p] for p in workers) / n_requests,
            "cpu_us_broker": 1e6 * sum(used[p] for p in broker) / n_requests,
            "loadavg_1m": os.getloadavg()[0]}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="genloom-qbench-"))
    path = make_model(tmp / "vae.safetensors")
    results: dict[int, list[dict[str, float]]] = {b: [] for b in args.batch_sizes}
    for rep in range(args.repeats):
        for b in args.batch_sizes:
            model = f"bench-{uuid.uuid4().hex[:8]}"
            procs = start_workers(model, path, k=args.workers, batch_size=b, prefetch=args.prefetch, log_dir=tmp)
            try:
                await admin.wait_for_consumers(URL, model, args.workers, timeout=120)
                await one_run(model, min(500, args.requests), args.max_in_flight)  # warm-up
                r = await one_run(model, args.requests, args.max_in_flight, sups=[p.pid for p in procs])
                cpu = r["cpu_us_client"] + r["cpu_us_workers"] + r["cpu_us_broker"]
                r["capacity_rps_on_2_idle_cores"] = 2e6 / cpu  # if nothing else ran on the 2 cores
            finally:
                stop_processes(procs)
                await admin.delete_model_queues(URL, model)
            results[b].append(r)
            print(json.dumps({"repeat": rep, "batch_size": b, **{k: round(v, 2) for k, v in r.items()}}),
                  flush=True)
    summary: dict[str, object] = {"requests": args.requests, "workers": args.workers,
                                  "max_in_flight": args.max_in_flight, "cpus": os.cpu_count()}
    for b, rs in results.items():
        summary[f"batch_{b}"] = {k: round(statistics.median(r[k] for r in rs), 2)
                                 for k in ("rps", "p50_ms", "p99_ms", "failed", "duplicates", "cpu_us_client",
                                           "cpu_us_workers", "cpu_us_broker", "capacity_rps_on_2_idle_cores",
                                           "loadavg_1m")}
        summary[f"batch_{b}"]["rps_all"] = [round(r["rps"]) for r in rs]  # type: ignore[index]
    if len(args.batch_sizes) == 2:
        a, b = args.batch_sizes
        summary["speedup"] = round(statistics.median(r["rps"] for r in results[a])
                                   / statistics.median(r["rps"] for r in results[b]), 2)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1])
    p.add_argument("--prefetch", type=int, default=512)
    p.add_argument("--max-in-flight", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
