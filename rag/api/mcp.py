"""`rag mcp`: the documents as tools for agents, over the Model Context Protocol (the official ``mcp`` SDK).

Tools: ``search`` (passages, no LLM), ``ask`` (a cited answer, or a refusal), ``get_source`` (a passage and its
neighbours by the id ``search``/``ask`` return) and ``list_collections``; every indexed document the caller may
read is also a resource (``rag://document/<path>``, its text as indexed).

Who the caller is decides everything they get back, exactly as in ``rag serve``: over streamable HTTP the API key
of a user of ``RAG_USERS_FILE`` (``Authorization: Bearer rag_…``, checked on every request, not once per
session, so a revoked key stops working at once), and their groups filter retrieval inside the store query; over
stdio the identity fixed at start (``rag mcp --as USER``, or the operator, who sees everything). ``RAG_AUTH=none``
serves everything to everyone, as the API does. Every tool call and resource read is in the audit log with
``"via": "mcp"`` in ``extra``.

Failures a model can do something about (LLM down, nothing found, not allowed, unknown collection) come back as
tool errors (``isError``) with a message saying what to try next; a refusal of ``ask`` is a normal result
(``refused: true``), since "the documents do not say" is an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote, unquote

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResult
from mcp.types import Resource as MCPResource
from mcp.types import TextResourceContents, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rag.api.collections import Collections
from rag.security.audit import AuditLog
from rag.security.auth import Identity, authenticate_api_key, identity_from_headers, local_identity
from rag.generation.chain import RAG, Answer
from rag.generation.citations import snippet
from rag.llm.failures import EndpointError
from rag.errors import RagError, StoreLockedError
from rag.types import ChunkPayload, Passage
from rag.settings import Settings
from rag.security.users import UserDirectory

log = logging.getLogger(__name__)

RESOURCE_PREFIX = "rag://document"
NOT_READABLE = "no such passage or document, or you may not read it"
#: How far get_source reaches either side of the passage asked for, at most.
MAX_NEIGHBOURS = 5


class Pool(Protocol):
    """The collections served: ``rag.api.app.Collections`` (one RAG per collection, opened on first use)."""

    names: list[str]

    def get(self, name: str) -> RAG: ...


# --- what the tools return (their output schemas) -------------------------------------------------------------


class Hit(BaseModel):
    id: str = Field(description="Pass to get_source to read this passage with its neighbours.")
    path: str = Field(description="The document's path on the server.")
    source: str = Field(description="The document's file name, for citing.")
    page: int | None = Field(description="First page of the passage (PDFs; null for other formats).")
    page_end: int | None
    section: str | None = Field(description="The heading the passage sits under, if any.")
    score: float = Field(description="Cosine similarity to the query (higher is closer; about 0.3+ is relevant).")
    snippet: str


class SearchResult(BaseModel):
    query: str
    collection: str
    results: list[Hit]


class Source(BaseModel):
    n: int = Field(description="What [n] in the answer refers to.")
    id: str | None = Field(description="Pass to get_source to read the passage behind this source.")
    path: str
    source: str
    page: int | None
    page_end: int | None
    section: str | None
    snippet: str
    score: float
    cited: bool = Field(description="Whether the answer actually cites [n].")


class AskResult(BaseModel):
    answer: str = Field(description="The answer, with [n] markers for its sources.")
    refused: bool = Field(description="True when the documents the caller may read do not contain the answer: "
                                      "do not guess one, say so or search with other words.")
    sources: list[Source]
    collection: str
    model: str | None


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class Chunk(BaseModel):
    id: str
    index: int = Field(description="Position of the passage in its document.")
    page: int | None
    section: str | None
    text: str


class SourceResult(BaseModel):
    id: str
    path: str
    source: str
    collection: str
    passage: Chunk = Field(description="The passage asked for.")
    before: list[Chunk] = Field(description="The passages just before it, in document order.")
    after: list[Chunk] = Field(description="The passages just after it, in document order.")


class CollectionInfo(BaseModel):
    name: str
    documents: int = Field(description="How many documents of this collection the caller may read.")
    default: bool


class CollectionsResult(BaseModel):
    collections: list[CollectionInfo]


# --- ids --------------------------------------------------------------------------------------------------------


def passage_id(path: str, chunk_index: int) -> str:
    """Stable as long as the document is not re-ingested changed; readable, so a model can quote it."""
    return f"{path}#{chunk_index}"


def parse_passage_id(pid: str) -> tuple[str, int]:
    path, sep, index = pid.rpartition("#")
    if not sep or not path or not index.isdigit():
        raise ToolError(f"{pid!r} is not a passage id: use an id exactly as search or ask returned it "
                        "(PATH#NUMBER)")
    return path, int(index)


def resource_uri(path: str) -> str:
    return RESOURCE_PREFIX + quote(path)


def path_of_uri(uri: str) -> str | None:
    return unquote(uri[len(RESOURCE_PREFIX):]) if uri.startswith(RESOURCE_PREFIX + "/") else None


# --- the server -------------------------------------------------------------------------------------------------


class RagMCP(MCPServer):
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
        self._add_tools()

    # --- identity ---------------------------------------------------------------------------------------------

    def identify(self, headers: Mapping[str, str] | None) -> Identity:
        if self.fixed_user is not None:
            return self.fixed_user
        if self.rag_settings.auth == "none":
            return local_identity()
        who = identify_headers(self.rag_settings, self.directory, headers or {})
        if who is None:  # the HTTP guard lets no such request through; this is the second lock
            raise ToolError("not authenticated: send Authorization: Bearer <key> (rag users key NAME makes one)")
        return who

    def _caller(self, ctx: Context) -> Identity:
        return self.identify(ctx.headers)

    def _audit(self, event: str, user: Identity, tool: str, **fields: Any) -> None:
        if self.audit is None:
            return
        extra = {"via": "mcp", "tool": tool, **fields.pop("extra", {})}
        try:
            self.audit.record(event, user=user.name, extra=extra, **fields)
        except RagError as exc:  # the result is already computed; a full disk must not turn it into an error
            log.error("audit log: %s", exc)

    def _rag(self, collection: str | None) -> tuple[str, RAG]:
        name = collection or self.pool.names[0]
        if name not in self.pool.names:
            raise ToolError(f"there is no collection {name!r}: use one of {', '.join(self.pool.names)} "
                            "(list_collections), or leave collection out for the default")
        try:
            return name, self.pool.get(name)
        except RagError as exc:
            raise _tool_error(exc) from None

    # --- tools ------------------------------------------------------------------------------------------------

    def _add_tools(self) -> None:
        read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False, idempotent_hint=True)

        @self.tool(name="search", annotations=read_only, description=(
            "Find passages in the company's documents that match a query, best first, with path, page, section, "
            "similarity score and a snippet. No LLM involved: fast, and works when `ask` cannot. Use it to locate "
            "facts or documents; then `get_source` with a result's id to read it in context."))
        async def search(
            query: Annotated[str, Field(min_length=1, description="What to look for, in natural language or "
                                                                  "keywords.")],
            ctx: Context,
            k: Annotated[int, Field(ge=1, le=50, description="How many passages to return.")] = 5,
            mode: Annotated[Literal["dense", "sparse", "hybrid"] | None, Field(
                description="dense: by meaning; sparse: by keywords (names, codes); hybrid: both. Default: the "
                            "server's setting.")] = None,
            collection: Annotated[str | None, Field(description="Collection to search (list_collections); "
                                                                "default: the first.")] = None,
        ) -> SearchResult:
            user = self._caller(ctx)
            name, rag = self._rag(collection)

            def run():
                return rag.retriever_core.retrieve(query, top_k=k, groups=user.groups_any, mode=mode)

            try:
                found = await anyio.to_thread.run_sync(run)
            except RagError as exc:
                raise _tool_error(exc) from None
            self._audit("search", user, "search", question=query,
                        cited=list(dict.fromkeys(p.path for p in found.passages)),
                        latency_ms=found.seconds * 1000, extra={"collection": name})
            if not found.passages:
                raise ToolError(f"nothing relevant found for {query!r} in the documents you may read: try other "
                                "words or mode='sparse' for exact names and codes, or another collection "
                                "(list_collections). Do not answer from memory as if the documents said it.")
            return SearchResult(query=query, collection=name, results=[_hit(p) for p in found.passages])

        @self.tool(name="ask", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False), description=(
            "Answer a question from the company's documents with the server's own LLM: a short answer with [n] "
            "citations, and the sources they point to (path, page, snippet, id). If the documents the caller may "
            "read do not contain the answer, `refused` is true: report that rather than guessing. Pass earlier "
            "turns as `history` for follow-up questions. Slower than `search` (an LLM call)."))
        async def ask(
            question: Annotated[str, Field(min_length=1, description="The question, as a full sentence.")],
            ctx: Context,
            history: Annotated[list[Turn] | None, Field(
                description="Earlier turns of this conversation, oldest first, so follow-ups like 'and for "
                            "contractors?' are understood.")] = None,
            collection: Annotated[str | None, Field(description="Collection to answer from (list_collections); "
                                                                "default: the first.")] = None,
        ) -> AskResult:
            user = self._caller(ctx)
            name, rag = self._rag(collection)
            turns = [(t.role, t.content) for t in history or []]

            def run() -> Answer:
                # rag.ask writes the "ask" audit record itself (cited paths, model, latency); this says who shelled.
                return rag.ask(question, turns, user=user, audit_extra={"via": "mcp", "tool": "ask",
                                                                        "collection": name})

            try:
                answer = await anyio.to_thread.run_sync(run)
            except RagError as exc:
                raise _tool_error(exc) from None
            return _ask_result(answer, name)

        @self.tool(name="get_source", annotations=read_only, description=(
            "Read one passage by its id (from `search` or `ask`) together with the passages around it in the same "
            "document, to check a citation or quote it in context. The same permission check as a download: an "
            "id of a document the caller may not read is refused exactly like one that does not exist."))
        async def get_source(
            id: Annotated[str, Field(min_length=3, description="A passage id exactly as search or ask returned "
                                                               "it (PATH#NUMBER).")],
            ctx: Context,
            neighbours: Annotated[int, Field(ge=0, le=MAX_NEIGHBOURS, description="How many passages to include "
                                                                                  "on each side.")] = 1,
            collection: Annotated[str | None, Field(description="The collection the id came from; default: the "
                                                                "first.")] = None,
        ) -> SourceResult:
            user = self._caller(ctx)
            name, rag = self._rag(collection)
            path, index = parse_passage_id(id)

            def run():
                if not rag.readable(path, user=user):
                    return None
                return rag.store.chunks_of(path, groups_any=user.groups_any)

            try:
                hits = await anyio.to_thread.run_sync(run)
            except RagError as exc:
                raise _tool_error(exc) from None
            chunks = sorted((_chunk(path, h.payload) for h in hits or []), key=lambda c: c.index)
            at = next((i for i, c in enumerate(chunks) if c.index == index), None)
            self._audit("download", user, "get_source", cited=[path] if at is not None else [],
                        extra={"collection": name, "id": id, "found": at is not None})
            if at is None:
                raise ToolError(f"{id}: {NOT_READABLE}. Use an id from a recent search or ask (ids change when a "
                                "document is re-ingested).")
            first = hits[0].payload if hits else {}
            return SourceResult(id=id, path=path, source=first.get("source") or path.rsplit("/", 1)[-1],
                                collection=name, passage=chunks[at], before=chunks[max(0, at - neighbours):at],
                                after=chunks[at + 1:at + 1 + neighbours])

        @self.tool(name="list_collections", annotations=read_only, description=(
            "List the document collections this server can search, with how many documents of each the caller "
            "may read. Pass a name as `collection` to the other tools."))
        async def list_collections(ctx: Context) -> CollectionsResult:
            user = self._caller(ctx)

            def run() -> list[CollectionInfo]:
                out = []
                for i, n in enumerate(self.pool.names):
                    rag = self.pool.get(n)
                    docs = [p for p in rag.store.documents() if rag.readable(p, user=user)]
                    out.append(CollectionInfo(name=n, documents=len(docs), default=i == 0))
                return out

            try:
                infos = await anyio.to_thread.run_sync(run)
            except RagError as exc:
                raise _tool_error(exc) from None
            self._audit("mcp_tool", user, "list_collections")
            return CollectionsResult(collections=infos)

    # --- resources: one per readable document, listed per caller -------------------------------------------------
    # MCPServer's resource manager holds one static list for everyone; the documents a caller sees depend on who
    # they are, so both handlers are replaced (they receive the request, hence the caller's headers).

    def _documents(self, user: Identity) -> list[tuple[str, RAG, str]]:
        out = []
        for n in self.pool.names:
            rag = self.pool.get(n)
            out += [(n, rag, p) for p in sorted(rag.store.documents()) if rag.readable(p, user=user)]
        return out

    def _resource_caller(self, ctx) -> Identity:
        try:
            return self.identify(_headers(ctx))
        except ToolError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None

    async def _handle_list_resources(self, ctx, params: PaginatedRequestParams | None) -> ListResourcesResult:
        user = self._resource_caller(ctx)

        def run() -> list[MCPResource]:
            out = []
            for n, rag, p in self._documents(user):
                rec = rag.store.get_document(p)
                out.append(MCPResource(uri=resource_uri(p), name=p.rsplit("/", 1)[-1], mime_type="text/plain",
                                       title=(rec.title if rec and rec.title else None),
                                       description=f"Indexed text of {p} (collection {n})",
                                       size=None))
            return out

        try:
            resources = await anyio.to_thread.run_sync(run)
        except RagError as exc:  # resources have no isError result: a protocol error carries the message
            raise MCPError(code=INTERNAL_ERROR, message=str(_tool_error(exc))) from None
        self._audit("mcp_tool", user, "resources/list")
        return ListResourcesResult(resources=resources)

    async def _handle_read_resource(self, ctx, params: ReadResourceRequestParams) -> ReadResourceResult:
        user = self._resource_caller(ctx)
        uri = str(params.uri)
        path = path_of_uri(uri)

        def run() -> str | None:
            if path is None:
                return None
            for n in self.pool.names:
                rag = self.pool.get(n)
                if rag.readable(path, user=user):
                    hits = rag.store.chunks_of(path, groups_any=user.groups_any)
                    chunks = sorted((_chunk(path, h.payload) for h in hits), key=lambda c: c.index)
                    return "\n\n".join(c.text for c in chunks)
            return None

        try:
            text = await anyio.to_thread.run_sync(run)
        except RagError as exc:
            raise MCPError(code=INTERNAL_ERROR, message=str(_tool_error(exc))) from None
        self._audit("download", user, "resources/read", cited=[path] if text is not None and path else [],
                    extra={"found": text is not None})
        if text is None:
            # The same words whether the document exists or not: no probing for names.
            raise MCPError(code=INVALID_PARAMS, message=f"{uri}: {NOT_READABLE}; resources/list shows what you "
                                                        "may read", data={"uri": uri})
        return ReadResourceResult(contents=[TextResourceContents(uri=uri, text=text, mime_type="text/plain")])

    # --- HTTP -------------------------------------------------------------------------------------------------

    def http_app(self, *, path: str = "/mcp", host: str = "127.0.0.1"):
        """The streamable HTTP app, behind the API-key guard. Run its ``session_manager.run()`` in the lifespan
        of whatever serves it (``rag mcp --http`` does; ``rag serve`` mounts it)."""
        app = self.streamable_http_app(streamable_http_path=path, host=host)
        return ApiKeyGuard(app, self) if self.fixed_user is None and self.rag_settings.auth != "none" else app


class ApiKeyGuard:
    """Refuses a request without a valid key with 401 before it reaches the MCP session, so a client with a
    wrong key fails at connect time with a clear message instead of at its first tool call."""

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
        await self.app(scope, receive, send)


def identify_headers(settings: Settings, directory: UserDirectory | None,
                     headers: Mapping[str, str]) -> Identity | None:
    """As ``rag serve`` identifies a request: a bearer key of the users file, or in proxy mode the proxy's
    headers; None = refuse."""
    h = {k.lower(): v for k, v in headers.items()}
    if settings.auth == "none":
        return local_identity()
    assert directory is not None
    auth = h.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return authenticate_api_key(directory, auth[7:].strip())
    if settings.auth == "proxy":
        return identity_from_headers(settings, headers, directory)
    return None


def _headers(ctx) -> Mapping[str, str] | None:
    return getattr(getattr(ctx, "request", None), "headers", None)


def _tool_error(exc: RagError) -> ToolError:
    if isinstance(exc, EndpointError):
        return ToolError(f"the LLM behind this server is not answering ({exc}); retry in a minute, or use the "
                         "search tool, which needs no LLM")
    if isinstance(exc, StoreLockedError):
        return ToolError(f"the document store is busy ({exc}); retry in a minute")
    return ToolError(str(exc))


def _hit(p: Passage) -> Hit:
    return Hit(id=passage_id(p.path, p.chunk_index), path=p.path, source=p.source, page=p.page_start,
               page_end=p.page_end, section=p.section, score=round(p.score, 4), snippet=snippet(p.text, 300))


def _chunk(path: str, payload: Mapping[str, Any]) -> Chunk:
    p = ChunkPayload.from_dict(dict(payload))
    return Chunk(id=passage_id(path, p.chunk_index), index=p.chunk_index, page=p.page_start, section=p.section,
                 text=p.text)


def _ask_result(answer: Answer, collection: str) -> AskResult:
    packed = {s.n: s for s in answer.packing.sources} if answer.packing else {}
    sources = []
    for c in answer.sources:
        src = packed.get(c.n)
        best = max(src.passages, key=lambda p: p.score) if src and src.passages else None
        sources.append(Source(n=c.n, id=passage_id(c.path, best.chunk_index) if best else None, path=c.path,
                              source=c.source, page=c.page, page_end=c.page_end, section=c.section,
                              snippet=c.snippet, score=round(c.score, 4), cited=c.cited))
    return AskResult(answer=answer.text, refused=answer.refused, sources=sources, collection=collection,
                     model=answer.model)


def create_server(settings: Settings, *, user: Identity | None = None, collections: Sequence[str] | None = None,
                  pool: Pool | None = None) -> RagMCP:
    """The MCP server for ``settings``' collections (``RAG_API_COLLECTIONS``, else ``RAG_COLLECTION``)."""
    if pool is None:
        pool = Collections(settings, list(collections or settings.api_collections or [settings.collection]))
    return RagMCP(settings, pool, user=user, audit=AuditLog.from_settings(settings))


def serve_http(server: RagMCP, *, host: str, port: int) -> None:
    """``rag mcp --http``: streamable HTTP at http://HOST:PORT/mcp until Ctrl-C."""
    import uvicorn

    uvicorn.run(server.http_app(host=host), host=host, port=port, log_level="warning", access_log=False)
