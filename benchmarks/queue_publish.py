"""CPU per confirmed publish: aio-pika ``default_exchange.publish(Message(...))``, the aiormq channel under it,
and ``genloom.queue.amqp.publish_batch`` (groups in one frame write).

    .venv/bin/python benchmarks/queue_publish.py --messages 10000 --repeats 3

All publish the same 100-byte persistent body to one queue with publisher confirms, 500 in flight (the batch
variant: groups of 500, each awaited before the next); the ways alternate within each repeat. Reports the
client CPU (process time) per message; medians over the repeats.
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

from genloom.queue import DEFAULT_URL as URL, amqp



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

    async def via_publish_batch(k: int) -> None:
        futs = await amqp.publish_batch(raw, [amqp.Outgoing(name, body) for _ in range(k)])
        await asyncio.gather(*futs)

    async def one_by_one(fn: object) -> None:
        await asyncio.gather(*(fn() for _ in range(n)))  # type: ignore[operator]

    async def batched() -> None:
        for i in range(0, n, 500):
            await via_publish_batch(min(500, n - i))

    ways = {"aio_pika_us": lambda: one_by_one(via_aio_pika), "aiormq_us": lambda: one_by_one(via_aiormq),
            "publish_batch_us": batched}
    out: dict[str, list[float]] = {k: [] for k in ways}
    try:
        for _ in range(repeats):
            for key, way in ways.items():
                c0 = time.process_time()
                await way()
                out[key].append(1e6 * (time.process_time() - c0) / n)
                await raw.queue_purge(name)
    finally:
        await raw.queue_delete(name)
        await conn.close()
    med = {k: round(statistics.median(v), 1) for k, v in out.items()}
    return {"messages": n, "repeats": repeats, **med,
            "ratio_aio_pika_to_publish_batch": round(med["aio_pika_us"] / med["publish_batch_us"], 2),
            "all": {k: [round(x) for x in v] for k, v in out.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.messages, args.repeats))))


if __name__ == "__main__":
    main()
