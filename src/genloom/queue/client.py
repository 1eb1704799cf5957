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
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import aio_pika
import aiormq

from genloom.errors import GenloomError
from genloom.queue import messages as m
from genloom.queue.worker import CONNECTION_ERRORS, publish, redact


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
        self._pending: dict[str, tuple[asyncio.Future[Response], float]] = {}
        self._answered: set[str] = set()
        self._checked: set[str] = set()
        self._check_lock = asyncio.Lock()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._ack_last: aio_pika.abc.AbstractIncomingMessage | None = None
        self._consumer_tag: str | None = None
        self._acked_channel: Any = None
        self._acked_tag = 0

    async def __aenter__(self) -> "QueueClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self.url, reconnect_interval=1.0, client_properties={"connection_name": self.name})
        except (OSError, aiormq.exceptions.AMQPError) as e:
            raise GenloomError(f"cannot connect to RabbitMQ at {redact(self.url)} ({e or type(e).__name__}); "
                               f"is the broker running and the URL right (amqp://user:pass@host:5672/)?") from None
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)  # type: ignore
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self._channel.declare_queue(
            self.reply_queue, durable=True, arguments={"x-expires": int(self.reply_ttl_s * 1000)})
        self._consumer_tag = await self._queue.consume(self._on_response)

    async def close(self) -> None:
        if self._connection is None:
            return
        self._flush_acks()
        if self._queue is not None:
            try:
                if self._consumer_tag is not None:
                    await asyncio.wait_for(self._queue.cancel(self._consumer_tag), 5)
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

    async def submit(self, model: str, params: dict[str, Any] | None = None, *, op: str = "sample",
                     request_id: str | None = None) -> asyncio.Future[Response]:
        """Publish one request (retrying across reconnects); returns the future of its response."""
        rid = request_id or uuid.uuid4().hex
        if rid in self._pending or rid in self._answered:
            raise ValueError(f"request id {rid!r} was already used by this client; ids must be unique")
        await self.check_model(model)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, time.monotonic())
        body = m.encode_request(m.Request(rid, model, op, params or {}))
        try:
            await self._publish(m.queue_name(model), body, rid)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return fut

    async def request(self, model: str, params: dict[str, Any] | None = None, *, op: str = "sample",
                      request_id: str | None = None, timeout: float | None = None) -> Response:
        fut = await self.submit(model, params, op=op, request_id=request_id)
        return await self.wait(fut, timeout=timeout)

    async def wait(self, fut: asyncio.Future[Response], *, timeout: float | None = None) -> Response:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout or self.timeout)
        except asyncio.TimeoutError:
            raise QueueTimeout(f"no response within {timeout or self.timeout:.0f} s; is a worker running for "
                               f"this model (rabbitmqctl list_consumers)?") from None

    async def run_many(self, model: str, params: Iterable[dict[str, Any]], *, op: str = "sample",
                       max_in_flight: int = 1000, ids: Iterable[str] | None = None) -> list[Response | Exception]:
        """Submit all, keeping at most ``max_in_flight`` unanswered; results in submission order."""
        await self.check_model(model)
        window = asyncio.Semaphore(max_in_flight)
        id_iter = iter(ids) if ids is not None else None

        async def one(p: dict[str, Any]) -> Response:
            try:
                fut = await self.submit(model, p, op=op, request_id=next(id_iter) if id_iter else None)
                return await self.wait(fut)
            finally:
                window.release()

        tasks = []
        for p in params:
            await window.acquire()
            tasks.append(asyncio.ensure_future(one(p)))
        return list(await asyncio.gather(*tasks, return_exceptions=True))

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
    async def _on_response(self, msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        rid = msg.correlation_id
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
        # One multiple=True ack per loop iteration covers every response received so far (they are in memory).
        if self._ack_last is None:
            asyncio.get_running_loop().call_soon(self._flush_acks)
        if self._ack_last is None or msg.delivery_tag > self._ack_last.delivery_tag:  # type: ignore[operator]
            self._ack_last = msg

    def _flush_acks(self) -> None:
        msg, self._ack_last = self._ack_last, None
        if msg is None:
            return
        try:
            ch = msg.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # the channel died: the broker redelivers those responses; duplicates are counted
        if ch is not self._acked_channel:
            self._acked_channel, self._acked_tag = ch, 0
        if msg.delivery_tag > self._acked_tag:  # type: ignore[operator]
            self._acked_tag = msg.delivery_tag  # type: ignore[assignment]
            asyncio.ensure_future(self._ack(msg))

    @staticmethod
    async def _ack(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            await msg.ack(multiple=True)
        except CONNECTION_ERRORS:
            pass  # the channel died: the broker redelivers those responses; duplicates are counted
