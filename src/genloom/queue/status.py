"""Ready, unacked and consumers of each model's queues (``genloom queue status MODEL...``, cli/queue.py).

Ready and consumers come from the broker over AMQP. Unacked messages are not visible over AMQP (only the
management plugin's HTTP API knows them), so they are summed from the workers' own metrics
(``genloom_queue_messages_unacked``): pass each worker's metrics URL with ``--worker-metrics``.
"""
from __future__ import annotations

import re
import urllib.request
from typing import Any

from genloom.errors import GenloomError

_UNACKED = re.compile(r'^genloom_queue_messages_unacked\{queue="([^"]+)"\} ([0-9.eE+-]+)$', re.M)


def unacked_from_workers(urls: list[str], *, timeout: float = 5.0) -> dict[str, float]:
    """{queue: unacked} summed over the workers' Prometheus endpoints."""
    total: dict[str, float] = {}
    for url in urls:
        if not url.rstrip("/").endswith("/metrics"):
            url = url.rstrip("/") + "/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                text = r.read().decode()
        except OSError as e:
            raise GenloomError(f"--worker-metrics {url}: cannot read it ({e}); is `genloom worker "
                               f"--metrics-port` running there?") from None
        for queue, value in _UNACKED.findall(text):
            total[queue] = total.get(queue, 0.0) + float(value)
    return total


async def status(url: str, models: list[str], worker_metrics: list[str]) -> list[dict[str, Any]]:
    from genloom.queue import amqp
    from genloom.queue.depth import queue_depths
    from genloom.queue.topology import all_queues

    queues = [q for model in models for q in all_queues(model)]
    conn = await amqp.connect_robust(url, name="genloom-queue-status")
    try:
        depths = await queue_depths(conn, queues)
    finally:
        await conn.close()
    unacked = unacked_from_workers(worker_metrics) if worker_metrics else None
    rows = []
    for q in queues:
        d = depths.get(q)
        rows.append({"queue": q, "exists": d is not None, "ready": d[0] if d else None,
                     "unacked": None if unacked is None or d is None else int(unacked.get(q, 0)),
                     "consumers": d[1] if d else None})
    return rows


def check_models(models: list[str]) -> None:
    """GenloomError naming the problem for a model name that cannot have queues."""
    from genloom.queue.messages import check_model_name

    for model in models:
        try:
            check_model_name(model)
        except ValueError as e:
            raise GenloomError(str(e)) from None


def table(rows: list[dict[str, Any]]) -> str:
    """``status``'s rows as the aligned text table ``genloom queue status`` prints."""

    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = [f"{'queue':<40} {'ready':>8} {'unacked':>8} {'consumers':>9}"]
    for r in rows:
        if not r["exists"]:
            lines.append(f"{r['queue']:<40} {'(not declared)':>27}")
            continue
        lines.append(f"{r['queue']:<40} {cell(r['ready']):>8} {cell(r['unacked']):>8} {cell(r['consumers']):>9}")
    return "\n".join(lines)
