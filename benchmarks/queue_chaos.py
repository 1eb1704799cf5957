"""Chaos run: N VAE requests through 2 supervised `genloom worker`s while workers are killed and the broker drops
every connection; checks that every request id gets exactly one result and the dead-letter queue holds exactly
the deliberately invalid messages.

    .venv/bin/python benchmarks/queue_chaos.py --requests 10000 --invalid 20

Schedule (by fraction of results received): 20 % kill -9 worker process A, 45 % `rabbitmqctl
close_all_connections` (workers *and* this client lose their connections), 70 % kill -9 worker process B.
The supervisors restart the killed processes; the broker redelivers what they held.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

from genloom.core.supervision import stop_processes
from genloom.queue import DEFAULT_URL as URL, admin
from genloom.queue import messages as m
from genloom.queue.client import QueueClient, Response



def worker_children(supervisor_pid: int) -> list[int]:
    """The worker process(es) a supervisor forked (not multiprocessing's resource tracker)."""
    parents = {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return [p for p, pp in parents.items() if pp == supervisor_pid and b"resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_child(sup: int, *, timeout: float = 120, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [p for p in worker_children(sup) if p != not_pid]
        if kids:
            return kids[0]
        time.sleep(0.1)
    raise TimeoutError(f"supervisor {sup} has no worker process")


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from genloom.export import save
    from genloom.models.vae import VAE, VAEConfig

    tmp = Path(tempfile.mkdtemp(prefix="genloom-chaos-"))
    torch.manual_seed(0)
    path = save(VAE(VAEConfig()), tmp / "vae.safetensors")
    model = f"chaos-{uuid.uuid4().hex[:8]}"
    sups = [subprocess.Popen([sys.executable, "-m", "genloom.cli", "worker", f"{model}={path}", "--amqp", URL,
                              "--name", f"chaos-{i}"], stdout=open(tmp / f"w{i}.log", "wb"), stderr=subprocess.STDOUT)
            for i in range(2)]
    events: list[dict[str, object]] = []
    try:
        await admin.wait_for_consumers(URL, model, 2, timeout=180)
        async with QueueClient(URL, timeout=600, name="chaos-client") as client:
            ids = [f"req-{i}" for i in range(args.requests)]
            got = {"n": 0}
            fired: set[str] = set()
            t0 = time.monotonic()

            async def chaos() -> None:
                plan = [(0.20, "kill A"), (0.45, "drop connections"), (0.70, "kill B")]
                for frac, what in plan:
                    while got["n"] < frac * args.requests:
                        await asyncio.sleep(0.02)
                    t = round(time.monotonic() - t0, 2)
                    if what.startswith("kill"):
                        sup = sups[0 if what == "kill A" else 1]
                        pid = wait_child(sup.pid)
                        os.kill(pid, signal.SIGKILL)
                        events.append({"t": t, "event": f"kill -9 worker process {pid}", "done": got["n"]})
                    else:
                        r = await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", "close_all_connections",
                                                    "chaos test"], capture_output=True, text=True, timeout=120)
                        events.append({"t": t, "event": "rabbitmqctl close_all_connections", "rc": r.returncode,
                                       "done": got["n"]})
                    fired.add(what)

            async def one(rid: str) -> Response:
                fut = await client.submit(model, {"n": 1}, request_id=rid)
                r = await client.wait(fut)
                got["n"] += 1
                return r

            chaos_task = asyncio.ensure_future(chaos())
            # the deliberately invalid messages: half bad JSON, half bad params, all with reply_to
            invalid_ids = [f"bad-{i}" for i in range(args.invalid)]
            conn = await aio_pika.connect(URL)
            ch = await conn.channel(publisher_confirms=True)
            for i, rid in enumerate(invalid_ids):
                body = b"{not json" if i % 2 else m.encode_request(m.Request(rid, model, "sample", {"n": -1}))
                await ch.default_exchange.publish(aio_pika.Message(body, correlation_id=rid, delivery_mode=2,
                                                                   reply_to=client.reply_queue), m.queue_name(model))
            await conn.close()
            window = asyncio.Semaphore(args.max_in_flight)

            async def bounded(rid: str) -> Response | BaseException:
                try:
                    return await one(rid)
                except Exception as e:  # reported, never hidden
                    return e
                finally:
                    window.release()

            tasks = []
            for rid in ids:
                await window.acquire()
                tasks.append(asyncio.ensure_future(bounded(rid)))
            results = await asyncio.gather(*tasks)
            elapsed = time.monotonic() - t0
            await asyncio.wait_for(chaos_task, 60)
            duplicates, stray = client.duplicates, client.stray
        ok_ids = [r.id for r in results if isinstance(r, Response) and r.ok]
        failures = [repr(r) if not isinstance(r, Response) else r.error for r in results
                    if not (isinstance(r, Response) and r.ok)]
        await asyncio.sleep(1.0)
        dead = await admin.drain_dead_letters(URL, model)
        dead_ids = sorted(d["body"]["id"] if isinstance(d["body"], dict) else f"raw:{d['body'][:10]!r}"
                          for d in dead)
        expected_dead = sorted(rid if i % 2 == 0 else f"raw:{b'{not json'!r}" for i, rid in enumerate(invalid_ids))
        summary: dict[str, object] = {
            "requests": args.requests, "seconds": round(elapsed, 1), "rps": round(args.requests / elapsed, 1),
            "ok": len(ok_ids), "unique_ok_ids": len(set(ok_ids)), "failed": len(failures),
            "every_id_exactly_once": sorted(ok_ids) == sorted(ids) and not failures,
            "duplicates_dropped_at_client": duplicates, "stray": stray, "events": events,
            "dead_letters": len(dead), "dead_letter_codes": sorted({str(d["code"]) for d in dead}),
            "dead_letters_are_exactly_the_invalid": dead_ids == expected_dead,
            "first_failures": failures[:3]}
        return summary
    finally:
        stop_processes(sups, timeout=60)
        await admin.delete_model_queues(URL, model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--invalid", type=int, default=20)
    p.add_argument("--max-in-flight", type=int, default=1000)
    args = p.parse_args()
    summary = asyncio.run(main_async(args))
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["every_id_exactly_once"] and summary["dead_letters_are_exactly_the_invalid"] else 1)


if __name__ == "__main__":
    main()
