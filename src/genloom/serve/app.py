"""The HTTP edge: a Starlette ASGI app over ``service.Server`` (run by uvicorn with uvloop + httptools).

Endpoints: ``api.py`` and docs/architecture.md. Errors are JSON ``{"error": message, "field": name|null}``:
422 invalid input (names the field), 404 unknown model, 413 body too large, 503 overloaded or restarting
(with Retry-After), 504 deadline passed. Every response carries ``X-Request-Id`` (the client's, or a new one).

Adding pages (the playground): put ``"module:function"`` in ``EXTRA_ROUTES``; ``function(server)`` returns a
list of Starlette routes, mounted before the API routes, e.g.::

    def routes(server):
        return [Route("/", index), Mount("/playground", StaticFiles(directory=HERE / "playground"))]
"""
from __future__ import annotations

import contextlib
import importlib
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from genloom.serve import api
from genloom.serve.service import Server

EXTRA_ROUTES: list[str] = ["genloom.serve.playground:routes", "genloom.serve.openai:routes"]  # "module:function" → function(server) -> routes


def create_app(server: Server) -> Starlette:
    """The ASGI app; its lifespan starts the model workers and stops them after uvicorn drained requests."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    routes: list[BaseRoute] = []
    for spec in EXTRA_ROUTES:
        mod, fn = spec.split(":")
        routes.extend(getattr(importlib.import_module(mod), fn)(server))
    routes.extend(api.routes(server))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app
