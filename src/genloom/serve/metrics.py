"""Prometheus metrics of the server (one registry per app, so tests can run several apps in one process)."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("genloom_requests", "HTTP requests by model, endpoint and status",
                                ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("genloom_request_latency_seconds", "request latency, arrival to response",
                                 ["model", "endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("genloom_queue_wait_seconds", "time a request waited for its batch",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("genloom_batch_size", "items (images) per forward pass", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("genloom_batch_seconds", "one batch, sent to the worker until its result",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("genloom_queue_depth", "requests waiting in the model's queue", ["model"],
                                 registry=r)
        self.streams = Gauge("genloom_active_streams", "LM generations in progress or waiting", ["model"],
                             registry=r)
        self.worker_up = Gauge("genloom_worker_up", "1 when the model's worker process is ready", ["model"],
                               registry=r)
        self.worker_restarts = Counter("genloom_worker_restarts", "model worker processes restarted after a crash",
                                       ["model"], registry=r)
        self.retries = Counter("genloom_batch_retries", "batches retried on a restarted worker", ["model"],
                               registry=r)
        self.rejected = Counter("genloom_rejected_requests", "requests refused (503 overload, 504 deadline)",
                                ["model", "reason"], registry=r)
        self.tokens = Counter("genloom_tokens_generated", "LM tokens streamed (rate() gives tokens/s)", ["model"],
                              registry=r)
        self.reloads = Counter("genloom_model_reloads", "hot reloads by outcome", ["model", "outcome"], registry=r)

    def track(self, *, model: str, depth: Callable[[], float], streams: Callable[[], float],
              up: Callable[[], float]) -> None:
        """Gauges read live values at scrape time (no bookkeeping on the request path)."""
        self.queue_depth.labels(model).set_function(depth)
        self.streams.labels(model).set_function(streams)
        self.worker_up.labels(model).set_function(up)

    def render(self) -> bytes:
        return generate_latest(self.registry)
