"""OpenTelemetry spans for queue wait, batch and inference, when the SDK is installed (``genloom[otel]``).

Spans are recorded after the fact from monotonic timestamps the server keeps anyway (the inference time comes
back from the worker process), so tracing adds nothing to the request path when no exporter is configured, and
nothing at all without ``opentelemetry``. Configure the SDK (TracerProvider + exporter) before ``genloom serve``
starts, e.g. with ``opentelemetry-instrument``.
"""
from __future__ import annotations

import time
from typing import Any

try:  # optional extra
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - depends on the environment
    _trace = None  # type: ignore[assignment]

ENABLED = _trace is not None


def _ns(monotonic_s: float) -> int:
    """A time.monotonic() reading → wall-clock nanoseconds (what OTel timestamps are)."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


def record(name: str, *, start: float, end: float, **attributes: Any) -> None:
    """One finished span from ``start`` to ``end`` (time.monotonic() seconds)."""
    if _trace is None:
        return
    tracer = _trace.get_tracer("genloom.serve")
    span = tracer.start_span(name, start_time=_ns(start),
                             attributes={f"genloom.{k}": v for k, v in attributes.items() if v is not None})
    span.end(end_time=_ns(end))
