"""OpenAI-compatible endpoints for LM models: ``POST /v1/completions`` and ``POST /v1/chat/completions``.

Any OpenAI client reaches a genloom LM with ``base_url="http://HOST:PORT/v1"`` (any API key)::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="lm", prompt="ROMEO:", max_tokens=50)
    client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "Speak."}], stream=True)

Requests run on the same continuous-batching decode loop as ``/v1/models/{name}/generate`` (one decode slot per
choice; ``n`` choices use seeds ``seed + i``, like ``genloom.engine``). Streaming answers Server-Sent Events in
OpenAI's chunk format and ends with ``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk with
``usage`` and empty ``choices``. Usage counts characters: the models' tokens are characters.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 invalid body or parameter
(``param`` names it), 404 unknown model or not an LM, 413 body too large, 422 a prompt the model cannot encode
(a character outside its vocabulary), 429 or 503 overloaded (``Retry-After``; which one is the server setting
``overload_status``, 503 by default), 503 worker restarting, 504 deadline passed. An error after a stream started
arrives as a ``data: {"error": ...}`` event (the openai client raises it). A client that disconnects — mid-stream
or while waiting for a non-streamed answer — leaves the decode loop at the next step: its slot is free at once.

Request body fields: ``openai_schema.py``; the chat template is documented there.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from genloom.serve import edge, logs
from genloom.core.batcher import DeadlineExceeded, Overloaded
from genloom.serve.config import ModelSettings
from genloom.serve.openai_schema import LMRequest, OpenAIError, parse_body, parse_chat, parse_completion
from genloom.serve.service import ModelService, Server
from genloom.serve.workers import InputRejected, WorkerUnavailable

_SERVE_ERRORS = (Overloaded, DeadlineExceeded, WorkerUnavailable, InputRejected)
DONE = b"data: [DONE]\n\n"


def routes(server: Server) -> list[BaseRoute]:
    api = OpenAIAPI(server)
    return [Route("/v1/completions", api.endpoint("completions", chat=False), methods=["POST"]),
            Route("/v1/chat/completions", api.endpoint("chat_completions", chat=True), methods=["POST"])]


def error_response(e: OpenAIError, request_id: str) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers={"X-Request-Id": request_id, **e.headers})


class OpenAIAPI:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._vocab: dict[str, tuple[Any, set[str] | None]] = {}  # model -> (header it was read from, vocab)

    # -- the endpoint wrapper: request id, errors, metrics, access log -------------------------------------------
    def endpoint(self, name: str, *, chat: bool) -> Any:
        server = self.server

        async def run(request: Request) -> Response:
            t0 = time.monotonic()
            rid = edge.new_request_id(request)
            model: str | None = None
            try:
                body = parse_body(await self._read(request))
                model = body.get("model") if isinstance(body.get("model"), str) else None
                resp = await self.handle(request, body, rid=rid, chat=chat)
            except OpenAIError as e:
                resp = error_response(e, rid)
            resp.headers["X-Request-Id"] = rid
            if model in server.services:
                status = str(resp.status_code)
                server.metrics.requests.labels(model, name, status).inc()
                server.metrics.latency.labels(model, name, status).observe(time.monotonic() - t0)
                if resp.status_code in (429, 503, 504):
                    server.metrics.rejected.labels(model, "deadline" if resp.status_code == 504 else "overload"
                                                   ).inc()
            if server.config.access_log:
                logs.log_request(request_id=rid, method=request.method, path=request.url.path, model=model,
                                 status=resp.status_code, t0=t0)
            return resp

        return run

    async def _read(self, request: Request) -> bytes:
        try:
            return await edge.read_body(request, self.server.config.max_body_bytes)
        except edge.HTTPError as e:
            raise OpenAIError(e.status, str(e), param=e.field) from None

    def _service(self, model: str) -> ModelService:
        svc = self.server.services.get(model)
        if svc is None:
            lms = [n for n, s in self.server.services.items() if s.kind == "lm"]
            raise OpenAIError(404, f"the model {model!r} does not exist; GET /v1/models lists them (LM models "
                                   f"here: {', '.join(lms) or 'none'})", param="model", code="model_not_found")
        if svc.kind != "lm":
            raise OpenAIError(404, f"model {model!r} is a {svc.kind} model; the OpenAI-compatible endpoints serve "
                                   f"LM models (use /v1/models/{model}/sample)", param="model",
                              code="model_not_found")
        return svc

    def _vocab_of(self, svc: ModelService) -> set[str] | None:
        header = svc.header
        cached = self._vocab.get(svc.name)
        if cached is None or cached[0] is not header:  # read once per loaded file (hot reload swaps the header)
            cached = self._vocab[svc.name] = (header, svc.vocab)
        return cached[1]

    def _overloaded(self, e: Overloaded) -> OpenAIError:
        status = self.server.config.overload_status
        return OpenAIError(status, f"overloaded: {e}; retry after the Retry-After seconds",
                           code="rate_limit_exceeded" if status == 429 else "overloaded",
                           headers=edge.retry_after(e.retry_after))

    def _map(self, e: BaseException) -> OpenAIError:
        if isinstance(e, Overloaded):
            return self._overloaded(e)
        if isinstance(e, DeadlineExceeded):
            return OpenAIError(504, f"{e}; raise X-Request-Timeout or ask for fewer tokens", code="timeout")
        if isinstance(e, WorkerUnavailable):
            return OpenAIError(503, str(e), code="unavailable", headers=edge.retry_after(1))
        if isinstance(e, InputRejected):
            return OpenAIError(422, str(e), code="invalid_prompt")
        raise e

    # -- one request ------------------------------------------------------------------------------------------------
    async def handle(self, request: Request, body: dict[str, Any], *, rid: str, chat: bool) -> Response:
        parse = parse_chat if chat else parse_completion
        model = body.get("model")
        if not isinstance(model, str) or not model:
            parse(body, ModelSettings())  # raises 400 naming the missing or malformed field
        svc = self._service(model)
        req = parse(body, svc.settings)
        capacity = svc.settings.max_batch_size + svc.settings.max_queue
        if len(req.prompts) * req.n > capacity:
            raise OpenAIError(400, f"n: {len(req.prompts) * req.n} sequences (prompts × n) exceed this model's "
                                   f"capacity of {capacity} (max_batch_size + max_queue); ask for fewer",
                              param="n", code="invalid_value")
        vocab = self._vocab_of(svc)
        if vocab is not None:
            for i, p in enumerate(req.prompts):
                bad = sorted(set(p) - vocab)
                if bad:
                    where = "messages (rendered with the chat template)" if chat else \
                        ("prompt" if len(req.prompts) == 1 else f"prompt[{i}]")
                    raise OpenAIError(422, f"{where} has characters outside the model's vocabulary: "
                                           f"{''.join(bad[:20])!r}", param="messages" if chat else "prompt",
                                      code="invalid_prompt")
        try:
            deadline = edge.request_deadline(request, svc.settings.timeout_s)
        except edge.HTTPError as e:
            raise OpenAIError(400, str(e), param=e.field) from None
        seqs = _Sequences(svc, req, deadline=deadline)
        await seqs.start(self._map)
        created = int(time.time())
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
        if req.stream:
            return StreamingResponse(_stream(seqs, cid=cid, created=created, chat=chat, map_error=self._map),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": rid})
        texts = await _collect(request, seqs, self._map)
        choices = []
        for k, text in enumerate(texts):
            reason = seqs.infos[k].get("finish_reason", "stop")
            if chat:
                choices.append({"index": k, "message": {"role": "assistant", "content": text, "refusal": None},
                                "logprobs": None, "finish_reason": reason})
            else:
                if req.echo:
                    text = seqs.prompt_of(k) + text
                choices.append({"index": k, "text": text, "logprobs": None, "finish_reason": reason})
        return JSONResponse({"id": cid, "object": "chat.completion" if chat else "text_completion",
                             "created": created, "model": svc.name, "system_fingerprint": None,
                             "choices": choices, "usage": seqs.usage([len(t) for t in texts])})


class _Sequences:
    """The decode streams of one request: prompt i × choice j → sequence k = i·n + j, seeded ``seed + k``."""

    def __init__(self, svc: ModelService, req: LMRequest, *, deadline: float) -> None:
        self.svc, self.req, self.deadline = svc, req, deadline
        self.infos: list[dict[str, Any]] = [{} for _ in range(len(req.prompts) * req.n)]
        self.gens: list[AsyncIterator[str]] = []
        self.firsts: list[str | None] = []

    def prompt_of(self, k: int) -> str:
        return self.req.prompts[k // self.req.n]

    async def start(self, map_error: Any) -> None:
        """Join the decode loop and wait for every sequence's first token, so that overload, a bad prompt or a
        restarting worker is still answered with a status code."""
        req, svc = self.req, self.svc
        idle = svc.settings.timeout_s if req.stream else None
        for k in range(len(self.infos)):
            params = dict(req.sampling, prompt=self.prompt_of(k))
            if params["seed"] is not None:
                params["seed"] = (params["seed"] + k) % 2**63
            self.gens.append(svc.supervisor.stream(params, deadline=self.deadline, idle_s=idle,
                                                   info=self.infos[k]))
        # one sequence (the common case): awaited in this task, so the request reaches the decode loop now, as
        # /generate's does — not one event-loop turn later from a gather task, behind every request parsed meanwhile
        if len(self.gens) == 1:
            try:
                results: list[Any] = [await _first(self.gens[0])]
            except Exception as e:
                results = [e]
        else:
            results = await asyncio.gather(*(_first(g) for g in self.gens), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise map_error(errors[0]) from None
        self.firsts = list(results)  # type: ignore[arg-type]

    async def close(self) -> None:
        for g in self.gens:
            await g.aclose()  # type: ignore[attr-defined]  # leaves the decode loop (frees the slot)

    def usage(self, lengths: list[int]) -> dict[str, int]:
        """Token counts (characters): the prompts once each, every choice's generated tokens (a stop string's
        characters included, as OpenAI counts them; ``lengths`` — the texts' lengths — when unknown)."""
        prompt = sum(len(p) for p in self.req.prompts)
        completion = 0
        for k, info in enumerate(self.infos):
            n = info.get("completion_tokens")
            completion += int(n) if n is not None else lengths[k]
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _first(gen: AsyncIterator[str]) -> str | None:
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None


async def _collect(request: Request, seqs: _Sequences, map_error: Any) -> list[str]:
    """Every sequence's whole text; a client that disconnects meanwhile cancels them (slots freed at once)."""

    async def one(k: int) -> str:
        first = seqs.firsts[k]
        parts = [] if first is None else [first]
        async for piece in seqs.gens[k]:
            parts.append(piece)
        return "".join(parts)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(asyncio.gather(*(one(k) for k in range(len(seqs.gens)))))
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        await seqs.close()
        raise OpenAIError(499, "client closed the request")
    try:
        return work.result()
    except _SERVE_ERRORS as e:
        await seqs.close()
        raise map_error(e) from None


def _chunker(seqs: _Sequences, *, cid: str, created: int, chat: bool) -> Any:
    """``chunk(k, text | None, finish_reason | None) -> bytes``: one SSE event in OpenAI's chunk format. The
    constant parts are encoded once; a token costs one json.dumps of its text."""
    usage = ',"usage":null' if seqs.req.include_usage else ""
    head = (f'data: {{"id":{json.dumps(cid)},"object":"{"chat.completion.chunk" if chat else "text_completion"}",'
            f'"created":{created},"model":{json.dumps(seqs.svc.name)},"system_fingerprint":null,"choices":[')
    tail = f"]{usage}}}\n\n"

    def chunk(k: int, text: str | None, finish: str | None = None, *, role: bool = False) -> bytes:
        fin = "null" if finish is None else f'"{finish}"'
        if chat:
            delta = "{}" if text is None else (
                f'{{"role":"assistant","content":{json.dumps(text)}}}' if role else f'{{"content":{json.dumps(text)}}}')
            choice = f'{{"index":{k},"delta":{delta},"logprobs":null,"finish_reason":{fin}}}'
        else:
            choice = f'{{"index":{k},"text":{json.dumps(text or "")},"logprobs":null,"finish_reason":{fin}}}'
        return (head + choice + tail).encode()

    return chunk


async def _stream(seqs: _Sequences, *, cid: str, created: int, chat: bool, map_error: Any) -> AsyncIterator[bytes]:
    chunk = _chunker(seqs, cid=cid, created=created, chat=chat)
    lengths = [0] * len(seqs.gens)
    try:
        for k, first in enumerate(seqs.firsts):
            if chat:
                yield chunk(k, "", role=True)
            elif seqs.req.echo:
                yield chunk(k, seqs.prompt_of(k))
            if first is not None:
                lengths[k] += len(first)
                yield chunk(k, first)
        piece: str | None
        if len(seqs.gens) == 1:  # the common case, without a task per sequence
            async for piece in seqs.gens[0]:
                lengths[0] += len(piece)
                yield chunk(0, piece)
            yield chunk(0, None, seqs.infos[0].get("finish_reason", "stop"))
        else:
            async for k, piece in _merge(seqs.gens):
                if piece is None:
                    yield chunk(k, None, seqs.infos[k].get("finish_reason", "stop"))
                else:
                    lengths[k] += len(piece)
                    yield chunk(k, piece)
        if seqs.req.include_usage:
            head = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created, "model": seqs.svc.name, "system_fingerprint": None, "choices": [],
                    "usage": seqs.usage(lengths)}
            yield f"data: {json.dumps(head)}\n\n".encode()
    except _SERVE_ERRORS as e:
        err = map_error(e)
        yield f"data: {json.dumps(err.body())}\n\n".encode()
    finally:
        await seqs.close()  # done, failed or the client left: every sequence leaves the decode loop now
    yield DONE


async def _merge(gens: list[AsyncIterator[str]]) -> AsyncIterator[tuple[int, str | None]]:
    """Pieces of several streams as they come: (k, text), and (k, None) when stream k finished."""
    q: asyncio.Queue[tuple[int, str | None] | BaseException] = asyncio.Queue()

    async def pump(k: int, g: AsyncIterator[str]) -> None:
        try:
            async for piece in g:
                q.put_nowait((k, piece))
            q.put_nowait((k, None))
        except Exception as e:
            q.put_nowait(e)

    tasks = [asyncio.ensure_future(pump(k, g)) for k, g in enumerate(gens)]
    left = len(gens)
    try:
        while left:
            item = await q.get()
            if isinstance(item, BaseException):
                raise item
            if item[1] is None:
                left -= 1
            yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def model_entry(svc: ModelService, described: dict[str, Any]) -> dict[str, Any]:
    """One entry of ``GET /v1/models``: OpenAI's model object plus genloom's own description."""
    try:
        created = int(svc.supervisor.path.stat().st_mtime)
    except OSError:
        created = 0
    return {"id": svc.name, "object": "model", "created": created, "owned_by": "genloom", **described}

