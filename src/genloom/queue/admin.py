"""Small broker-side helpers for tests, benchmarks and operators: queue depth, consumers, dead letters, cleanup."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import aiormq

from genloom.queue import messages as m


async def queue_info(url: str, name: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of queue ``name``, or None when it does not exist."""
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        try:
            q = await ch.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        res = q.declaration_result
        return int(res.message_count or 0), int(res.consumer_count or 0)
    finally:
        await conn.close()


async def wait_for_consumers(url: str, model: str, count: int, *, timeout: float = 60.0) -> None:
    """Until ``genloom.<model>`` has at least ``count`` consumers (workers ready); TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await queue_info(url, m.queue_name(model))
        if info is not None and info[1] >= count:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{m.queue_name(model)} did not get {count} consumers within {timeout:.0f} s")


async def drain_dead_letters(url: str, model: str) -> list[dict[str, Any]]:
    """Take every message from ``genloom.<model>.dead``: [{body, reason, code, retries}], acking each."""
    out: list[dict[str, Any]] = []
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        try:
            q = await ch.declare_queue(m.dead_letter_queue(model), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return out
        while (msg := await q.get(fail=False)) is not None:
            h = msg.headers or {}
            try:
                body: Any = json.loads(msg.body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = msg.body
            out.append({"body": body, "reason": _s(h.get(m.H_REASON)), "code": _s(h.get(m.H_ERROR_CODE)),
                        "retries": h.get(m.H_RETRIES, 0)})
            await msg.ack()
    finally:
        await conn.close()
    return out


async def existing_queues(url: str, names: list[str]) -> list[str]:
    """Those of ``names`` that exist on the broker (a passive declare of each), in order, each once."""
    found = []
    conn = await aio_pika.connect(url)
    try:
        for name in dict.fromkeys(names):
            ch = await conn.channel()
            try:
                await ch.declare_queue(name, passive=True)
                found.append(name)
                await ch.close()
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass
    finally:
        await conn.close()
    return found


async def delete_queues(url: str, names: list[str]) -> None:
    """Delete each queue of ``names`` that exists, whatever it holds (tests and benchmarks clean up)."""
    conn = await aio_pika.connect(url)
    try:
        for name in names:
            ch = await conn.channel()
            try:
                await ch.queue_delete(name)
            except aiormq.exceptions.AMQPError:
                pass
    finally:
        await conn.close()


async def delete_model_queues(url: str, model: str) -> None:
    """Delete ``genloom.<model>``, its urgent and its dead-letter queue (tests and benchmarks clean up)."""
    from genloom.queue.topology import all_queues

    await delete_queues(url, all_queues(model))


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v
