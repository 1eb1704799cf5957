"""How a delivered request ends: answered, retried, dead-lettered or handed back — and acked only after that.

Every path ends in ``Outcomes.finish`` (the delivery is acked through its channel's ``AckWindow``, flow.py) once
whatever had to be published first — the response, a retry copy, a dead letter, a continuation — was confirmed
by the broker; when a publish fails the delivery stays unacked and the broker redelivers it (at-least-once; the
client drops duplicates). A delivery whose channel died is never acked here: the broker has already requeued it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq

from genloom.queue import amqp, messages as m
from genloom.queue.amqp import CONNECTION_ERRORS, publish
from genloom.queue.flow import AckWindow
from genloom.queue.metrics import WorkerMetrics
from genloom.queue.topology import request_queues

log = logging.getLogger("genloom.queue.worker")
PUBLISH_TIMEOUT_S = 15.0  # a reply or retry not confirmed by then is given up: its request stays unacked


@dataclass(eq=False)
class Delivery:
    """One delivered request: the raw aiormq delivery and what the worker needs of it."""
    msg: aiormq.abc.DeliveredMessage
    t0: float
    window: AckWindow
    queue: str = ""
    count: int = 0  # deliveries of this message before this one
    key: str = ""  # poison.message_key
    req: m.Request | None = None

    @property
    def tag(self) -> int:
        return self.msg.delivery.delivery_tag  # type: ignore[union-attr,return-value]

    @property
    def props(self) -> Any:
        return self.msg.header.properties

    @property
    def live(self) -> bool:
        return not self.window.channel.is_closed


class Outcomes:
    """The ends of deliveries on one worker's confirm-mode ``channel`` (module docstring)."""

    def __init__(self, channel: aio_pika.abc.AbstractRobustChannel, metrics: WorkerMetrics, *,
                 max_retries: int) -> None:
        self.channel, self.metrics, self.max_retries = channel, metrics, max_retries

    async def reply(self, model: str, batch: list[Delivery], results: list[Any]) -> None:
        """Answer each request with its result, then ack each one whose response the broker confirmed."""
        mx = self.metrics.of(model)
        # all responses in one frame write, then ack each request whose response the broker confirmed
        replies = [(it, amqp.Outgoing(it.props.reply_to, m.ok_response(it.req.id, res),  # type: ignore[union-attr]
                                      correlation_id=it.props.correlation_id))
                   for it, res in zip(batch, results) if it.props.reply_to]
        for it in batch:
            if not it.props.reply_to:
                self.finish(model, it)
        if not replies:
            return
        try:
            futs = await self._publish_batch([out for _, out in replies])
        except CONNECTION_ERRORS as e:  # not acked: the broker redelivers them
            log.debug("replies not published (%r)", e)
            return
        await asyncio.wait(futs, timeout=PUBLISH_TIMEOUT_S)
        for (it, _), fut in zip(replies, futs):
            if not fut.done():
                fut.cancel()  # not confirmed in time: not acked, the broker redelivers it
                continue
            exc = fut.exception()
            if exc is None:
                self.finish(model, it)
            elif isinstance(exc, aiormq.exceptions.PublishError):  # no such reply queue: the client is gone
                mx.unroutable.inc()
                self.finish(model, it)
            else:
                log.debug("reply for %s not confirmed (%r)", it.props.correlation_id, exc)

    async def _publish_batch(self, msgs: list[amqp.Outgoing]) -> list[asyncio.Future[Any]]:
        raw = await asyncio.wait_for(self.channel.get_underlay_channel(), PUBLISH_TIMEOUT_S)
        return await amqp.publish_batch(raw, msgs)

    async def hand_back(self, model: str, item: Delivery, headers: dict[str, Any] | None) -> None:
        """Publish a copy (confirmed) to the urgent queue, then ack the delivery; unacked if the publish fails."""
        props = item.props
        try:
            await self.publish(request_queues(model)[1], item.msg.body, model=model, headers=headers,
                               correlation_id=props.correlation_id, reply_to=props.reply_to,
                               message_id=props.message_id)
        except CONNECTION_ERRORS as e:
            log.debug("hand-back publish failed (%r); the broker redelivers the message", e)
            return
        self.metrics.lease_renewals.labels(model).inc()
        self.finish(model, item)

    async def retry(self, model: str, item: Delivery, *, reason: str, code: str) -> None:
        """Republish with the retry count + 1, or dead-letter when retries are used up; then ack."""
        props = item.props
        retries = int((props.headers or {}).get(m.H_RETRIES, 0) or 0) + 1
        if retries > self.max_retries:
            await self.dead_letter(model, item, f"gave up after {retries - 1} retries; last: {reason}", code,
                                   request_id=m.request_id_of(item.msg.body))
            return
        try:
            await self.publish(item.queue or m.queue_name(model), item.msg.body, model=model,
                               headers={**(props.headers or {}), m.H_RETRIES: retries},
                               correlation_id=props.correlation_id, reply_to=props.reply_to,
                               message_id=props.message_id)
            self.metrics.of(model).retried.inc()
            self.finish(model, item)
        except CONNECTION_ERRORS as e:
            log.debug("retry publish failed (%r); the broker redelivers the message", e)

    async def dead_letter(self, model: str, item: Delivery, reason: str, code: str, *,
                          request_id: str | None) -> None:
        """Copy to genloom.<model>.dead with the reason in a header, answer reply_to, then ack the original."""
        props = item.props
        headers = {**(props.headers or {}), m.H_REASON: reason[:1000], m.H_ERROR_CODE: code,
                   m.H_ORIGIN: m.queue_name(model)}
        try:
            await self.publish(m.dead_letter_queue(model), item.msg.body, headers=headers, model=model,
                               correlation_id=props.correlation_id, reply_to=props.reply_to)
            self.metrics.dead_lettered.labels(model, code).inc()
            if props.reply_to:
                await self.publish(props.reply_to, m.error_response(request_id, reason, code),
                                   correlation_id=props.correlation_id, model=model)
            self.finish(model, item)
        except CONNECTION_ERRORS as e:
            log.debug("dead-letter publish failed (%r); the broker redelivers the message", e)

    async def publish(self, routing_key: str, body: bytes, *, model: str, correlation_id: str | None = None,
                      reply_to: str | None = None, headers: dict[str, Any] | None = None,
                      message_id: str | None = None) -> None:
        """One confirmed publish; an unroutable one (no such queue: the client is gone) only counts."""
        try:
            await publish(self.channel, routing_key, body, correlation_id=correlation_id, reply_to=reply_to,
                          headers=headers, timeout=PUBLISH_TIMEOUT_S, message_id=message_id)
        except aiormq.exceptions.PublishError:  # no such queue: the client is gone; nobody to answer
            self.metrics.of(model).unroutable.inc()

    def finish(self, model: str, item: Delivery) -> None:
        """Ack (batched by the item's ack window) unless its channel died (then the broker requeued it)."""
        mx = self.metrics.of(model)
        if item.live:
            item.window.finish(item.tag)
            mx.acked.inc()
            mx.latency.observe(time.monotonic() - item.t0)
        mx.in_flight.dec()
        self.metrics.unacked_add(item.queue, -1)
