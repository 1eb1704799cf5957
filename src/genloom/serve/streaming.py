"""``/generate``: LM text as one JSON body, or as Server-Sent Events (one ``token`` event per token)."""
from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from genloom.serve import edge
from genloom.core.batcher import DeadlineExceeded, Overloaded
from genloom.serve.workers import InputRejected, WorkerUnavailable


def _map(e: Exception, overload_status: int = 503) -> edge.HTTPError:
    if isinstance(e, Overloaded):
        return edge.HTTPError(overload_status, f"overloaded: {e}; retry later",
                              headers=edge.retry_after(e.retry_after))
    if isinstance(e, DeadlineExceeded):
        return edge.HTTPError(504, f"{e}; raise X-Request-Timeout or ask for fewer tokens")
    if isinstance(e, WorkerUnavailable):
        return edge.HTTPError(503, str(e), headers=edge.retry_after(1))
    if isinstance(e, InputRejected):
        return edge.HTTPError(422, str(e))
    raise e


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def generate_response(request: Request, svc: Any, p: dict[str, Any], *, deadline: float,
                            request_id: str) -> Response:
    params = {k: p[k] for k in ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed")}
    params["stop"] = [p["stop"]] if isinstance(p["stop"], str) else p["stop"]
    t0 = time.monotonic()
    overload = request.app.state.server.config.overload_status
    # streams: the deadline bounds the first token, then each token gets the model's timeout (a live stream of
    # any length is fine, a stalled one ends); plain requests: the deadline bounds the whole generation
    tokens = svc.supervisor.stream(params, deadline=deadline, idle_s=svc.settings.timeout_s if p["stream"] else None)
    # the first token is awaited before the response starts, so overload/deadline/bad input get a status code
    try:
        first: str | None = await tokens.__anext__()
    except StopAsyncIteration:
        first = None
    except (Overloaded, DeadlineExceeded, WorkerUnavailable, InputRejected) as e:
        raise _map(e, overload) from None
    ttft = time.monotonic() - t0

    if not p["stream"]:
        parts = [] if first is None else [first]
        try:
            async for t in tokens:
                parts.append(t)
        except (Overloaded, DeadlineExceeded, WorkerUnavailable, InputRejected) as e:
            raise _map(e, overload) from None
        return JSONResponse({"model": svc.name, "text": "".join(parts), "tokens": len(parts),
                             "ttft_ms": round(ttft * 1000, 3)})

    async def events() -> AsyncIterator[bytes]:
        n = 0
        try:
            if first is not None:
                n += 1
                yield _sse("token", {"text": first})
            async for t in tokens:
                n += 1
                yield _sse("token", {"text": t})
            yield _sse("done", {"tokens": n, "ttft_ms": round(ttft * 1000, 3),
                                "seconds": round(time.monotonic() - t0, 4)})
        except (Overloaded, DeadlineExceeded, WorkerUnavailable, InputRejected) as e:
            err = _map(e, overload)
            yield _sse("error", {"error": str(err), "status": err.status})
        finally:
            await tokens.aclose()  # client gone or done: leave the decode loop at the next step

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Request-Id": request_id})
