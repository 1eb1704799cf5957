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

The modules behind it: ``runner.py`` (the models and their threads), ``outcomes.py`` (how a delivery ends:
reply, retry, dead letter, hand-back, ack), ``flow.py`` (which tags may be acked), ``poison.py`` (suspects and
culprits), ``lease.py`` (long generations), ``supervisor.py`` (the worker process and its restarts).

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

from genloom.core.requests import DEFAULT_LIMITS
from genloom.queue import amqp
from genloom.queue.amqp import CONNECTION_ERRORS
from genloom.core.batcher import Batcher, Entry
from genloom.queue.flow import AckWindow
from genloom.queue import lease, messages as m, poison
from genloom.queue.metrics import WorkerMetrics
from genloom.queue.outcomes import PUBLISH_TIMEOUT_S, Delivery, Outcomes
from genloom.queue.runner import ModelRunner, model_thread
from genloom.queue.topology import Topology, delivery_count, request_queues

log = logging.getLogger("genloom.queue.worker")


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
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}  # runner.model_thread
        self._window: AckWindow | None = None
        self._windows: list[AckWindow] = []
        self.outcomes: Outcomes  # how deliveries end: replies, retries, dead letters, acks (set by start)
        self._side: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        for name, path in cfg.models.items():
            self.runners[name] = ModelRunner(name, path, threads=cfg.threads, backend=cfg.backend, device=cfg.device,
                                             precision=cfg.precision)
            self._executors[name] = model_thread(name, cfg.threads)
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, host=cfg.metrics_host)
        self.connection = await amqp.connect_robust(cfg.url, name=cfg.name)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)  # type: ignore
        await self.channel.set_qos(prefetch_count=cfg.prefetch)
        self.outcomes = Outcomes(self.channel, self.metrics, max_retries=cfg.max_retries)
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
        item = Delivery(msg, time.monotonic(), window, queue,
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
                self._spawn(self.outcomes.retry(model, item, reason="redelivered: a worker died or lost its "
                                                                    "connection while holding it", code="redelivered"))
                return
            if item.key in self.culprits and item.count >= self.config.delivery_limit - 1:
                self.metrics.poison.labels(model).inc()
                self._spawn(self.outcomes.dead_letter(
                    model, item, f"poison message: it killed the worker process on each of its {item.count} "
                                 f"deliveries so far (delivery limit {self.config.delivery_limit})",
                    "redelivered", request_id=m.request_id_of(msg.body)))
                return
        try:
            item.req = m.parse_request(msg.body, kinds={model: self.runners[model].info}, limits=self.limits)
        except m.InvalidRequest as e:
            self.metrics.rejected.labels(model, e.code).inc()
            self._spawn(self.outcomes.dead_letter(model, item, str(e), e.code, request_id=e.request_id))
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

    async def _process(self, model: str, batch: list[Delivery]) -> None:
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
            await asyncio.gather(*(self.outcomes.hand_back(model, it, it.props.headers) for it in expired))
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
            await asyncio.gather(*(self.outcomes.retry(model, it, reason=reason, code="failed") for it in batch))
            return
        mx.forward.observe(time.monotonic() - t0)
        await self.outcomes.reply(model, batch, results)

    def _forward(self, fn: Any, batch: list[Delivery], *args: Any) -> Any:
        """In the model thread: name the batch's messages to the supervisor while they run (poison.py)."""
        reqs = [it.req for it in batch]
        self.crash_log.record([it.key for it in batch])
        try:
            poison.chaos_check([r.id for r in reqs if r is not None])
            return fn(reqs, *args)
        finally:
            self.crash_log.clear()

    async def _generate(self, model: str, batch: list[Delivery]) -> None:
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
            await asyncio.gather(*(self.outcomes.hand_back(model, it, lease.continuation_headers(
                it.props.headers, text=text, tokens=ntok)) for it, text, ntok in cont))
        if done:
            await self.outcomes.reply(model, [it for it, _ in done], [r for _, r in done])
