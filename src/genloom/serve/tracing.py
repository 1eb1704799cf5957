"""OpenTelemetry spans (queue wait, batch, inference) when the SDK is installed (`pip install genloom[otel]`).

Without ``opentelemetry`` every ``span`` is a no-op context manager costing one function call.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

try:  # optional extra
    from opentelemetry import trace as _trace

    _tracer: Any = _trace.get_tracer("genloom.serve")
except ImportError:  # pragma: no cover - depends on the environment
    _tracer = None

ENABLED = _tracer is not None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes={f"genloom.{k}": v for k, v in attributes.items()}):
        yield
