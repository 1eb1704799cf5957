"""The queue worker: consume ``genloom.<model>``, batch requests into one forward pass, reply, then ack.

Per delivered message (one robust connection, one confirm-mode channel, QoS prefetch = backpressure):

- invalid (bad JSON, unknown model, bad params): copied to ``genloom.<model>.dead`` with the reason in the
  ``x-genloom-reason`` header, answered with an error response (if it has ``reply_to``), then acked;
- redelivered by the broker (a worker died or lost its connection while holding it): republished with
  ``x-genloom-retries`` + 1, or dead-lettered once that exceeds ``max_retries`` (a message that keeps killing
  workers cannot loop forever);
- valid: batched (up to ``batch_size`` requests or ``batch_timeout_ms`` after the first), run in one forward pass,
  the responses published to each ``reply_to`` with the ``correlation_id``, and **acked only after the broker
  confirmed the response**. A failing batch is retried per request (republished with the retry header) up to
  ``max_retries`` times, then dead-lettered and answered with an error.

A message whose channel died before it finished is dropped here: the broker has already requeued it.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq

from genloom.errors import GenloomError
from genloom.queue import messages as m
from genloom.queue.metrics import WorkerMetrics
from genloom.queue.runner import ModelRunner

log = logging.getLogger("genloom.queue.worker")
PUBLISH_TIMEOUT_S = 15.0  # a reply or retry not confirmed by then is given up: its request stays unacked
CONNECTION_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError,
                     asyncio.TimeoutError, RuntimeError)


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    models: dict[str, str]  # name -> model file path
    prefetch: int = 512
    concurrency: int = 2  # batches in flight per model (forward passes themselves run one at a time)
    batch_size: int = 128  # 1 = batching off
    batch_timeout_ms: float = 2.0
    max_retries: int = 5
    metrics_port: int = 0  # 0 = no metrics endpoint
    metrics_host: str = "127.0.0.1"
    threads: int = 1  # torch intra-op threads of this process
    name: str = "genloom-worker"  # the connection name shown by `rabbitmqctl list_connections`

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("give at least one model: NAME=PATH or PATH")
        for name in self.models:
            m.check_model_name(name)
        for key, lo in (("prefetch", 1), ("concurrency", 1), ("batch_size", 1), ("max_retries", 0),
                        ("threads", 1), ("metrics_port", 0)):
            if getattr(self, key) < lo:
                raise ValueError(f"--{key.replace('_', '-')} must be ≥ {lo}, got {getattr(self, key)}")
        if self.batch_timeout_ms < 0:
            raise ValueError(f"--batch-timeout-ms must be ≥ 0, got {self.batch_timeout_ms}")


@dataclass
class _Item:
    msg: aio_pika.abc.AbstractIncomingMessage
    t0: float
    req: m.Request | None = None


class _Acks:
    """Acks of one channel. ``finish`` acks a message unless its channel died (then the broker requeued it)."""

    @staticmethod
    def channel_of(msg: aio_pika.abc.AbstractIncomingMessage) -> Any:
        try:
            return msg.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return None

    def live(self, msg: aio_pika.abc.AbstractIncomingMessage) -> bool:
        ch = self.channel_of(msg)
        return ch is not None and not ch.is_closed

    async def finish(self, msg: aio_pika.abc.AbstractIncomingMessage) -> bool:
        ch = self.channel_of(msg)
        if ch is None or ch.is_closed:
            return False
        await ch.basic_ack(delivery_tag=msg.delivery_tag)
        return True


class _Batcher:
    """Up to ``size`` items, or ``timeout`` seconds after the oldest arrived; ``concurrency`` batches in flight."""

    def __init__(self, handle: Callable[[list[_Item]], Awaitable[None]], *, size: int, timeout: float,
                 concurrency: int) -> None:
        self.handle, self.size, self.timeout = handle, size, timeout
        self.items: collections.deque[_Item] = collections.deque()
        self.nonempty, self.full = asyncio.Event(), asyncio.Event()
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    def put(self, item: _Item) -> None:
        self.items.append(item)
        self.nonempty.set()
        if len(self.items) >= self.size:
            self.full.set()

    async def _loop(self) -> None:
        while True:
            await self.slots.acquire()
            await self.nonempty.wait()
            remaining = self.items[0].t0 + self.timeout - time.monotonic()
            if len(self.items) < self.size and remaining > 0:
                try:
                    await asyncio.wait_for(self.full.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            batch = [self.items.popleft() for _ in range(min(self.size, len(self.items)))]
            if not self.items:
                self.nonempty.clear()
            if len(self.items) < self.size:
                self.full.clear()
            task = asyncio.create_task(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            await self.handle(batch)
        except Exception:  # never lose the loop; the messages stay unacked and come back
            log.exception("batch handler failed")
        finally:
            self.slots.release()

    async def drain(self) -> None:
        while self.items or self.tasks:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)


class QueueWorker:
    """One worker process's consumer. ``await start()``, then ``await stop()`` finishes in-flight work."""

    def __init__(self, config: WorkerConfig, *, restarts: int = 0) -> None:
        self.config = config
        self.metrics = WorkerMetrics(restarts=restarts)
        self.runners: dict[str, ModelRunner] = {}
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._batchers: dict[str, _Batcher] = {}
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._acks = _Acks()
        self._side: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        for name, path in cfg.models.items():
            self.runners[name] = ModelRunner(name, path, threads=cfg.threads)
            self._executors[name] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, host=cfg.metrics_host)
        try:
            self.connection = await aio_pika.connect_robust(
                cfg.url, reconnect_interval=1.0, client_properties={"connection_name": cfg.name})
        except (OSError, aiormq.exceptions.AMQPError) as e:
            raise GenloomError(f"cannot connect to RabbitMQ at {redact(cfg.url)} ({e or type(e).__name__}); "
                               f"is the broker running and the URL right (amqp://user:pass@host:5672/)?") from None
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await self.channel.set_qos(prefetch_count=cfg.prefetch)
        for name in cfg.models:
            await self.channel.declare_queue(m.dead_letter_queue(name), durable=True)
            try:
                queue = await self.channel.declare_queue(m.queue_name(name), durable=True, arguments={
                    "x-dead-letter-exchange": "", "x-dead-letter-routing-key": m.dead_letter_queue(name)})
            except aiormq.exceptions.ChannelPreconditionFailed as e:
                raise GenloomError(f"queue {m.queue_name(name)} exists with other settings ({e}); delete it "
                                   f"(rabbitmqctl delete_queue {m.queue_name(name)}) and start again") from None
            batcher = _Batcher(lambda batch, name=name: self._process(name, batch), size=cfg.batch_size,
                               timeout=cfg.batch_timeout_ms / 1000, concurrency=cfg.concurrency)
            batcher.start()
            self._batchers[name] = batcher
            tag = await queue.consume(functools.partial(self._on_message, name))
            self._consumers.append((queue, tag))
        log.info("worker %s consuming %s", cfg.name, ", ".join(m.queue_name(n) for n in cfg.models))

    async def stop(self) -> None:
        """Stop consuming, finish and ack what was delivered, close the connection."""
        for queue, tag in self._consumers:
            try:
                await asyncio.wait_for(queue.cancel(tag), 5)
            except (*CONNECTION_ERRORS, asyncio.CancelledError):
                pass
        self._consumers.clear()
        await asyncio.sleep(0.05)  # deliveries already read from the socket reach _on_message
        try:
            await asyncio.wait_for(self._drain(), 2 * PUBLISH_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("in-flight work did not finish in time; the broker will redeliver it")
        for b in self._batchers.values():
            await b.stop()
        if self.connection is not None:
            try:
                await asyncio.wait_for(self.connection.close(), 5)
            except (*CONNECTION_ERRORS, asyncio.CancelledError):
                pass
        for ex in self._executors.values():
            ex.shutdown(wait=False)
        self.metrics.close()
        self.stopped.set()

    async def _drain(self) -> None:
        for b in self._batchers.values():
            await b.drain()
        while self._side:
            await asyncio.gather(*list(self._side), return_exceptions=True)

    # -- per message ------------------------------------------------------------------------------------------
    async def _on_message(self, model: str, msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.metrics.consumed.labels(model).inc()
        self.metrics.in_flight.labels(model).inc()
        item = _Item(msg, time.monotonic())
        if msg.redelivered:
            self.metrics.redelivered.labels(model).inc()
            self._spawn(self._retry(model, item, reason="redelivered: a worker died or lost its connection "
                                                        "while holding it", code="redelivered"))
            return
        try:
            item.req = m.parse_request(msg.body, kinds={model: self.runners[model].kind})
            self.runners[model].check(item.req)
        except m.InvalidRequest as e:
            self.metrics.rejected.labels(model, e.code).inc()
            self._spawn(self._dead_letter(model, item, str(e), e.code, request_id=e.request_id))
            return
        self._batchers[model].put(item)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _process(self, model: str, batch: list[_Item]) -> None:
        stale = [it for it in batch if not self._acks.live(it.msg)]  # the broker already requeued these
        if stale:
            self.metrics.in_flight.labels(model).dec(len(stale))
            batch = [it for it in batch if self._acks.live(it.msg)]
        if not batch:
            return
        runner = self.runners[model]
        self.metrics.batch_size.labels(model).observe(len(batch))
        t0 = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executors[model], runner.run, [it.req for it in batch])
        except Exception as e:
            log.warning("batch of %d failed on %s: %r; retrying its requests", len(batch), model, e)
            reason = f"{type(e).__name__}: {e}"
            await asyncio.gather(*(self._retry(model, it, reason=reason, code="failed") for it in batch))
            return
        self.metrics.forward.labels(model).observe(time.monotonic() - t0)
        await asyncio.gather(*(self._reply_and_ack(model, it, m.ok_response(it.req.id, res))  # type: ignore
                               for it, res in zip(batch, results)))

    async def _reply_and_ack(self, model: str, item: _Item, body: bytes) -> None:
        try:
            if item.msg.reply_to:
                await self._publish(item.msg.reply_to, body, correlation_id=item.msg.correlation_id,
                                    model=model)
            await self._finish(model, item)
        except CONNECTION_ERRORS as e:  # not acked: the broker redelivers it
            log.debug("reply for %s not confirmed (%r)", item.msg.correlation_id, e)

    async def _retry(self, model: str, item: _Item, *, reason: str, code: str) -> None:
        """Republish with the retry count + 1, or dead-letter when retries are used up; then ack."""
        retries = int((item.msg.headers or {}).get(m.H_RETRIES, 0) or 0) + 1
        if retries > self.config.max_retries:
            await self._dead_letter(model, item, f"gave up after {retries - 1} retries; last: {reason}", code,
                                    request_id=m.request_id_of(item.msg.body))
            return
        try:
            await self._publish(m.queue_name(model), item.msg.body, model=model,
                                headers={**(item.msg.headers or {}), m.H_RETRIES: retries},
                                correlation_id=item.msg.correlation_id, reply_to=item.msg.reply_to)
            self.metrics.retried.labels(model).inc()
            await self._finish(model, item)
        except CONNECTION_ERRORS as e:
            log.debug("retry publish failed (%r); the broker redelivers the message", e)

    async def _dead_letter(self, model: str, item: _Item, reason: str, code: str, *,
                           request_id: str | None) -> None:
        """Copy to genloom.<model>.dead with the reason in a header, answer reply_to, then ack the original."""
        msg = item.msg
        headers = {**(msg.headers or {}), m.H_REASON: reason[:1000], m.H_ERROR_CODE: code,
                   m.H_ORIGIN: m.queue_name(model)}
        try:
            await self._publish(m.dead_letter_queue(model), msg.body, headers=headers, model=model,
                                correlation_id=msg.correlation_id, reply_to=msg.reply_to)
            self.metrics.dead_lettered.labels(model, code).inc()
            if msg.reply_to:
                await self._publish(msg.reply_to, m.error_response(request_id, reason, code),
                                    correlation_id=msg.correlation_id, model=model)
            await self._finish(model, item)
        except CONNECTION_ERRORS as e:
            log.debug("dead-letter publish failed (%r); the broker redelivers the message", e)

    async def _publish(self, routing_key: str, body: bytes, *, model: str, correlation_id: str | None = None,
                       reply_to: str | None = None, headers: dict[str, Any] | None = None) -> None:
        assert self.channel is not None
        try:
            await asyncio.wait_for(publish(self.channel, routing_key, body, correlation_id=correlation_id,
                                           reply_to=reply_to, headers=headers), PUBLISH_TIMEOUT_S)
        except aiormq.exceptions.PublishError:  # no such queue: the client is gone; nobody to answer
            self.metrics.unroutable.labels(model).inc()

    async def _finish(self, model: str, item: _Item) -> None:
        if await self._acks.finish(item.msg):
            self.metrics.acked.labels(model).inc()
            self.metrics.latency.labels(model).observe(time.monotonic() - item.t0)
        self.metrics.in_flight.labels(model).dec()


async def publish(channel: aio_pika.abc.AbstractChannel, routing_key: str, body: bytes, *,
                  correlation_id: str | None = None, reply_to: str | None = None, message_id: str | None = None,
                  headers: dict[str, Any] | None = None) -> None:
    """Persistent, mandatory publish on the default exchange; returns once the broker confirmed it.

    Goes straight to the aiormq channel under the robust aio-pika one: the same frames as
    ``default_exchange.publish(Message(...))`` for ~20% less client CPU per message (benchmarks/queue_publish.py).
    Raises aiormq's PublishError when no queue has that name, connection errors when the channel is down.
    """
    raw = await channel.get_underlay_channel()
    props = aiormq.spec.Basic.Properties(delivery_mode=2, content_type="application/json", headers=headers,
                                         correlation_id=correlation_id, reply_to=reply_to, message_id=message_id)
    await raw.basic_publish(body, exchange="", routing_key=routing_key, properties=props, mandatory=True)


def redact(url: str) -> str:
    """amqp://user:secret@host/ → amqp://user:***@host/ (never print a password)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url
