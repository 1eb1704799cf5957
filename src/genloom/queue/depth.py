"""Queue depth from the broker, for autoscalers: ready messages and consumers of every queue of the served models.

AMQP tells a client two numbers per queue (``queue.declare`` with ``passive``): messages ready and consumers.
Unacknowledged messages are known only to the management plugin's HTTP API or to the consumers that hold them,
so each worker exports its own (``genloom_queue_messages_unacked``) and a dashboard or scaler sums them.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq

from genloom.queue.amqp import CONNECTION_ERRORS
from genloom.queue.topology import all_queues

log = logging.getLogger("genloom.queue.depth")


async def queue_depths(connection: Any, queues: list[str]) -> dict[str, tuple[int, int] | None]:
    """{queue: (ready, consumers) or None if it does not exist}, over one short-lived channel per missing queue
    (a passive declare of a missing queue closes its channel)."""
    out: dict[str, tuple[int, int] | None] = {}
    ch = None
    try:
        for q in queues:
            if ch is None or ch.is_closed:
                ch = await connection.channel()
            try:
                res = (await ch.declare_queue(q, passive=True)).declaration_result
                out[q] = (int(res.message_count or 0), int(res.consumer_count or 0))
            except aiormq.exceptions.ChannelNotFoundEntity:
                out[q] = None
    finally:
        if ch is not None and not ch.is_closed:
            try:
                await ch.close()
            except CONNECTION_ERRORS:
                pass
    return out


async def poll_depth(connection: Any, models: list[str], metrics: Any, *, interval: float) -> None:
    """Refresh the ready/consumers gauges every ``interval`` seconds until cancelled."""
    queues = [q for model in models for q in all_queues(model)]
    while True:
        try:
            for q, v in (await queue_depths(connection, queues)).items():
                if v is not None:
                    metrics.ready.labels(q).set(v[0])
                    metrics.consumers.labels(q).set(v[1])
        except (*CONNECTION_ERRORS, asyncio.TimeoutError) as e:  # reconnecting: the next round tries again
            log.debug("queue depth not refreshed (%r)", e)
        await asyncio.sleep(interval)
