"""``genloom worker``, ``genloom submit`` and ``genloom queue status``: the RabbitMQ edge (docs/queue.md;
docs/architecture.md "AMQP")."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from genloom.core.requests import DEFAULT_LIMITS
from genloom.errors import ConfigError, GenloomError
from genloom.options import add_device_options
from genloom.queue import DEFAULT_URL


def parse_models(specs: list[str]) -> dict[str, str]:
    """The NAME=PATH rule of ``genloom serve`` too (``core/names.py``); every file's header is read here, so a
    missing or broken file fails before any process starts."""
    from genloom.core.names import parse_model_args
    from genloom.export import read_header

    out = {name: str(path) for name, path in parse_model_args(specs).items()}
    for path in out.values():
        read_header(path)
    return out


def _cmd_worker(args: argparse.Namespace) -> int:
    from genloom.queue.supervisor import supervise
    from genloom.queue.worker import WorkerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:  # the config's checks are of the flags' values
        cfg = WorkerConfig(url=args.amqp, models=parse_models(args.models), prefetch=args.prefetch,
                           concurrency=args.concurrency, batch_size=args.batch_size,
                           batch_timeout_ms=args.batch_timeout_ms, max_retries=args.max_retries,
                           metrics_port=args.metrics_port, metrics_host=args.metrics_host, threads=args.threads,
                           backend=args.backend, device=args.device, precision=args.precision, max_n=args.max_n, max_new_tokens=args.max_new_tokens,
                           name=args.name, queue_type=args.queue_type, delivery_limit=args.delivery_limit,
                           lease_s=args.lease_s, depth_interval_s=args.depth_interval)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return supervise(cfg)


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _submit(args: argparse.Namespace) -> int:
    from genloom.queue.client import QueueClient, Response

    if args.prompt is not None:
        op = "generate"
        params: dict[str, Any] = {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
                                  "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    else:
        op = "sample"
        params = {"n": args.n, "format": args.format}
        if args.labels is not None:
            params["labels"] = [int(x) for x in args.labels.split(",")]
    if args.seed is not None:
        params["seed"] = args.seed
    reqs = [dict(params, seed=args.seed + i) if args.seed is not None else dict(params) for i in range(args.count)]
    async with QueueClient(args.amqp, timeout=args.timeout) as client:
        await client.check_model(args.model)
        t0 = time.monotonic()
        results = await client.run_many(args.model, reqs, op=op, max_in_flight=args.max_in_flight,
                                        priority=args.priority)
        elapsed = time.monotonic() - t0
        duplicates = client.duplicates
    ok = [r for r in results if isinstance(r, Response) and r.ok]
    failed = [r for r in results if not (isinstance(r, Response) and r.ok)]
    for r in failed[:3]:
        msg = r.error if isinstance(r, Response) else str(r)
        print(f"genloom submit: request failed: {msg}", file=sys.stderr)
    if args.count == 1 and ok:
        _write_single(ok[0], args)
    lat = [r.latency_s * 1000 for r in ok]
    summary = {"model": args.model, "op": op, "count": args.count, "ok": len(ok), "failed": len(failed),
               "duplicates_dropped": duplicates, "seconds": round(elapsed, 3),
               "throughput_rps": round(args.count / elapsed, 1) if elapsed > 0 else None,
               "latency_ms": {"p50": round(_percentile(lat, 0.50), 2), "p99": round(_percentile(lat, 0.99), 2),
                              "max": round(max(lat), 2) if lat else None}}
    print(json.dumps(summary), file=sys.stdout if args.json or args.count > 1 else sys.stderr)
    return 0 if not failed else 1


def _write_single(r: Any, args: argparse.Namespace) -> None:
    if "text" in (r.result or {}):
        print(r.result["text"])
        return
    if args.out is None:
        return
    import numpy as np

    from genloom.queue.messages import decode_images

    images = decode_images(r.result)  # (n, 28, 28) float32 in [0, 1]
    if args.out.suffix == ".npy":
        np.save(args.out, images)
    elif args.out.suffix == ".png":
        from genloom.viz import save_grid

        save_grid(images, args.out)
    else:
        raise GenloomError(f"--out must end in .npy or .png, got {args.out}")


def _cmd_submit(args: argparse.Namespace) -> int:
    if args.count < 1 or args.max_in_flight < 1 or args.timeout <= 0:
        raise GenloomError("--count and --max-in-flight must be ≥ 1 and --timeout > 0")
    return asyncio.run(_submit(args))


def _cmd_queue_status(args: argparse.Namespace) -> int:
    from genloom.queue.status import check_models, status, table

    check_models(args.models)
    rows = asyncio.run(status(args.amqp, args.models, args.worker_metrics or []))
    if not any(r["exists"] for r in rows):
        raise GenloomError(f"no queues for {', '.join(args.models)} on the broker; start a worker: "
                           f"`genloom worker {args.models[0]}=PATH`")
    if args.json:
        print(json.dumps({"queues": rows}))
        return 0
    print(table(rows))
    if not args.worker_metrics:
        print("unacked: AMQP reports only ready messages; add --worker-metrics URL for each worker "
              "(genloom worker --metrics-port) to sum theirs", file=sys.stderr)
    return 0


def _command(sub: Any, name: str, *, help: str, description: str, models: str | None) -> argparse.ArgumentParser:
    """A command that talks to one broker (``--amqp``), with the model names or files as arguments if ``models``
    (their help) is given."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    if models is not None:
        p.add_argument("models", nargs="+", metavar="MODEL", help=models)
    p.add_argument("--amqp", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL})")
    return p


def register(sub: Any) -> None:
    w = _command(sub, "worker", help="consume model requests from RabbitMQ (supervised, batched)",
                 description="Serve models from durable RabbitMQ queues genloom.<name>: batch requests into one "
                             "forward pass, reply to reply_to, ack after the reply is confirmed. Restarts its "
                             "worker process after a crash; SIGTERM finishes in-flight work.",
                 models="NAME=PATH or PATH (name = the file's stem)")
    w.add_argument("--prefetch", type=int, default=512, help="unacked messages this worker may hold (backpressure)")
    w.add_argument("--concurrency", type=int, default=2, help="batches in flight per model")
    w.add_argument("--batch-size", type=int, default=128, help="max requests per forward pass (1 = no batching)")
    w.add_argument("--batch-timeout-ms", type=float, default=2.0, help="max wait after a batch's first request")
    w.add_argument("--max-retries", type=int, default=5, help="retries of a failed request before dead-lettering")
    w.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0 = off)")
    w.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address")
    w.add_argument("--threads", type=int, default=1, help="torch threads of the worker process")
    w.add_argument("--backend", default="auto", help="engine backend (genloom.engine.load): auto, or exact for "
                   "bit-reproducible fp32")
    add_device_options(w)
    w.add_argument("--max-n", type=int, default=DEFAULT_LIMITS.max_n,
                   help=f"largest n per sample request ({DEFAULT_LIMITS.max_n}, as on every transport)")
    w.add_argument("--max-new-tokens", type=int, default=DEFAULT_LIMITS.max_new_tokens,
                   help=f"largest max_new_tokens per request ({DEFAULT_LIMITS.max_new_tokens}, as on every transport)")
    w.add_argument("--name", default="genloom-worker", help="connection name (rabbitmqctl list_connections)")
    w.add_argument("--queue-type", default="quorum", choices=["quorum", "classic"],
                   help="type of the queues this worker declares (quorum: replicated, with a delivery limit)")
    w.add_argument("--delivery-limit", type=int, default=5,
                   help="quorum queues: deliveries of one message before it is dead-lettered (poison messages)")
    w.add_argument("--lease-s", type=float, default=900.0,
                   help="hold no delivery longer than this: LM generations continue in a new segment, requests "
                        "held too long are handed back; keep it below the broker's consumer_timeout (1800 s)")
    w.add_argument("--depth-interval", type=float, default=5.0,
                   help="seconds between queue-depth refreshes for the metrics (0 = off)")
    w.set_defaults(func=_cmd_worker)

    s = _command(sub, "submit", help="send requests to RabbitMQ workers and await the results",
                 description="Publish requests (persistent, confirmed) to genloom.<model>, await each response by "
                             "correlation id (duplicates dropped), report throughput and latency.", models=None)
    s.add_argument("--model", required=True, help="model name (as given to genloom worker)")
    s.add_argument("-n", type=int, default=1, help="images per request (sample)")
    s.add_argument("--seed", type=int, default=None, help="seed of the first request (request i gets seed + i)")
    s.add_argument("--labels", default=None, help="class labels for a conditional model, comma-separated")
    s.add_argument("--format", default="u8", choices=["u8", "f32"], help="result encoding (see messages.py)")
    s.add_argument("--prompt", default=None, help="LM: generate from this prompt (op 'generate')")
    s.add_argument("--max-new-tokens", type=int, default=200, help="LM: tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8, help="LM: sampling temperature")
    s.add_argument("--top-k", type=int, default=None, help="LM: top-k")
    s.add_argument("--top-p", type=float, default=None, help="LM: nucleus mass")
    s.add_argument("--count", type=int, default=1, help="number of requests to send")
    s.add_argument("--max-in-flight", type=int, default=1000, help="unanswered requests at a time")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each response")
    s.add_argument("-o", "--out", type=Path, default=None, help="with --count 1: save the images (.npy or .png)")
    s.add_argument("--json", action="store_true", help="print the summary JSON on stdout")
    s.add_argument("--priority", default="normal", choices=["normal", "high"],
                   help="high: publish to the model's urgent queue, served before normal requests")
    s.set_defaults(func=_cmd_submit)

    q = sub.add_parser("queue", help="inspect the RabbitMQ queues of served models",
                       description="Operate the RabbitMQ worker pool's queues.")
    qs = q.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
    st = _command(qs, "status", help="ready, unacked and consumers of each model's queues",
                  description="Print messages ready, unacked and consumers of genloom.MODEL, genloom.MODEL.urgent "
                              "and genloom.MODEL.dead. Ready and consumers come from the broker; unacked from the "
                              "workers' metrics (--worker-metrics).",
                  models="model name(s) as given to genloom worker")
    st.add_argument("--worker-metrics", action="append", metavar="URL",
                    help="a worker's metrics URL (http://HOST:PORT/metrics), once per worker: sums their unacked")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=_cmd_queue_status)
