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
import uuid
from typing import Any, Awaitable, NamedTuple

import aio_pika
import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

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
    """aio-pika's robust connection (reconnects, restores channels and queues), named for the broker's UI."""
    return await aio_pika.connect_robust(url, reconnect_interval=reconnect_interval,
                                         client_properties={"connection_name": name})


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


def ack_nowait(raw: Any, tag: int, *, multiple: bool) -> Awaitable[None] | None:
    """Send ``basic.ack``; None when it is queued already, else an awaitable that finishes queueing it.

    Raises ChannelInvalidStateError when the channel is closed.
    """
    if raw.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{raw!r} closed")
    frame = ChannelFrame.marshall(channel_number=raw.number,
                                  frames=[spec.Basic.Ack(delivery_tag=tag, multiple=multiple)])
    try:
        raw.write_queue.put_nowait(frame)
        return None
    except asyncio.QueueFull:
        return _put(raw, frame, [])


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
