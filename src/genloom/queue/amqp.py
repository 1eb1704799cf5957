"""AMQP plumbing shared by the worker and the client: publishing many confirmed messages in one frame write.

Why (benchmarks/queue_publish.py, docs/benchmarks.md "Distributed queue"): aiormq's ``basic_publish`` costs a
lock, a drain future, a confirmation future registered in the channel's future store, and its own socket
write per message; a worker publishing a batch's responses or a client publishing its next window of
requests paid that per message (and a task each, to overlap the confirms).
``publish_batch`` sends N persistent, mandatory messages on the default exchange as one frame write under the
channel lock and returns N confirmation futures, registered exactly as ``Channel.basic_publish`` registers them
(delivery tag → future, message id → delivery tag for ``basic.return``), so the broker's acks, nacks and
returns resolve them the same way, and a channel close rejects them. On an aiormq without those attributes it
falls back to one ``basic_publish`` task per message.

Writes into aiormq's connection write queue give up when the channel closes (``_put``): aiormq's own
``write_queue.put`` waits forever when the connection died with a full queue.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Awaitable, Callable, NamedTuple

import aio_pika
import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from genloom.errors import GenloomError

log = logging.getLogger("genloom.queue.amqp")
# what a dropped connection or channel raises; callers treat these as "the broker redelivers / will requeue"
CONNECTION_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError,
                     asyncio.TimeoutError, RuntimeError)

_FAST_ATTRS = ("confirmations", "message_id_delivery_tag", "delivery_tag", "write_queue", "number",
               "publisher_confirms", "max_content_size", "closing", "lock")


class Outgoing(NamedTuple):
    routing_key: str
    body: bytes
    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    headers: dict[str, Any] | None = None


# -- connections ------------------------------------------------------------------------------------------------
async def connect_robust(url: str, *, name: str, reconnect_interval: float = 1.0
                         ) -> aio_pika.abc.AbstractRobustConnection:
    """aio-pika's robust connection (reconnects, restores channels and queues), named for the broker's UI.
    Raises GenloomError with the fix when the broker cannot be reached."""
    try:
        return await aio_pika.connect_robust(url, reconnect_interval=reconnect_interval,
                                             client_properties={"connection_name": name})
    except (OSError, aiormq.exceptions.AMQPError) as e:
        raise GenloomError(f"cannot connect to RabbitMQ at {redact(url)} ({e or type(e).__name__}); "
                           f"is the broker running and the URL right (amqp://user:pass@host:5672/)?") from None


def redact(url: str) -> str:
    """amqp://user:secret@host/ → amqp://user:***@host/ (never print a password)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


class RobustConsumers:
    """Raw aiormq consumers (no aio-pika IncomingMessage and its extra task per delivery) on a robust aio-pika
    channel, kept consuming: after a reconnect (the robust channel re-declares its queues, then calls its reopen
    callbacks) and after the broker cancels a consumer (its queue was deleted: ``declare`` runs again, retried
    every ``retry_s``). Each consumer keeps its tag across reconnects."""

    def __init__(self, channel: aio_pika.abc.AbstractRobustChannel, declare: Callable[[], Awaitable[Any]], *,
                 retry_s: float = 1.0) -> None:
        self.channel, self.declare, self.retry_s = channel, declare, retry_s
        self.consumers: dict[str, tuple[str, Callable[[Any], Awaitable[None]]]] = {}  # tag -> (queue, callback)
        self.active = False
        self._recovery: asyncio.Task[None] | None = None

    def add(self, tag: str, queue: str, callback: Callable[[Any], Awaitable[None]]) -> None:
        self.consumers[tag] = (queue, callback)

    async def start(self) -> None:
        self.channel.reopen_callbacks.add(self._on_reopen)
        self.active = True
        await self._consume()

    async def stop(self) -> None:
        """Cancel the consumers (deliveries already read from the socket still reach their callbacks)."""
        self.active = False
        if self._recovery is not None:
            self._recovery.cancel()
        self.channel.reopen_callbacks.discard(self._on_reopen)
        try:
            raw: Any = await asyncio.wait_for(self.channel.get_underlay_channel(), 5)  # aiormq's Channel
            for tag in self.consumers:
                if tag in raw.consumers:
                    await raw.basic_cancel(tag, timeout=5)
        except (*CONNECTION_ERRORS, asyncio.CancelledError):
            pass

    async def _consume(self) -> None:
        raw: Any = await self.channel.get_underlay_channel()  # aiormq's Channel (has .consumers)
        raw.on_consumer_cancel_callbacks.add(self._on_cancel)
        for tag, (queue, callback) in self.consumers.items():
            if self.active and tag not in raw.consumers:
                await raw.basic_consume(queue, callback, consumer_tag=tag)

    def _on_cancel(self, frame: Any) -> None:
        if not self.active or frame.consumer_tag not in self.consumers:
            return
        log.warning("the broker cancelled consumer %s (queue deleted?); declaring it again", frame.consumer_tag)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        while self.active:
            await asyncio.sleep(self.retry_s)
            try:
                await self.declare()
                await self._consume()
                log.info("consuming again after the broker cancelled a consumer")
                return
            except CONNECTION_ERRORS as e:
                log.warning("could not consume again yet (%r); retrying", e)

    async def _on_reopen(self, _channel: Any) -> None:
        try:
            await self._consume()
        except CONNECTION_ERRORS as e:  # the channel died again: the next reopen consumes
            log.warning("could not consume after a reconnect (%r)", e)


# -- publishing ------------------------------------------------------------------------------------------------
class _Confirmations:
    """The confirmation futures of one ``publish_batch``: rejected together if the channel closes first.

    aiormq registers each confirmation future in the channel's future store (two set insertions and two
    closures per message, which showed in profiles); here one observer of the channel's closing future covers
    the whole batch and is dropped, with the batch's message-id → delivery-tag entries, once all are resolved.
    """

    __slots__ = ("futs", "ids", "channel", "observer", "left")

    def __init__(self, channel: Any, futs: list[asyncio.Future[Any]], ids: list[tuple[int, str]]) -> None:
        self.channel, self.futs, self.ids, self.left = channel, futs, ids, len(futs)
        self.observer = channel.closing
        self.observer.add_done_callback(self.reject)
        for f in futs:
            f.add_done_callback(self.one_done)

    def reject(self, closing: asyncio.Future[Any]) -> None:
        exc = None if closing.cancelled() else closing.exception()
        exc = exc or aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")
        for f in self.futs:
            if not f.done():
                f.set_exception(exc)

    def one_done(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: no "exception was never retrieved" for a batch nobody awaits any more
        self.left -= 1
        if self.left:
            return
        self.observer.remove_done_callback(self.reject)
        if self.observer is not getattr(self.channel, "_closing", None):
            self.observer.cancel()  # an observer (aiormq ≥ 7), never the channel's own closing future
        by_id = self.channel.message_id_delivery_tag
        for tag, mid in self.ids:
            if by_id.get(mid) == tag:
                del by_id[mid]


def _properties(msg: Outgoing) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(delivery_mode=2, content_type="application/json", headers=msg.headers,
                                        correlation_id=msg.correlation_id, reply_to=msg.reply_to,
                                        message_id=msg.message_id or uuid.uuid4().hex)


def _fast(raw: Any) -> bool:
    return all(hasattr(raw, a) for a in _FAST_ATTRS) and bool(raw.publisher_confirms)


async def _put(raw: Any, frame: ChannelFrame, sent: list[bool]) -> None:
    """Queue a frame for the connection's writer; give up (ChannelInvalidStateError) if the channel closes first.

    aiormq's own ``write_queue.put`` waits forever when the connection died with a full write queue (its writer
    is gone): a publisher stuck there holds the channel lock, and every later publish on that channel waits too.
    """
    q = raw.write_queue
    try:
        q.put_nowait(frame)
        sent.append(True)
        return
    except asyncio.QueueFull:
        pass
    put = asyncio.ensure_future(q.put(frame))
    closing = raw.closing
    try:
        await asyncio.wait((put, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if put.done() and not put.cancelled() and put.exception() is None:
            sent.append(True)
        else:
            put.cancel()
        if closing is not getattr(raw, "_closing", None):
            closing.cancel()  # an observer of the channel's closing future (aiormq ≥ 7), not the future itself
    if not sent:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{raw!r} closed while writing")


def ack(raw: Any, tag: int, *, multiple: bool, tasks: set[asyncio.Task[None]]) -> None:
    """Send ``basic.ack`` without waiting. When the connection's write queue is full, a task (kept in ``tasks``
    until done) finishes queueing it. A closed channel is ignored: the broker requeues what was unacked on it."""
    if raw.is_closed:
        return
    frame = ChannelFrame.marshall(channel_number=raw.number,
                                  frames=[spec.Basic.Ack(delivery_tag=tag, multiple=multiple)])
    try:
        raw.write_queue.put_nowait(frame)
    except asyncio.QueueFull:
        task = asyncio.ensure_future(_put_quietly(raw, frame))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _put_quietly(raw: Any, frame: ChannelFrame) -> None:
    try:
        await _put(raw, frame, [])
    except CONNECTION_ERRORS:
        pass


async def publish_batch(raw: aiormq.abc.AbstractChannel, msgs: list[Outgoing]) -> list[asyncio.Future[Any]]:
    """Persistent, mandatory publishes on the default exchange, in one frame write; their confirmation futures.

    A future resolves when the broker confirmed its message; it raises aiormq's PublishError when no queue has
    that name (returned), DeliveryError on a nack, a connection error when the channel closes first. Raises
    ChannelInvalidStateError at once when the channel is closed.
    """
    if not msgs:
        return []
    if not _fast(raw):
        return [asyncio.ensure_future(raw.basic_publish(m.body, exchange="", routing_key=m.routing_key,
                                                        properties=_properties(m), mandatory=True))
                for m in msgs]
    r: Any = raw
    loop = asyncio.get_running_loop()
    frames: list[Any] = []
    futs: list[asyncio.Future[Any]] = []
    sent: list[bool] = []
    async with r.lock:
        first = r.delivery_tag
        registered: list[tuple[int, str]] = []
        try:
            for m in msgs:
                props = _properties(m)
                r.delivery_tag += 1
                tag, mid = r.delivery_tag, props.message_id
                fut = loop.create_future()
                r.confirmations[tag] = fut
                r.message_id_delivery_tag[mid] = tag
                registered.append((tag, mid))
                futs.append(fut)
                frames.append(spec.Basic.Publish(exchange="", routing_key=m.routing_key, mandatory=True))
                frames.append(ContentHeader(properties=props, body_size=len(m.body)))
                body, size = m.body, r.max_content_size
                frames.extend(ContentBody(body[i:i + size]) for i in range(0, len(body), size))
            await _put(r, ChannelFrame.marshall(channel_number=r.number, frames=frames), sent)
        except BaseException:
            if not sent:  # the broker has not seen any of them: give the sequence numbers back
                r.delivery_tag = first
                for (tag, mid), fut in zip(registered, futs):
                    r.confirmations.pop(tag, None)
                    if r.message_id_delivery_tag.get(mid) == tag:
                        r.message_id_delivery_tag.pop(mid)
                    fut.cancel()
            raise
    _Confirmations(r, futs, registered)
    return futs


async def publish(channel: aio_pika.abc.AbstractChannel, routing_key: str, body: bytes, *,
                  correlation_id: str | None = None, reply_to: str | None = None, message_id: str | None = None,
                  headers: dict[str, Any] | None = None, timeout: float | None = None) -> None:
    """Persistent, mandatory publish on the default exchange; returns once the broker confirmed it.

    Goes straight to the aiormq channel under the robust aio-pika one (``publish_batch``): the same frames as
    ``default_exchange.publish(Message(...))`` for less client CPU per message (benchmarks/queue_publish.py).
    Raises aiormq's PublishError when no queue has that name, connection errors when the channel is down,
    asyncio.TimeoutError when not confirmed within ``timeout`` seconds.
    """
    raw = await asyncio.wait_for(channel.get_underlay_channel(), timeout)
    (fut,) = await publish_batch(raw, [Outgoing(routing_key, body, correlation_id=correlation_id,
                                                reply_to=reply_to, message_id=message_id, headers=headers)])
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        fut.cancel()
        raise
