"""Prometheus metrics of the server (one registry per app, so tests can run several apps in one process)."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# LM token timings: inter-token gaps are milliseconds, a long generation's end-to-end time is minutes
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5, 5.0)
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


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
        # LM serving metrics users scale on (named like vLLM's, so its dashboards and HPA rules carry over);
        # every LM request (native /generate and the OpenAI-compatible endpoints) is counted
        self.ttft = Histogram("genloom_time_to_first_token_seconds", "LM: request arrival to its first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("genloom_time_per_output_token_seconds", "LM: gap between consecutive "
                                     "tokens of one request (inter-token latency)", ["model"],
                                     buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("genloom_e2e_request_latency_seconds", "LM: request arrival to its last token "
                             "(completed generations)", ["model"], buckets=E2E_BUCKETS, registry=r)
        self.lm_queue = Histogram("genloom_request_queue_time_seconds", "LM: time a request waited for a decode "
                                  "slot in the continuous batch", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("genloom_num_requests_running", "LM: sequences in the continuous batch now",
                             ["model"], registry=r)
        self.waiting = Gauge("genloom_num_requests_waiting", "LM: sequences waiting for a decode slot",
                             ["model"], registry=r)

    def track(self, *, model: str, depth: Callable[[], float], streams: Callable[[], float],
              up: Callable[[], float]) -> None:
        """Gauges read live values at scrape time (no bookkeeping on the request path)."""
        self.queue_depth.labels(model).set_function(depth)
        self.streams.labels(model).set_function(streams)
        self.worker_up.labels(model).set_function(up)

    def track_lm(self, *, model: str, running: Callable[[], float], waiting: Callable[[], float]) -> None:
        self.running.labels(model).set_function(running)
        self.waiting.labels(model).set_function(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)
