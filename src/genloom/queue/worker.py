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

Per-message cost (what the throughput benchmark measures): deliveries arrive through a raw aiormq consumer
(re-registered by the robust channel's reopen callback after every reconnect); a batch's responses go out in
one frame write (``amqp.publish_batch``) and are acked with one ``multiple=True`` ack up to the contiguous
watermark of finished deliveries (``_AckWindow``).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq

from genloom.errors import GenloomError
from genloom.queue import amqp
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


@dataclass(eq=False)
class _Item:
    """One delivered request: the raw aiormq delivery and what the worker needs of it."""
    msg: aiormq.abc.DeliveredMessage
    t0: float
    window: "_AckWindow"
    req: m.Request | None = None

    @property
    def tag(self) -> int:
        return self.msg.delivery.delivery_tag  # type: ignore[union-attr]

    @property
    def props(self) -> Any:
        return self.msg.header.properties

    @property
    def live(self) -> bool:
        return not self.window.channel.is_closed


class _AckWindow:
    """The delivery tags of one channel, in delivery order; acks finished ones in as few frames as is safe.

    ``finish(tag)`` marks a message done; on the next loop iteration the longest prefix of done messages is acked
    with one ``basic.ack(multiple=True)`` of its last tag, so a multiple ack never covers a message still in
    flight (every delivered message ends in ``finish`` — this worker never nacks — or stays unacked until its
    channel dies and the broker requeues it). Done messages behind one still in flight (a slow retry publish)
    are acked one by one after ``straggler_s``, so they do not wait for it. A tag is acked exactly once.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel, *, straggler_s: float = 0.2) -> None:
        self.channel = channel
        self.order: collections.deque[int] = collections.deque()  # delivered, not yet acked
        self.done: set[int] = set()
        self.straggler_s = straggler_s
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, tag: int) -> None:
        self.order.append(tag)

    def finish(self, tag: int) -> None:
        self.done.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._ack_prefix()
        if self.done and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.straggler_s, self._stragglers)

    def _ack_prefix(self) -> None:
        last = None
        order, done = self.order, self.done
        while order and order[0] in done:
            last = order.popleft()
            done.discard(last)
        if last is not None:
            self._send(last, multiple=True)

    def _stragglers(self) -> None:
        self._timer = None
        self._ack_prefix()
        for tag in sorted(self.done):  # still behind an unfinished message: ack each on its own
            self.order.remove(tag)
            self._send(tag, multiple=False)
        self.done.clear()

    def _send(self, tag: int, *, multiple: bool) -> None:
        try:
            pending = amqp.ack_nowait(self.channel, tag, multiple=multiple)
        except CONNECTION_ERRORS:
            return  # the channel died: the broker requeued everything unacked on it
        if pending is not None:  # the connection's write queue is full: finish queueing it in a task
            task = asyncio.ensure_future(self._finish_ack(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _finish_ack(pending: Awaitable[None]) -> None:
        try:
            await pending
        except CONNECTION_ERRORS:
            pass

    async def close(self) -> None:
        """Ack everything finished now (graceful stop), and wait until those acks are written."""
        if self._timer is not None:
            self._timer.cancel()
        self._stragglers()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


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
        self.channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._tags: dict[str, str] = {}  # model -> consumer tag (the same tag again after a reconnect)
        self._consuming = False
        self._recovery: asyncio.Task[None] | None = None
        self._batchers: dict[str, _Batcher] = {}
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._window: _AckWindow | None = None
        self._windows: list[_AckWindow] = []
        self._side: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        for name, path in cfg.models.items():
            self.runners[name] = ModelRunner(name, path, threads=cfg.threads)
            self._executors[name] = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"model-{name}", initializer=_thread_setup, initargs=(cfg.threads,))
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, host=cfg.metrics_host)
        try:
            self.connection = await amqp.connect_robust(cfg.url, name=cfg.name)
        except (OSError, aiormq.exceptions.AMQPError) as e:
            raise GenloomError(f"cannot connect to RabbitMQ at {redact(cfg.url)} ({e or type(e).__name__}); "
                               f"is the broker running and the URL right (amqp://user:pass@host:5672/)?") from None
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)  # type: ignore
        await self.channel.set_qos(prefetch_count=cfg.prefetch)
        for name in cfg.models:
            try:
                await self._declare(name)
            except aiormq.exceptions.ChannelPreconditionFailed as e:
                raise GenloomError(f"queue {m.queue_name(name)} exists with other settings ({e}); delete it "
                                   f"(rabbitmqctl delete_queue {m.queue_name(name)}) and start again") from None
            batcher = _Batcher(functools.partial(self._process, name), size=cfg.batch_size,
                               timeout=cfg.batch_timeout_ms / 1000, concurrency=cfg.concurrency)
            batcher.start()
            self._batchers[name] = batcher
            self._tags[name] = f"{cfg.name}.{name}.{uuid.uuid4().hex[:12]}"
        # Raw aiormq consumers (no aio-pika IncomingMessage and its extra task per delivery). The robust channel
        # re-declares the queues after a reconnect and then calls its reopen callbacks: consume again there.
        self.channel.reopen_callbacks.add(self._on_reopen)
        self._consuming = True
        await self._consume()
        log.info("worker %s consuming %s", cfg.name, ", ".join(m.queue_name(n) for n in cfg.models))

    async def _declare(self, name: str) -> None:
        assert self.channel is not None
        await self.channel.declare_queue(m.dead_letter_queue(name), durable=True)
        await self.channel.declare_queue(m.queue_name(name), durable=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": m.dead_letter_queue(name)})

    async def _consume(self) -> None:
        assert self.channel is not None
        raw = await self.channel.get_underlay_channel()
        raw.on_consumer_cancel_callbacks.add(self._on_cancel)
        for name, tag in self._tags.items():
            if self._consuming and tag not in raw.consumers:
                await raw.basic_consume(m.queue_name(name), functools.partial(self._on_message, name),
                                        consumer_tag=tag)

    def _on_cancel(self, frame: Any) -> None:
        """The broker cancelled a consumer (its queue was deleted): declare the queues again and consume."""
        if not self._consuming or frame.consumer_tag not in self._tags.values():
            return
        log.warning("the broker cancelled consumer %s (queue deleted?); declaring it again", frame.consumer_tag)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        while self._consuming:
            await asyncio.sleep(1.0)
            try:
                for name in self._tags:
                    await self._declare(name)
                await self._consume()
                log.info("consuming again after the broker cancelled a consumer")
                return
            except (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError) as e:
                log.warning("could not consume again yet (%r); retrying", e)

    async def _on_reopen(self, _channel: Any) -> None:
        try:
            await self._consume()
            log.info("consuming again after a reconnect")
        except CONNECTION_ERRORS as e:  # the channel died again: the next reopen consumes
            log.warning("could not consume after a reconnect (%r)", e)

    async def stop(self) -> None:
        """Stop consuming, finish and ack what was delivered, close the connection."""
        self._consuming = False
        if self._recovery is not None:
            self._recovery.cancel()
        if self.channel is not None:
            self.channel.reopen_callbacks.discard(self._on_reopen)
            try:
                raw = await asyncio.wait_for(self.channel.get_underlay_channel(), 5)
                for tag in self._tags.values():
                    if tag in raw.consumers:
                        await raw.basic_cancel(tag, timeout=5)
            except (*CONNECTION_ERRORS, asyncio.CancelledError):
                pass
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
        for w in self._windows:
            await w.close()

    # -- per message ------------------------------------------------------------------------------------------
    def _window_of(self, channel: aiormq.abc.AbstractChannel) -> _AckWindow:
        w = self._window
        if w is None or w.channel is not channel:
            w = self._window = _AckWindow(channel)
            self._windows = [x for x in self._windows if not x.channel.is_closed] + [w]
        return w

    async def _on_message(self, model: str, msg: aiormq.abc.DeliveredMessage) -> None:
        window = self._window_of(msg.channel)
        item = _Item(msg, time.monotonic(), window)
        window.delivered(item.tag)
        mx = self.metrics.of(model)
        mx.consumed.inc()
        mx.in_flight.inc()
        if msg.delivery.redelivered:  # type: ignore[union-attr]
            mx.redelivered.inc()
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
        mx = self.metrics.of(model)
        stale = [it for it in batch if not it.live]  # the broker already requeued these
        if stale:
            mx.in_flight.dec(len(stale))
            batch = [it for it in batch if it.live]
        if not batch:
            return
        runner = self.runners[model]
        mx.batch_size.observe(len(batch))
        t0 = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executors[model], runner.run, [it.req for it in batch])
        except Exception as e:
            log.warning("batch of %d failed on %s: %r; retrying its requests", len(batch), model, e)
            reason = f"{type(e).__name__}: {e}"
            await asyncio.gather(*(self._retry(model, it, reason=reason, code="failed") for it in batch))
            return
        mx.forward.observe(time.monotonic() - t0)
        # all responses in one frame write, then ack each request whose response the broker confirmed
        replies = [(it, amqp.Outgoing(it.props.reply_to, m.ok_response(it.req.id, res),  # type: ignore[union-attr]
                                      correlation_id=it.props.correlation_id))
                   for it, res in zip(batch, results) if it.props.reply_to]
        for it in batch:
            if not it.props.reply_to:
                self._finish(model, it)
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
                self._finish(model, it)
            elif isinstance(exc, aiormq.exceptions.PublishError):  # no such reply queue: the client is gone
                mx.unroutable.inc()
                self._finish(model, it)
            else:
                log.debug("reply for %s not confirmed (%r)", it.props.correlation_id, exc)

    async def _publish_batch(self, msgs: list[amqp.Outgoing]) -> list[asyncio.Future[Any]]:
        assert self.channel is not None
        raw = await asyncio.wait_for(self.channel.get_underlay_channel(), PUBLISH_TIMEOUT_S)
        return await amqp.publish_batch(raw, msgs)

    async def _retry(self, model: str, item: _Item, *, reason: str, code: str) -> None:
        """Republish with the retry count + 1, or dead-letter when retries are used up; then ack."""
        props = item.props
        retries = int((props.headers or {}).get(m.H_RETRIES, 0) or 0) + 1
        if retries > self.config.max_retries:
            await self._dead_letter(model, item, f"gave up after {retries - 1} retries; last: {reason}", code,
                                    request_id=m.request_id_of(item.msg.body))
            return
        try:
            await self._publish(m.queue_name(model), item.msg.body, model=model,
                                headers={**(props.headers or {}), m.H_RETRIES: retries},
                                correlation_id=props.correlation_id, reply_to=props.reply_to)
            self.metrics.of(model).retried.inc()
            self._finish(model, item)
        except CONNECTION_ERRORS as e:
            log.debug("retry publish failed (%r); the broker redelivers the message", e)

    async def _dead_letter(self, model: str, item: _Item, reason: str, code: str, *,
                           request_id: str | None) -> None:
        """Copy to genloom.<model>.dead with the reason in a header, answer reply_to, then ack the original."""
        props = item.props
        headers = {**(props.headers or {}), m.H_REASON: reason[:1000], m.H_ERROR_CODE: code,
                   m.H_ORIGIN: m.queue_name(model)}
        try:
            await self._publish(m.dead_letter_queue(model), item.msg.body, headers=headers, model=model,
                                correlation_id=props.correlation_id, reply_to=props.reply_to)
            self.metrics.dead_lettered.labels(model, code).inc()
            if props.reply_to:
                await self._publish(props.reply_to, m.error_response(request_id, reason, code),
                                    correlation_id=props.correlation_id, model=model)
            self._finish(model, item)
        except CONNECTION_ERRORS as e:
            log.debug("dead-letter publish failed (%r); the broker redelivers the message", e)

    async def _publish(self, routing_key: str, body: bytes, *, model: str, correlation_id: str | None = None,
                       reply_to: str | None = None, headers: dict[str, Any] | None = None) -> None:
        assert self.channel is not None
        try:
            await publish(self.channel, routing_key, body, correlation_id=correlation_id, reply_to=reply_to,
                          headers=headers, timeout=PUBLISH_TIMEOUT_S)
        except aiormq.exceptions.PublishError:  # no such queue: the client is gone; nobody to answer
            self.metrics.of(model).unroutable.inc()

    def _finish(self, model: str, item: _Item) -> None:
        """Ack (batched by the item's ack window) unless its channel died (then the broker requeued it)."""
        mx = self.metrics.of(model)
        if item.live:
            item.window.finish(item.tag)
            mx.acked.inc()
            mx.latency.observe(time.monotonic() - item.t0)
        mx.in_flight.dec()


def _thread_setup(threads: int) -> None:
    """Give the model thread the process's torch thread count. OpenMP's thread count is per thread: a thread
    that never called ``torch.set_num_threads`` runs OpenMP regions on every core, and on a busy machine its
    batch-1 forward passes took ~7.5 ms of CPU instead of ~0.1 ms (the loop thread's setting does not carry
    over to the executor thread)."""
    import sys

    torch = sys.modules.get("torch")  # the numpy backend never imports torch
    if torch is not None:
        torch.set_num_threads(threads)


async def publish(channel: aio_pika.abc.AbstractChannel, routing_key: str, body: bytes, *,
                  correlation_id: str | None = None, reply_to: str | None = None, message_id: str | None = None,
                  headers: dict[str, Any] | None = None, timeout: float | None = None) -> None:
    """Persistent, mandatory publish on the default exchange; returns once the broker confirmed it.

    Goes straight to the aiormq channel under the robust aio-pika one (``amqp.publish_batch``): the same frames
    as ``default_exchange.publish(Message(...))`` for less client CPU per message (benchmarks/queue_publish.py).
    Raises aiormq's PublishError when no queue has that name, connection errors when the channel is down,
    asyncio.TimeoutError when not confirmed within ``timeout`` seconds.
    """
    raw = await asyncio.wait_for(channel.get_underlay_channel(), timeout)
    (fut,) = await amqp.publish_batch(raw, [amqp.Outgoing(routing_key, body, correlation_id=correlation_id,
                                                          reply_to=reply_to, message_id=message_id,
                                                          headers=headers)])
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        fut.cancel()
        raise


def redact(url: str) -> str:
    """amqp://user:secret@host/ → amqp://user:***@host/ (never print a password)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url
