"""The MCP server itself: who the caller is, which collection a call reads, the audit trail, and the transports
(stdio is the SDK's; streamable HTTP behind an API-key guard)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.authentication import AuthCredentials
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rag.api.collections import Collections
from rag.api.identity import identify_headers
from rag.api.mcp.calls import tool_error
from rag.api.mcp.resources import DocumentResources
from rag.api.mcp.schemas import shown
from rag.api.mcp.tools import add_tools
from rag.errors import RagError
from rag.generation.chain import RAG
from rag.security.audit import AuditLog
from rag.security.exposure import allowed_hosts
from rag.security.auth import Identity, local_identity
from rag.security.users import UserDirectory
from rag.settings import Settings

log = logging.getLogger(__name__)


class Pool(Protocol):
    """The collections served: ``rag.api.app.Collections`` (one RAG per collection, opened on first use)."""

    names: list[str]

    def get(self, name: str) -> RAG: ...


class RagMCP(DocumentResources, MCPServer):
    """The MCP server over a pool of collections. ``user`` fixes the caller (stdio); without it each request's
    ``Authorization`` header decides (streamable HTTP)."""

    def __init__(self, settings: Settings, pool: Pool, *, user: Identity | None = None,
                 audit: AuditLog | None = None) -> None:
        super().__init__(
            name="onprem-rag", title="Company documents", version="0.1.0",
            instructions=("Search and question the company's own documents. Use `search` to find passages "
                          "(fast, no LLM), `ask` for a written answer with numbered citations, `get_source` to "
                          "read a passage in context before quoting it, `list_collections` to see what can be "
                          "searched. Results only ever contain documents the caller may read; cite the path "
                          "and page of what you use."),
        )
        self.rag_settings = settings
        self.pool = pool
        self.fixed_user = user
        self.audit = audit
        self.directory = UserDirectory.from_settings(settings) if settings.auth != "none" else None
        add_tools(self)

    def identify(self, headers: Mapping[str, str] | None) -> Identity:
        if self.fixed_user is not None:
            return self.fixed_user
        if self.rag_settings.auth == "none":
            return local_identity()
        who = identify_headers(self.rag_settings, self.directory, headers or {})
        if who is None:  # the HTTP guard lets no such request through; this is the second lock
            raise ToolError("not authenticated: send Authorization: Bearer <key> (rag users key NAME makes one)")
        return who

    def caller(self, ctx: Context) -> Identity:
        return self.identify(ctx.headers)

    def target(self, ctx: Context, collection: str | None) -> tuple[Identity, str, RAG]:
        """Who calls a tool, and the collection it reads (its name and RAG)."""
        user = self.caller(ctx)
        return (user, *self.collection(collection))

    def collection(self, collection: str | None) -> tuple[str, RAG]:
        name = collection or self.pool.names[0]
        if name not in self.pool.names:
            raise ToolError(f"there is no collection {shown(name)}: use one of {', '.join(self.pool.names)} "
                            "(list_collections), or leave collection out for the default")
        try:
            return name, self.pool.get(name)
        except RagError as exc:
            raise tool_error(exc) from None

    def record(self, event: str, user: Identity, tool: str, **fields: Any) -> None:
        if self.audit is None:
            return
        extra = {"via": "mcp", "tool": tool, **fields.pop("extra", {})}
        try:
            self.audit.record(event, user=user.name, extra=extra, **fields)
        except RagError as exc:
            if self.audit.required:  # RAG_AUDIT_REQUIRED: the computed result is not handed out unrecorded
                raise
            # Otherwise availability wins: a full disk must not turn the result into an error.
            log.error("audit log: %s", exc)

    def http_app(self, *, path: str = "/mcp", host: str = "127.0.0.1"):
        """The streamable HTTP app, behind the API-key guard. Run its ``session_manager.run()`` in the lifespan
        of whatever serves it (``rag mcp --http`` does; ``rag serve`` mounts it)."""
        hosts = allowed_hosts(self.rag_settings, host)
        # The Host decision is the API's (this machine's names plus RAG_ALLOWED_HOSTS, "*.corp" patterns), not the
        # SDK's own list, which knows neither; the SDK keeps its Content-Type check.
        app: ASGIApp = self.streamable_http_app(streamable_http_path=path, host=host,
                                       transport_security=TransportSecuritySettings(
                                           enable_dns_rebinding_protection=False))
        if self.fixed_user is None and self.rag_settings.auth != "none":
            app = ApiKeyGuard(app, self)
        return TrustedHostMiddleware(app, allowed_hosts=hosts) if hosts is not None else app


class ApiKeyGuard:
    """Refuses a request without a valid key with 401 before it reaches the MCP session, so a client with a
    wrong key fails at connect time with a clear message instead of at its first tool call.

    A valid request carries its user on, as the SDK's own bearer-auth middleware would (``scope["user"]``): the
    SDK's session manager binds each session to the user who opened it and answers another user's request on it
    (another key's ``DELETE`` included) with 404 "Session not found", as if the id did not exist, so an id that
    leaks (logs, a proxy) is no use to anyone else."""

    def __init__(self, app: ASGIApp, server: RagMCP) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            who = await anyio.to_thread.run_sync(
                lambda: identify_headers(self.server.rag_settings, self.server.directory, headers))
            if who is None:
                resp = JSONResponse({"error": "invalid or missing API key: send Authorization: Bearer <key> "
                                              "(an administrator makes one with rag users key NAME)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
            scope["user"], scope["auth"] = session_owner(who), AuthCredentials([])
        await self.app(scope, receive, send)


def session_owner(who: Identity) -> AuthenticatedUser:
    """The principal the SDK compares a session's requests against: the user's name, not the key, so that the
    same user through another key (or, in proxy mode, the proxy's headers) keeps their session. The key itself
    is left out: nothing that reads the scope needs the secret."""
    return AuthenticatedUser(AccessToken(token="", client_id=who.name, subject=who.name, scopes=[]))


def create_server(settings: Settings, *, user: Identity | None = None, collections: Sequence[str] | None = None,
                  pool: Pool | None = None) -> RagMCP:
    """The MCP server for ``settings``' collections (``RAG_API_COLLECTIONS``, else ``RAG_COLLECTION``)."""
    if pool is None:
        pool = Collections(settings, list(collections or settings.api_collections or [settings.collection]))
    return RagMCP(settings, pool, user=user, audit=AuditLog.from_settings(settings))


def serve_http(server: RagMCP, *, host: str, port: int) -> None:
    """``rag mcp --http``: streamable HTTP at http://HOST:PORT/mcp until Ctrl-C."""
    import uvicorn

    from rag.api.limits import RequestLimits

    # The same caps as `rag serve` (which wraps its mount of this app in its own RequestLimits).
    app = RequestLimits(server.http_app(host=host), server.rag_settings, mcp_path="/mcp")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
