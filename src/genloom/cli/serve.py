"""``genloom serve MODEL... [--host 127.0.0.1] [--port 8000]``: the HTTP model server."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from genloom.errors import GenloomError
from genloom.options import add_device_options
from genloom.serve.config import ADMIN_TOKEN_ENV, ServerConfig, load_config

HELP = "serve model files over HTTP with dynamic batching"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help=HELP,
        description="Serve one or more model files over HTTP: /v1/models, /v1/models/NAME/sample|generate|"
                    "reconstruct|interpolate, /healthz, /readyz, /metrics, /docs. Each model runs in its own "
                    f"supervised worker process. Admin endpoints need ${ADMIN_TOKEN_ENV}.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="NAME=PATH (served as NAME) or PATH (served under the file's stem)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--config", type=Path, default=None, help="TOML file with server and per-model settings")
    p.add_argument("--max-batch-size", type=int, default=None, help="images per forward pass / LM slots (64)")
    p.add_argument("--max-wait-ms", type=float, default=None, help="batch collection window after the first "
                   "request (2.0)")
    p.add_argument("--max-queue", type=int, default=None, help="queued requests per model before 503 (256)")
    p.add_argument("--max-n", type=int, default=None, help="largest n per /sample request (1024, as on every "
                   "transport)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="largest max_new_tokens per /generate request "
                   "(4096, as on every transport)")
    p.add_argument("--backend", default=None, help="engine backend of the workers (genloom.engine.load): auto, "
                   "or exact for bit-reproducible fp32")
    add_device_options(p, device_default=None, precision_default=None, note=" (every worker process; per model: "
                       "device/precision in --config)")
    p.add_argument("--timeout", type=float, default=None, dest="timeout_s",
                   help="default request deadline in seconds (30); header X-Request-Timeout overrides")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker process (1)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="request body limit (1 MiB)")
    p.add_argument("--no-access-log", action="store_true", help="do not log one JSON line per request")
    p.add_argument("--overload-status", type=int, choices=[429, 503], default=None,
                   help="HTTP status of an overload answer, with Retry-After (503: the server is out of capacity, "
                        "proxies try another replica; 429: clients back off as on a rate limit)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_serve)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    settings = {k: getattr(args, k) for k in ("max_batch_size", "max_wait_ms", "max_queue", "max_n", "timeout_s",
                                              "max_new_tokens", "backend",
                                              "threads", "device", "precision")}
    server = {"host": args.host, "port": args.port, "max_body_bytes": args.max_body_bytes,
              "access_log": False if args.no_access_log else None, "overload_status": args.overload_status}
    return load_config(models=list(args.models), config_file=args.config, cli_settings=settings,
                       cli_server=server)


def run(config: ServerConfig, *, log_level: str = "info") -> None:
    """Start uvicorn (uvloop + httptools) with the app; blocks until SIGINT/SIGTERM, then drains and exits."""
    import uvicorn

    from genloom.serve import logs
    from genloom.serve.app import create_app
    from genloom.serve.service import Server

    logs.setup(level=log_level)
    logging.getLogger("genloom.serve.access").setLevel(logging.INFO if config.access_log else logging.WARNING)
    server = Server(config)  # reads every model header first: a bad file fails here with its message
    uv = uvicorn.Config(create_app(server), host=config.host, port=config.port, loop="uvloop", http="httptools",
                        lifespan="on", access_log=False, log_level="warning", backlog=2048,
                        timeout_graceful_shutdown=int(config.drain_timeout_s), server_header=False)
    logging.getLogger("genloom.serve").info(
        "starting", extra={"url": f"http://{config.host}:{config.port}", "pid": os.getpid(),
                           "models": {s.name: s.path.name for s in config.models}})
    _graceful_server_class()(uv).run()
    if not server.started:
        raise GenloomError(server.start_error or "the server did not start (see the log above)")


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; a completed drain exits 0 instead."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return GracefulServer


def _cmd_serve(args: argparse.Namespace) -> int:
    run(config_from_args(args), log_level=args.log_level)
    return 0
