"""Structured logs: one JSON object per line on stderr, with the request id where there is one."""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(*, level: str = "info") -> None:
    """Send genloom.serve logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("genloom.serve")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_genloom", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(JSONFormatter())
        h._genloom = True  # type: ignore[attr-defined]
        logger.addHandler(h)
        logger.propagate = False


access = logging.getLogger("genloom.serve.access")


def log_request(*, request_id: str, method: str, path: str, model: str | None, status: int, t0: float,
                **extra: Any) -> None:
    if access.isEnabledFor(logging.INFO):
        access.info("request", extra={"request_id": request_id, "method": method, "path": path, "model": model,
                                      "status": status, "ms": round((time.monotonic() - t0) * 1000, 3), **extra})
