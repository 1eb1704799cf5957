"""HTTP plumbing shared by the handlers: errors, body limit, deadlines, disconnect-aware waiting."""
from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


class HTTPError(Exception):
    def __init__(self, status: int, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers or {}


def error_response(e: HTTPError, request_id: str) -> JSONResponse:
    return JSONResponse({"error": str(e), "field": e.field}, status_code=e.status,
                        headers={"X-Request-Id": request_id, **e.headers})


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes (checked before reading when declared)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes; "
                                     f"send fewer images per request", field="body")
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number", field="body") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def request_deadline(request: Request, timeout_s: float) -> float:
    """Monotonic deadline: now + X-Request-Timeout seconds (if sent) or the model's default timeout."""
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return time.monotonic() + timeout_s
    try:
        t = float(raw)
    except ValueError:
        t = float("nan")
    if not 0 < t <= 3600:
        raise HTTPError(422, f"X-Request-Timeout must be seconds in (0, 3600], got {raw!r}",
                        field="X-Request-Timeout")
    return time.monotonic() + t


async def wait_result(request: Request, fut: asyncio.Future, deadline: float) -> Any:
    """Await ``fut`` until the deadline, giving up early if the client disconnects; cancels it if abandoned."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait((fut, watch), timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if fut in done:
        return fut.result()
    fut.cancel()
    if watch in done:
        raise HTTPError(499, "client closed the request")
    raise HTTPError(504, "deadline passed before the result was ready; raise X-Request-Timeout or retry later")


_RID_PREFIX = uuid.uuid4().hex[:12]
_rid_counter = itertools.count(1)


def new_request_id(request: Request) -> str:
    """The client's X-Request-Id (≤ 128 chars), or ``<random per process>-<counter>`` (unique, and cheap)."""
    rid = request.headers.get("x-request-id")
    return rid[:128] if rid else f"{_RID_PREFIX}-{next(_rid_counter)}"
