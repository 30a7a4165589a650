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
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.api.collections import ApiError, Collections, as_api_error
from rag.api.identity import request_identifier
from rag.api.limits import RequestLimits
from rag.api.routes import chat, health, models, sources
from rag.api.routes.chat import CLIENT_GONE
from rag.errors import RagError
from rag.ops import metrics
from rag.security.exposure import allowed_hosts
from rag.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, collections: list[str] | None = None, mcp: bool = False,
               host: str = "127.0.0.1") -> FastAPI:
    """``mcp``: also serve the MCP server (rag.api.mcp) at /mcp, over the same collections and keys. ``host``:
    the interface served; on loopback only this machine's names (and RAG_ALLOWED_HOSTS) are accepted in the Host
    header, so a web page whose name was rebound to 127.0.0.1 cannot use a local RAG_AUTH=none API."""
    pool = Collections(settings, collections or settings.api_collections or [settings.collection])
    identify = request_identifier(settings)
    mcp_server = _mcp_server(settings, pool) if mcp else None
    # No OpenAPI schema: it would be served without a key, and no client or check reads it (the deploy checks
    # read app.routes).
    app = FastAPI(title="onprem-rag", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None,
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
    # Every error in OpenAI's shape, which the SDKs parse into their exceptions: ours, the library's (a RagError a
    # route does not map itself), FastAPI's validation and routing errors, and a crash.
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]  # Starlette types handlers for Exception; ours takes its subclass
    app.add_exception_handler(RagError, _rag_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _crash)
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


async def _rag_error(_: Request, exc: RagError) -> JSONResponse:
    error = as_api_error(exc)
    if error.status >= 500:  # the operator's to fix (an audit log that cannot be written, ...): say so in the log
        log.warning("request failed: %s", exc)
    return error.response()


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0]
    where, *inside = first["loc"]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if first["type"] == "json_invalid":
        # Its loc is the character where decoding stopped, not a field.
        why = first.get("ctx", {}).get("error", first["msg"])
        at = f" at character {inside[0]}" if inside else ""
        message = f"the request body is not valid JSON ({why}{at}): send a JSON object"
        return ApiError(422, message, "invalid_request_error", "invalid_json").response()
    # OpenAI's notation, which its clients show: messages.[0].content
    param = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in inside) or None
    why = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
    if param is None:
        message = ("the request body is missing: send a JSON object" if first["type"] == "missing"
                   else f"invalid request body: {why}{more}")
    else:
        what = {"body": "field", "query": "query parameter"}.get(str(where), str(where))
        message = f"invalid {what} {param!r}: {why}{more}"
    return ApiError(422, message, "invalid_request_error", param=param).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    route = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        # The usual causes: an OpenAI client whose base URL lacks /v1, or an endpoint this API does not have.
        served = ", ".join(sorted({path for r in request.app.routes if (path := getattr(r, "path", None))}))
        message = f"no such endpoint: {route}; this API serves {served} (an OpenAI client's base URL ends in /v1)"
    elif exc.status_code == 405:
        message = f"{route} is not allowed: use {(exc.headers or {}).get('Allow', 'another method')}"
    else:
        message = str(exc.detail)
    kind = "invalid_request_error" if exc.status_code < 500 else "api_error"
    return ApiError(exc.status_code, message, kind, headers=exc.headers).response()


async def _crash(_: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback once this is sent; the client learns nothing of the internals (paths, hosts).
    return ApiError(500, "internal error of the RAG API: the operator finds the details in its log", "api_error",
                    "internal_error").response()


class _CountRequests:
    """rag_http_requests_total by route and status; a request whose client left before any response counts as
    499. Plain ASGI: Starlette's BaseHTTPMiddleware raised "No response returned" for those (an MCP call cancelled
    on the 2026-07-28 wire, whose handler then sends nothing), a traceback in the log for each."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = CLIENT_GONE

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_counted)  # a crash is not counted: the outermost handler answers it
        route = scope.get("route")  # the router sets it on this scope
        metrics.HTTP_REQUESTS.labels(getattr(route, "path", "unmatched"), str(status)).inc()
