"""`rag serve`: the RAG as an OpenAI-compatible HTTP API (FastAPI), a shell over :class:`rag.generation.chain.RAG`.

Any OpenAI client works: point it at ``http://host:8000/v1`` with an API key from ``rag users key NAME``.
The *model* of a request names the document collection to answer from (``/v1/models`` lists them). The
conversation's last user message is the question and earlier user/assistant turns are its history; system
messages from the client are ignored (the product's own system prompt keeps answers grounded and cited).
Responses carry the sources as an extra ``sources`` field (the SDKs keep unknown fields), so ``[1]`` in the
answer can be resolved to a file and page.

Auth: with ``RAG_AUTH=none`` no key is needed and every document is visible (single-user local mode); otherwise
``Authorization: Bearer <key>`` must be a key of an enabled user in ``RAG_USERS_FILE`` and that user's groups
filter retrieval. In proxy mode the proxy's headers are accepted as well.
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from rag.api.collections import ApiError, Collections
from rag.api.identity import request_identifier
from rag.api.limits import RequestLimits
from rag.api.routes import chat, health, models, sources
from rag.ops import metrics
from rag.security.exposure import allowed_hosts
from rag.settings import Settings


def create_app(settings: Settings, *, collections: list[str] | None = None, mcp: bool = False,
               host: str = "127.0.0.1") -> FastAPI:
    """``mcp``: also serve the MCP server (rag.api.mcp) at /mcp, over the same collections and keys. ``host``:
    the interface served; on loopback only this machine's names (and RAG_ALLOWED_HOSTS) are accepted in the Host
    header, so a web page whose name was rebound to 127.0.0.1 cannot use a local RAG_AUTH=none API."""
    pool = Collections(settings, collections or settings.api_collections or [settings.collection])
    identify = request_identifier(settings)
    mcp_server = _mcp_server(settings, pool) if mcp else None
    app = FastAPI(title="onprem-rag", version="0.1.0", docs_url=None, redoc_url=None,
                  lifespan=_lifespan(pool, mcp_server))
    if mcp_server is not None:
        from starlette.routing import Route

        # A Route, not a Mount: the client's URL stays /mcp, with no redirect to /mcp/.
        app.router.routes.append(Route("/mcp", endpoint=mcp_server.http_app(path="/mcp", host=host)))
    app.state.collections = pool
    app.add_middleware(_CountRequests)
    # Outside the route counts: a refused request never reaches a route (rag_http_rejected_total counts it).
    app.add_middleware(RequestLimits, settings=settings, mcp_path="/mcp" if mcp else None)
    hosts = allowed_hosts(settings, host)
    if hosts is not None:
        # Added last, so it runs first: a rebinding page is refused before any route or count sees it.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]  # Starlette types handlers for Exception; ours takes its subclass
    # Straight onto the app, not through include_router: FastAPI wraps included routers in objects without a
    # path, and both the request metrics and the deploy checks read each route's path.
    health.add_routes(app, pool)
    models.add_routes(app, pool.names, identify)
    chat.add_routes(app, pool, identify)
    sources.add_routes(app, pool, identify)
    return app


def _mcp_server(settings: Settings, pool: Collections):
    from rag.api.mcp import RagMCP
    from rag.security.audit import AuditLog

    return RagMCP(settings, pool, audit=AuditLog.from_settings(settings))


def _lifespan(pool: Collections, mcp_server):
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        # A route's app gets no lifespan of its own: the MCP sessions' task group runs in ours.
        async with (mcp_server.session_manager.run() if mcp_server else contextlib.nullcontext()):
            yield
        pool.close()

    return lifespan


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


class _CountRequests(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.HTTP_REQUESTS.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response
