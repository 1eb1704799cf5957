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
watermark of finished deliveries (``AckWindow``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import math
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable

import aio_pika
import aiormq

from genloom.core.requests import DEFAULT_LIMITS, ModelInfo
from genloom.core.runner import run_batch
from genloom.queue import amqp
from genloom.queue.amqp import CONNECTION_ERRORS, publish
from genloom.core.batcher import Batcher, Entry
from genloom.queue.flow import AckWindow
from genloom.queue import lease, messages as m, poison
from genloom.queue.metrics import WorkerMetrics
from genloom.queue.topology import Topology, delivery_count, request_queues

log = logging.getLogger("genloom.queue.worker")
PUBLISH_TIMEOUT_S = 15.0  # a reply or retry not confirmed by then is given up: its request stays unacked


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
    backend: str = "auto"  # engine backend (genloom.engine.load); "exact" for bit-reproducible fp32
    device: str = "cpu"  # where the models run (genloom.engine.load(device=...))
    precision: str = "auto"  # the models' type (genloom.engine.load(precision=...))
    max_n: int = DEFAULT_LIMITS.max_n  # request caps: the same defaults as every transport (core/requests.py)
    max_new_tokens: int = DEFAULT_LIMITS.max_new_tokens
    name: str = "genloom-worker"  # the connection name shown by `rabbitmqctl list_connections`
    queue_type: str = "quorum"  # quorum | classic (topology.py)
    delivery_limit: int = 5  # quorum: deliveries of one message before it is dead-lettered (poison messages)
    lease_s: float = lease.DEFAULT_LEASE_S  # hold no delivery longer than this (lease.py; < consumer_timeout)
    depth_interval_s: float = 5.0  # how often the queue depth gauges are refreshed from the broker (0 = off)

    @property
    def topology(self) -> Topology:
        return Topology(self.queue_type, self.delivery_limit)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("give at least one model: NAME=PATH or PATH")
        for name in self.models:
            m.check_model_name(name)
        for key, lo in (("prefetch", 1), ("concurrency", 1), ("batch_size", 1), ("max_retries", 0),
                        ("threads", 1), ("metrics_port", 0), ("max_n", 1), ("max_new_tokens", 1)):
            if getattr(self, key) < lo:
                raise ValueError(f"--{key.replace('_', '-')} must be ≥ {lo}, got {getattr(self, key)}")
        if self.batch_timeout_ms < 0:
            raise ValueError(f"--batch-timeout-ms must be ≥ 0, got {self.batch_timeout_ms}")
        if not self.lease_s > 0 or self.depth_interval_s < 0:
            raise ValueError("--lease-s must be > 0 and --depth-interval ≥ 0")
        self.topology  # noqa: B018 - the property validates queue_type and delivery_limit
        from genloom.device import check_device_precision

        check_device_precision(self.device, self.precision)  # before connecting: one line naming the fix


class ModelRunner:
    """One loaded model: ``run`` executes a batch of validated requests (``core.runner.run_batch``) and encodes
    each result for the wire (``messages.encode_images`` / ``{"text": ...}``)."""

    def __init__(self, name: str, path: str, *, threads: int | None = 1, backend: str = "auto", device: str = "cpu",
                 precision: str = "auto") -> None:
        from genloom import engine
        from genloom.export import read_header

        self.name, self.path = name, path
        lm = read_header(path).kind == "lm"  # the LM has one backend (eager, KV cache)
        self.engine = engine.load(path, threads=threads, backend="auto" if lm else backend, device=device,
                                  precision=precision)
        self.kind: str = self.engine.kind
        self.info = ModelInfo.of_header(self.engine.header)

    def run(self, reqs: list[m.Request]) -> list[Any]:
        """The JSON result of each request, in order. Raises on a (transient) failure of the batch."""
        results = run_batch(self.engine, [{"op": r.op, **r.params} for r in reqs])
        out: list[Any] = []
        for r, res in zip(reqs, results):
            if isinstance(res, BaseException):
                raise res
            out.append({"text": res} if r.op == "generate" else m.encode_images(res, r.params["format"]))
        return out


@dataclass(eq=False)
class _Item:
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


class QueueWorker:
    """One worker process's consumer. ``await start()``, then ``await stop()`` finishes in-flight work."""

    def __init__(self, config: WorkerConfig, *, restarts: int = 0, crash_log: Any = None,
                 culprits: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.limits = dataclasses.replace(DEFAULT_LIMITS, max_n=config.max_n, max_new_tokens=config.max_new_tokens)
        self.metrics = WorkerMetrics(restarts=restarts)
        self.crash_log = poison.CrashLog(crash_log)  # shared with the supervisor (poison.py)
        self.culprits = culprits  # keys of messages that killed an earlier worker process while running alone
        self._lanes: dict[str, poison.SuspectLane] = {}
        self._depth_task: asyncio.Task[None] | None = None
        self.runners: dict[str, ModelRunner] = {}
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._consumers: amqp.RobustConsumers | None = None
        self._batchers: dict[str, Batcher] = {}
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._window: AckWindow | None = None
        self._windows: list[AckWindow] = []
        self._side: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        for name, path in cfg.models.items():
            self.runners[name] = ModelRunner(name, path, threads=cfg.threads, backend=cfg.backend, device=cfg.device,
                                             precision=cfg.precision)
            self._executors[name] = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"model-{name}", initializer=_thread_setup, initargs=(cfg.threads,))
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, host=cfg.metrics_host)
        self.connection = await amqp.connect_robust(cfg.url, name=cfg.name)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)  # type: ignore
        await self.channel.set_qos(prefetch_count=cfg.prefetch)
        self._consumers = amqp.RobustConsumers(self.channel, self._declare_all)
        for name in cfg.models:
            await self._declare(name)  # GenloomError naming the fix for a queue declared otherwise (topology.py)
            # the one batcher of every transport (core/batcher.py): no deadlines here, and the prefetch windows
            # (one per consumer) bound what can be queued, so it never refuses a delivery
            batcher = Batcher(functools.partial(self._run_entries, name), max_batch_size=cfg.batch_size,
                              max_wait_ms=cfg.batch_timeout_ms, max_queue=cfg.prefetch * len(request_queues(name)),
                              concurrency=cfg.concurrency)
            batcher.start()
            self._batchers[name] = batcher
            lane = poison.SuspectLane(functools.partial(self._process, name), culprits=self.culprits)
            lane.start()
            self._lanes[name] = lane
            # the urgent queue's consumer first; each consumer has its own prefetch window (basic.qos per consumer)
            for queue in reversed(request_queues(name)):
                self._consumers.add(f"{cfg.name}.{queue}.{uuid.uuid4().hex[:12]}", queue,
                                    functools.partial(self._on_message, name, queue))
        await self._consumers.start()  # raw aiormq consumers, kept consuming across reconnects (amqp.py)
        if cfg.depth_interval_s:
            from genloom.queue.depth import poll_depth

            self._depth_task = asyncio.create_task(poll_depth(self.connection, list(cfg.models), self.metrics,
                                                              interval=cfg.depth_interval_s))
        log.info("worker %s consuming %s (%s queues, delivery limit %d)", cfg.name,
                 ", ".join(q for n in cfg.models for q in request_queues(n)), cfg.queue_type, cfg.delivery_limit)

    async def _declare(self, name: str) -> None:
        assert self.channel is not None
        await self.config.topology.declare(self.channel, name)

    async def _declare_all(self) -> None:
        for name in self.config.models:
            await self._declare(name)

    async def stop(self) -> None:
        """Stop consuming, finish and ack what was delivered, close the connection."""
        if self._depth_task is not None:
            self._depth_task.cancel()
        if self._consumers is not None:
            await self._consumers.stop()
        await asyncio.sleep(0.05)  # deliveries already read from the socket reach _on_message
        try:
            await asyncio.wait_for(self._drain(), 2 * PUBLISH_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("in-flight work did not finish in time; the broker will redeliver it")
        for b in self._batchers.values():
            await b.stop()
        for lane in self._lanes.values():
            await lane.stop()
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
        for lane in self._lanes.values():
            await lane.drain()
        while self._side:
            await asyncio.gather(*list(self._side), return_exceptions=True)
        for w in self._windows:
            await w.close()

    # -- per message ------------------------------------------------------------------------------------------
    def _window_of(self, channel: aiormq.abc.AbstractChannel) -> AckWindow:
        w = self._window
        if w is None or w.channel is not channel:
            w = self._window = AckWindow(channel)
            self._windows = [x for x in self._windows if not x.channel.is_closed] + [w]
        return w

    async def _on_message(self, model: str, queue: str, msg: aiormq.abc.DeliveredMessage) -> None:
        window = self._window_of(msg.channel)
        props = msg.header.properties
        item = _Item(msg, time.monotonic(), window, queue,
                     delivery_count(props.headers, bool(msg.delivery.redelivered)),  # type: ignore[union-attr]
                     poison.message_key(props.message_id, props.correlation_id, msg.body))
        window.delivered(item.tag)
        mx = self.metrics.of(model)
        mx.consumed.inc()
        mx.in_flight.inc()
        self.metrics.unacked_add(queue, 1)
        if item.count:
            mx.redelivered.inc()
            if self.config.queue_type == "classic":  # no delivery count: count it as a retry (republished)
                self._spawn(self._retry(model, item, reason="redelivered: a worker died or lost its connection "
                                                            "while holding it", code="redelivered"))
                return
            if item.key in self.culprits and item.count >= self.config.delivery_limit - 1:
                self.metrics.poison.labels(model).inc()
                self._spawn(self._dead_letter(
                    model, item, f"poison message: it killed the worker process on each of its {item.count} "
                                 f"deliveries so far (delivery limit {self.config.delivery_limit})",
                    "redelivered", request_id=m.request_id_of(msg.body)))
                return
        try:
            item.req = m.parse_request(msg.body, kinds={model: self.runners[model].info}, limits=self.limits)
        except m.InvalidRequest as e:
            self.metrics.rejected.labels(model, e.code).inc()
            self._spawn(self._dead_letter(model, item, str(e), e.code, request_id=e.request_id))
            return
        if item.count:  # a suspect (its worker died holding it): alone, one at a time (poison.py)
            self._lanes[model].put(item, count=item.count, key=item.key)
        else:
            self._batchers[model].submit(item, deadline=math.inf, urgent=queue != m.queue_name(model))

    async def _run_entries(self, model: str, entries: list[Entry]) -> list[None]:
        """The batcher's run_batch: replies and acks happen inside ``_process``; nothing is returned."""
        try:
            await self._process(model, [e.item for e in entries])  # type: ignore[misc]
        except Exception:  # never fail the batcher; the messages stay unacked and come back
            log.exception("batch handler failed")
        return [None] * len(entries)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _process(self, model: str, batch: list[_Item]) -> None:
        mx = self.metrics.of(model)
        stale = [it for it in batch if not it.live]  # the broker already requeued these
        if stale:
            mx.in_flight.dec(len(stale))
            for it in stale:
                self.metrics.unacked_add(it.queue, -1)
            batch = [it for it in batch if it.live]
        # held longer than the lease before the forward pass began: hand back instead of starting (lease.py)
        expired = [it for it in batch if time.monotonic() - it.t0 >= self.config.lease_s]
        if expired:
            batch = [it for it in batch if it not in expired]
            await asyncio.gather(*(self._hand_back(model, it, it.props.headers) for it in expired))
        if not batch:
            return
        runner = self.runners[model]
        mx.batch_size.observe(len(batch))
        t0 = time.monotonic()
        try:
            if runner.kind == "lm":
                await self._generate(model, batch)
                return
            results = await asyncio.get_running_loop().run_in_executor(
                self._executors[model], self._forward, runner.run, batch)
        except Exception as e:
            log.warning("batch of %d failed on %s: %r; retrying its requests", len(batch), model, e)
            reason = f"{type(e).__name__}: {e}"
            await asyncio.gather(*(self._retry(model, it, reason=reason, code="failed") for it in batch))
            return
        mx.forward.observe(time.monotonic() - t0)
        await self._reply(model, batch, results)

    def _forward(self, fn: Any, batch: list[_Item], *args: Any) -> Any:
        """In the model thread: name the batch's messages to the supervisor while they run (poison.py)."""
        reqs = [it.req for it in batch]
        self.crash_log.record([it.key for it in batch])
        try:
            poison.chaos_check([r.id for r in reqs if r is not None])
            return fn(reqs, *args)
        finally:
            self.crash_log.clear()

    async def _generate(self, model: str, batch: list[_Item]) -> None:
        """LM: one segment of each generation, up to the end of the batch's lease (lease.py); an unfinished one
        is continued by a copy with the text so far (published, confirmed) before its delivery is acked."""
        mx = self.metrics.of(model)
        runner = self.runners[model]
        t0 = time.monotonic()
        deadline = min(it.t0 for it in batch) + self.config.lease_s
        segments = [lease.segment_of(it.props.headers) for it in batch]

        def run(reqs: list[m.Request]) -> list[tuple[str, int, bool]]:
            return lease.generate_until(runner.engine, [r.params for r in reqs], segments, deadline=deadline)

        out = await asyncio.get_running_loop().run_in_executor(self._executors[model], self._forward, run, batch)
        mx.forward.observe(time.monotonic() - t0)
        done, cont = [], []
        for it, seg, (text, ntok, fin) in zip(batch, segments, out):
            full, stopped = lease.join(seg[0], text, it.req.params.get("stop"))  # type: ignore[union-attr]
            if fin or stopped:
                done.append((it, {"text": full}))
            else:
                cont.append((it, text, ntok))
        if cont:
            await asyncio.gather(*(self._hand_back(model, it, lease.continuation_headers(
                it.props.headers, text=text, tokens=ntok)) for it, text, ntok in cont))
        if done:
            await self._reply(model, [it for it, _ in done], [r for _, r in done])

    async def _hand_back(self, model: str, item: _Item, headers: dict[str, Any] | None) -> None:
        """Publish a copy (confirmed) to the urgent queue, then ack the delivery; unacked if the publish fails."""
        props = item.props
        try:
            await self._publish(request_queues(model)[1], item.msg.body, model=model, headers=headers,
                                correlation_id=props.correlation_id, reply_to=props.reply_to,
                                message_id=props.message_id)
        except CONNECTION_ERRORS as e:
            log.debug("hand-back publish failed (%r); the broker redelivers the message", e)
            return
        self.metrics.lease_renewals.labels(model).inc()
        self._finish(model, item)

    async def _reply(self, model: str, batch: list[_Item], results: list[Any]) -> None:
        mx = self.metrics.of(model)
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
            await self._publish(item.queue or m.queue_name(model), item.msg.body, model=model,
                                headers={**(props.headers or {}), m.H_RETRIES: retries},
                                correlation_id=props.correlation_id, reply_to=props.reply_to,
                                message_id=props.message_id)
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
                       reply_to: str | None = None, headers: dict[str, Any] | None = None,
                       message_id: str | None = None) -> None:
        assert self.channel is not None
        try:
            await publish(self.channel, routing_key, body, correlation_id=correlation_id, reply_to=reply_to,
                          headers=headers, timeout=PUBLISH_TIMEOUT_S, message_id=message_id)
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
        self.metrics.unacked_add(item.queue, -1)


def _thread_setup(threads: int) -> None:
    """Give the model thread the process's torch thread count. OpenMP's thread count is per thread: a thread
    that never called ``torch.set_num_threads`` runs OpenMP regions on every core, and on a busy machine its
    batch-1 forward passes took ~7.5 ms of CPU instead of ~0.1 ms (the loop thread's setting does not carry
    over to the executor thread)."""
    import sys

    torch = sys.modules.get("torch")  # the numpy backend never imports torch
    if torch is not None:
        torch.set_num_threads(threads)
