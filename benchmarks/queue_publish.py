"""CPU per confirmed publish: aio-pika ``default_exchange.publish(Message(...))`` vs the aiormq channel under it.

    .venv/bin/python benchmarks/queue_publish.py --messages 10000 --repeats 3

Both publish the same 100-byte body to one queue with publisher confirms, 500 in flight; the two ways alternate
within each repeat. Reports the client CPU (process time) per message; medians over the repeats.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import aio_pika
import aiormq

URL = "amqp://guest:guest@127.0.0.1:5672/"


async def run(n: int, repeats: int) -> dict[str, object]:
    conn = await aio_pika.connect(URL)
    ch = await conn.channel(publisher_confirms=True)
    name = f"bench-publish-{uuid.uuid4().hex[:8]}"
    await ch.declare_queue(name)
    raw = await ch.get_underlay_channel()
    body, window = b"x" * 100, asyncio.Semaphore(500)

    async def via_aio_pika() -> None:
        async with window:
            await ch.default_exchange.publish(aio_pika.Message(body, delivery_mode=2), name)

    async def via_aiormq() -> None:
        async with window:
            await raw.basic_publish(body, exchange="", routing_key=name,
                                    properties=aiormq.spec.Basic.Properties(delivery_mode=2))

    out: dict[str, list[float]] = {"aio_pika_us": [], "aiormq_us": []}
    try:
        for _ in range(repeats):
            for key, fn in (("aio_pika_us", via_aio_pika), ("aiormq_us", via_aiormq)):
                c0 = time.process_time()
                await asyncio.gather(*(fn() for _ in range(n)))
                out[key].append(1e6 * (time.process_time() - c0) / n)
                await raw.queue_purge(name)
    finally:
        await raw.queue_delete(name)
        await conn.close()
    a, b = statistics.median(out["aio_pika_us"]), statistics.median(out["aiormq_us"])
    return {"messages": n, "repeats": repeats, "aio_pika_us": round(a, 1), "aiormq_us": round(b, 1),
            "ratio": round(a / b, 2), "all": {k: [round(x) for x in v] for k, v in out.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.repeats))))


if __name__ == "__main__":
    main()
