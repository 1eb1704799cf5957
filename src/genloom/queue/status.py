"""``genloom queue status MODEL...``: ready, unacked and consumers of each model's queues.

Ready and consumers come from the broker over AMQP. Unacked messages are not visible over AMQP (only the
management plugin's HTTP API knows them), so they are summed from the workers' own metrics
(``genloom_queue_messages_unacked``): pass each worker's metrics URL with ``--worker-metrics``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import urllib.request
from typing import Any

from genloom.errors import GenloomError

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
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


def _cmd_status(args: argparse.Namespace) -> int:
    from genloom.queue.messages import check_model_name

    for model in args.models:
        try:
            check_model_name(model)
        except ValueError as e:
            raise GenloomError(str(e)) from None
    rows = asyncio.run(status(args.amqp, args.models, args.worker_metrics or []))
    if not any(r["exists"] for r in rows):
        raise GenloomError(f"no queues for {', '.join(args.models)} on the broker; start a worker: "
                           f"`genloom worker {args.models[0]}=PATH`")
    if args.json:
        print(json.dumps({"queues": rows}))
        return 0

    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    print(f"{'queue':<40} {'ready':>8} {'unacked':>8} {'consumers':>9}")
    for r in rows:
        if not r["exists"]:
            print(f"{r['queue']:<40} {'(not declared)':>27}")
            continue
        print(f"{r['queue']:<40} {cell(r['ready']):>8} {cell(r['unacked']):>8} {cell(r['consumers']):>9}")
    if not args.worker_metrics:
        print("unacked: AMQP reports only ready messages; add --worker-metrics URL for each worker "
              "(genloom worker --metrics-port) to sum theirs", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    q = sub.add_parser("queue", help="inspect the RabbitMQ queues of served models",
                       description="Operate the RabbitMQ worker pool's queues.")
    qs = q.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
    s = qs.add_parser("status", help="ready, unacked and consumers of each model's queues",
                      description="Print messages ready, unacked and consumers of genloom.MODEL, "
                                  "genloom.MODEL.urgent and genloom.MODEL.dead. Ready and consumers come from the "
                                  "broker; unacked from the workers' metrics (--worker-metrics).")
    s.add_argument("models", nargs="+", metavar="MODEL", help="model name(s) as given to genloom worker")
    s.add_argument("--amqp", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL})")
    s.add_argument("--worker-metrics", action="append", metavar="URL",
                   help="a worker's metrics URL (http://HOST:PORT/metrics), once per worker: sums their unacked")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_status)
