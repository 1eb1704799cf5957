"""Prometheus metrics of one queue worker process (its own registry, so tests can run several in one process)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    def __init__(self, *, restarts: int = 0) -> None:
        self.registry = r = CollectorRegistry()
        label = ["model"]
        self.consumed = Counter("genloom_queue_consumed_total", "messages delivered to this worker", label,
                                registry=r)
        self.acked = Counter("genloom_queue_acked_total", "messages acked (after their response was confirmed)",
                             label, registry=r)
        self.rejected = Counter("genloom_queue_rejected_total", "invalid messages rejected (never retried)",
                                ["model", "code"], registry=r)
        self.redelivered = Counter("genloom_queue_redelivered_total",
                                   "messages the broker redelivered (a worker died or lost its connection)", label,
                                   registry=r)
        self.retried = Counter("genloom_queue_retried_total", "requests republished for a retry", label, registry=r)
        self.dead_lettered = Counter("genloom_queue_dead_lettered_total", "messages moved to the dead-letter queue",
                                     ["model", "code"], registry=r)
        self.unroutable = Counter("genloom_queue_unroutable_responses_total",
                                  "responses whose reply_to queue no longer exists", label, registry=r)
        self.batch_size = Histogram("genloom_queue_batch_size", "requests per forward pass", label, registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.latency = Histogram("genloom_queue_processing_seconds", "delivery → ack, per request", label,
                                 registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10))
        self.forward = Histogram("genloom_queue_forward_seconds", "time of one batched forward pass", label,
                                 registry=r, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 10))
        self.in_flight = Gauge("genloom_queue_in_flight", "delivered, not yet acked", label, registry=r)
        self.restarts = Gauge("genloom_queue_worker_restarts", "times the supervisor restarted this worker",
                              registry=r)
        self.restarts.set(restarts)
        # queue depth for autoscalers (docs/queue.md "Autoscaling"): ready messages per queue as the broker
        # reports them (the same value on every worker: aggregate with max), this worker's unacked deliveries per
        # queue (sum over workers = the queue's unacked), consumers per queue
        q = ["queue"]
        self.ready = Gauge("genloom_queue_messages_ready", "messages waiting in the queue (broker's count, "
                           "refreshed every --depth-interval seconds)", q, registry=r)
        self.unacked = Gauge("genloom_queue_messages_unacked", "messages delivered to this worker and not yet "
                             "acked", q, registry=r)
        self.consumers = Gauge("genloom_queue_consumers", "consumers of the queue (broker's count)", q,
                               registry=r)
        self.poison = Counter("genloom_queue_poison_total", "poison messages dead-lettered on their last "
                              "delivery (they killed the worker process each time)", label, registry=r)
        self.lease_renewals = Counter("genloom_queue_lease_renewals_total", "deliveries handed back before the "
                                      "lease ended (LM continuation segments, requests held too long)", label,
                                      registry=r)
        self._unacked: dict[str, Any] = {}
        self._server: Any = None
        self._children: dict[str, SimpleNamespace] = {}

    def of(self, model: str) -> SimpleNamespace:
        """The ``model``-labelled children of the per-model metrics, looked up once (``.labels`` per message
        showed in profiles): ``of(m).acked`` is ``acked.labels(m)``."""
        c = self._children.get(model)
        if c is None:
            c = self._children[model] = SimpleNamespace(**{k: getattr(self, k).labels(model) for k in (
                "consumed", "acked", "redelivered", "retried", "unroutable", "batch_size", "latency", "forward",
                "in_flight")})
        return c

    def unacked_add(self, queue: str, delta: int) -> None:
        g = self._unacked.get(queue)
        if g is None:
            g = self._unacked[queue] = self.unacked.labels(queue)
        g.inc(delta)

    def serve(self, port: int, *, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server

        try:
            self._server = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            from genloom.errors import GenloomError

            raise GenloomError(f"cannot serve metrics on {host}:{port} ({e.strerror}); pick another "
                               f"--metrics-port, or 0 to turn metrics off") from None

    def close(self) -> None:
        if isinstance(self._server, tuple):  # prometheus_client >= 0.17 returns (server, thread)
            self._server[0].shutdown()
            self._server[0].server_close()
        self._server = None
