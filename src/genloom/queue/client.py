"""Async client: publish requests (persistent, confirmed), await each response by correlation id, exactly once.

    async with QueueClient("amqp://guest:guest@127.0.0.1:5672/") as client:
        resp = await client.request("vae", {"n": 4, "seed": 0})
        images = decode_images(resp.result)                   # float32 (4, 28, 28)

Responses arrive on a private reply queue ``genloom.reply.<random>``; it is durable and expires only after
``reply_ttl_s`` unused, so responses published while this client is reconnecting wait there. A publish that
fails because the connection dropped is retried (same id) once the robust connection is back. Redelivery of a
request can produce a second response: the client keeps the first and counts the rest in ``duplicates``.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import aio_pika
import aiormq

from genloom.errors import GenloomError
from genloom.queue import amqp
from genloom.queue import messages as m
from genloom.queue.amqp import CONNECTION_ERRORS, publish, redact
from genloom.queue.topology import queue_for


class QueueTimeout(GenloomError):
    """No response within the timeout."""


@dataclass(frozen=True)
class Response:
    id: str
    ok: bool
    result: Any
    error: str | None
    code: str | None
    latency_s: float  # submit → response received


class QueueClient:
    def __init__(self, url: str, *, timeout: float = 60.0, prefetch: int = 2000, reply_ttl_s: float = 600.0,
                 name: str = "genloom-client") -> None:
        if timeout <= 0 or prefetch < 1 or reply_ttl_s <= 0:
            raise ValueError("timeout and reply_ttl_s must be > 0, prefetch ≥ 1")
        self.url, self.timeout, self.prefetch, self.reply_ttl_s, self.name = url, timeout, prefetch, reply_ttl_s, name
        self.reply_queue = f"genloom.reply.{uuid.uuid4().hex}"
        self.duplicates = 0  # responses for an id that already had one (redelivered requests)
        self.stray = 0  # responses for ids this client never sent
        self.republished = 0  # requests published again because the connection dropped before their confirm
        self._pending: dict[str, tuple[asyncio.Future[Response], float]] = {}
        self._answered: set[str] = set()
        self._checked: set[str] = set()
        self._check_lock = asyncio.Lock()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._consumer: amqp.RobustConsumers | None = None
        self._ack_channel: Any = None  # the raw channel of the newest unacked response, and its tag
        self._ack_tag = 0
        self._ack_scheduled = False
        self._acks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> "QueueClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._connection = await amqp.connect_robust(self.url, name=self.name)
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)  # type: ignore
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self._declare()
        self._consumer = amqp.RobustConsumers(self._channel, self._declare, retry_s=0.5)
        self._consumer.add(f"genloom-client.{uuid.uuid4().hex[:12]}", self.reply_queue, self._on_response)
        await self._consumer.start()

    async def _declare(self) -> aio_pika.abc.AbstractQueue:
        assert self._channel is not None
        return await self._channel.declare_queue(
            self.reply_queue, durable=True, arguments={"x-expires": int(self.reply_ttl_s * 1000)})

    async def close(self) -> None:
        if self._connection is None:
            return
        self._flush_acks()
        if self._acks:
            await asyncio.gather(*list(self._acks), return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.delete(if_unused=False, if_empty=False), 5)
            except (*CONNECTION_ERRORS, asyncio.CancelledError):
                pass  # it expires by itself after reply_ttl_s
        await self._connection.close()
        self._connection = None
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.cancel()

    @property
    def answered(self) -> int:
        """How many requests have their (first) response."""
        return len(self._answered)

    # -- requests ---------------------------------------------------------------------------------------------
    async def check_model(self, model: str) -> None:
        """Fail early, with the fix, when no worker has declared ``genloom.<model>`` (checked once per model)."""
        if model in self._checked:
            return
        assert self._connection is not None, "call connect() first"
        async with self._check_lock:
            if model in self._checked:
                return
            try:
                ch = await self._connection.channel()
            except CONNECTION_ERRORS:
                return  # reconnecting: the mandatory publish reports a missing queue anyway
            try:
                await ch.declare_queue(m.queue_name(model), passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise GenloomError(f"no queue {m.queue_name(model)} on the broker: no worker serves model "
                                   f"{model!r}; start one with `genloom worker --amqp URL {model}=PATH`") from None
            except CONNECTION_ERRORS:
                return
            finally:
                if not ch.is_closed:
                    try:
                        await ch.close()
                    except CONNECTION_ERRORS:
                        pass
            self._checked.add(model)

    def _new_request(self, model: str, params: dict[str, Any] | None, op: str, request_id: str | None
                     ) -> tuple[str, bytes, asyncio.Future[Response]]:
        rid = request_id or uuid.uuid4().hex
        if rid in self._pending or rid in self._answered:
            raise ValueError(f"request id {rid!r} was already used by this client; ids must be unique")
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, time.monotonic())
        return rid, m.encode_request(m.Request(rid, model, op, params or {})), fut

    async def submit(self, model: str, params: dict[str, Any] | None = None, *, op: str = "sample",
                     request_id: str | None = None, priority: str = "normal") -> asyncio.Future[Response]:
        """Publish one request (retrying across reconnects); returns the future of its response.
        ``priority="high"`` publishes to the model's urgent queue, which workers serve first (topology.py)."""
        rk = queue_for(model, priority)
        await self.check_model(model)
        rid, body, fut = self._new_request(model, params, op, request_id)
        try:
            await self._publish(rk, body, rid)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return fut

    async def request(self, model: str, params: dict[str, Any] | None = None, *, op: str = "sample",
                      request_id: str | None = None, timeout: float | None = None, priority: str = "normal"
                      ) -> Response:
        fut = await self.submit(model, params, op=op, request_id=request_id, priority=priority)
        return await self.wait(fut, timeout=timeout)

    async def wait(self, fut: asyncio.Future[Response], *, timeout: float | None = None) -> Response:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise QueueTimeout(f"no response within {timeout or self.timeout:.0f} s; is a worker running for "
                               f"this model (rabbitmqctl list_consumers)?") from None

    async def run_many(self, model: str, params: Iterable[dict[str, Any]], *, op: str = "sample",
                       max_in_flight: int = 1000, ids: Iterable[str] | None = None, priority: str = "normal"
                       ) -> list[Response | Exception]:
        """Submit all, keeping at most ``max_in_flight`` unanswered; results in submission order.

        Requests are published in groups (everything the window allows at that moment, one frame write, one
        confirmation future each); a request whose publish failed with the connection is republished (same
        id) across the reconnect, like ``submit``. Each request gets ``timeout`` seconds from its publish.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be ≥ 1")
        rk = queue_for(model, priority)
        await self.check_model(model)
        loop = asyncio.get_running_loop()
        params_it = iter(params)
        id_iter = iter(ids) if ids is not None else None
        results: list[Response | Exception | None] = []
        in_flight = 0
        room = asyncio.Event()
        deadlines: collections.deque[tuple[float, str, int]] = collections.deque()
        retries: set[asyncio.Task[None]] = set()

        def on_response(i: int, fut: asyncio.Future[Response]) -> None:
            nonlocal in_flight
            in_flight -= 1
            room.set()
            if fut.cancelled():
                results[i] = QueueTimeout(f"no response within {self.timeout:.0f} s; is a worker running for "
                                          f"this model (rabbitmqctl list_consumers)?")
            else:
                exc = fut.exception()
                results[i] = exc if isinstance(exc, Exception) else fut.result()

        def on_confirm(rid: str, body: bytes, conf: asyncio.Future[Any]) -> None:
            if conf.cancelled():
                return
            exc = conf.exception()
            if exc is None:
                return
            entry = self._pending.get(rid)
            if entry is None or entry[0].done():
                return
            if isinstance(exc, aiormq.exceptions.PublishError):
                self._pending.pop(rid, None)
                entry[0].set_exception(GenloomError(f"queue {rk} does not exist: start a worker for this model "
                                                    f"first"))
                return
            task = asyncio.ensure_future(self._republish(rk, body, rid))  # the connection dropped: again
            retries.add(task)
            task.add_done_callback(retries.discard)

        exhausted = False
        try:
            while not exhausted or in_flight:
                batch: list[tuple[str, bytes, int]] = []
                while not exhausted and in_flight + len(batch) < max_in_flight:
                    p = next(params_it, None)
                    if p is None:
                        exhausted = True
                        break
                    i = len(results)
                    results.append(None)
                    rid, body, fut = self._new_request(model, p, op, next(id_iter) if id_iter else None)
                    fut.add_done_callback(functools.partial(on_response, i))
                    batch.append((rid, body, i))
                if batch:
                    in_flight += len(batch)
                    now = loop.time()
                    deadlines.extend((now + self.timeout, rid, i) for rid, _, i in batch)
                    await self._publish_group(rk, batch, on_confirm)
                while deadlines and (deadlines[0][0] <= loop.time() or results[deadlines[0][2]] is not None):
                    _, rid, i = deadlines.popleft()
                    entry = self._pending.pop(rid, None) if results[i] is None else None
                    if entry is not None:
                        entry[0].cancel()  # → QueueTimeout for this request
                if exhausted and not in_flight:
                    break
                room.clear()
                if in_flight >= max_in_flight or exhausted:
                    wake = deadlines[0][0] - loop.time() if deadlines else self.timeout
                    try:
                        await asyncio.wait_for(room.wait(), max(0.0, wake) + 0.01)
                    except asyncio.TimeoutError:
                        pass
        finally:
            for t in list(retries):
                t.cancel()
            if any(r is None for r in results):  # cancelled or failed midway: forget what is still pending
                for _, rid, i in deadlines:
                    if results[i] is None:
                        entry = self._pending.pop(rid, None)
                        if entry is not None:
                            entry[0].cancel()
        return results  # type: ignore[return-value]

    async def _publish_group(self, rk: str, batch: list[tuple[str, bytes, int]],
                             on_confirm: Any) -> None:
        """Publish a group in one frame write; a failure to even write it republishes each one by one."""
        msgs = [amqp.Outgoing(rk, body, correlation_id=rid, message_id=rid, reply_to=self.reply_queue)
                for rid, body, _ in batch]
        try:
            raw = await self._raw()
            futs = await amqp.publish_batch(raw, msgs)
        except CONNECTION_ERRORS:
            for rid, body, _ in batch:
                await self._republish(rk, body, rid)
            return
        for (rid, body, _), conf in zip(batch, futs):
            conf.add_done_callback(functools.partial(on_confirm, rid, body))

    async def _republish(self, rk: str, body: bytes, rid: str) -> None:
        entry = self._pending.get(rid)
        try:
            await self._publish(rk, body, rid)
        except Exception as e:  # QueueTimeout or a missing queue: that request fails
            if entry is not None and not entry[0].done():
                self._pending.pop(rid, None)
                entry[0].set_exception(e)

    async def _raw(self) -> aiormq.abc.AbstractChannel:
        assert self._channel is not None, "call connect() first"
        return await self._channel.get_underlay_channel()

    async def _publish(self, routing_key: str, body: bytes, rid: str) -> None:
        assert self._channel is not None, "call connect() first"
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                await publish(self._channel, routing_key, body, correlation_id=rid, message_id=rid,
                              reply_to=self.reply_queue)
                return
            except aiormq.exceptions.PublishError:
                raise GenloomError(f"queue {routing_key} does not exist: start a worker for this model first"
                                   ) from None
            except CONNECTION_ERRORS:
                self.republished += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueTimeout(f"could not publish to {redact(self.url)} within {self.timeout:.0f} s "
                                       f"(connection lost and not back)") from None
                await asyncio.sleep(0.2)  # the robust connection reconnects in the background
                try:
                    await asyncio.wait_for(self._channel.ready(), remaining)
                except (asyncio.TimeoutError, *CONNECTION_ERRORS):
                    pass

    # -- responses --------------------------------------------------------------------------------------------
    async def _on_response(self, msg: aiormq.abc.DeliveredMessage) -> None:
        props = msg.header.properties
        rid = props.correlation_id
        try:
            d = json.loads(msg.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            d = {"ok": False, "error": "response is not JSON", "code": "bad_response"}
        rid = rid or d.get("id")
        entry = self._pending.pop(rid, None) if rid else None
        if entry is not None:
            fut, t0 = entry
            self._answered.add(rid)  # type: ignore[arg-type]
            if not fut.done():
                fut.set_result(Response(rid, bool(d.get("ok")), d.get("result"), d.get("error"), d.get("code"),  # type: ignore
                                        time.monotonic() - t0))
        elif rid in self._answered:
            self.duplicates += 1
        else:
            self.stray += 1
        # One multiple=True ack per loop iteration covers every response received so far (they are handled
        # synchronously above, so none is still in flight).
        ch, tag = msg.channel, msg.delivery.delivery_tag  # type: ignore[union-attr]
        if ch is not self._ack_channel:
            self._ack_channel, self._ack_tag = ch, 0
        if tag > self._ack_tag:  # type: ignore[operator]
            self._ack_tag = tag  # type: ignore[assignment]
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        ch, tag = self._ack_channel, self._ack_tag
        if ch is None or not tag or ch.is_closed:
            return  # the channel died: the broker redelivers those responses; duplicates are counted
        self._ack_tag = 0  # acked up to here; the next response on this channel has a higher tag
        amqp.ack(ch, tag, multiple=True, tasks=self._acks)
