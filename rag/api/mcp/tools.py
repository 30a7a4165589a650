"""The four MCP tools, one registering function each: their descriptions and parameter schemas are what a model
reads to decide which to call, so they say when to use each and what to do when it fails."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from rag.api.limits import conversation_error
from rag.api.mcp.calls import for_answer, for_tool
from rag.api.mcp.schemas import (
    MAX_NEIGHBOURS,
    NOT_READABLE,
    AskResult,
    CollectionInfo,
    CollectionsResult,
    SearchResult,
    SourceResult,
    Turn,
    parse_passage_id,
    shown,
    sorted_chunks,
    to_ask_result,
    to_hit,
)
from rag.retrieval.retriever import Retrieved
from rag.settings import RetrievalMode

if TYPE_CHECKING:
    from rag.api.mcp.server import RagMCP

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False, idempotent_hint=True)
#: What each search mode is for, as the "nothing found" error suggests the modes the search did not use.
MODE_HINTS: dict[RetrievalMode, str] = {"sparse": "mode='sparse' for exact names and codes",
                                         "hybrid": "mode='hybrid' for meaning and keywords together",
                                         "dense": "mode='dense' for the meaning alone"}


def add_tools(server: RagMCP) -> None:
    for add in (add_search, add_ask, add_get_source, add_list_collections):
        add(server)


def add_search(server: RagMCP) -> None:
    @server.tool(name="search", annotations=READ_ONLY, description=(
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
        user, name, rag = server.target(ctx, collection)
        # The cap on what an ask may send, for the same reason: embedding and tokenizing a query costs time in
        # proportion to its length, before any search.
        if conversation_error(server.rag_settings, [query]) is not None:
            raise ToolError(f"the query holds {len(query)} characters, more than this server accepts "
                            f"(RAG_API_MAX_CHARS={server.rag_settings.api_max_chars}): search for a few keywords "
                            "or one sentence, several searches if need be")

        def run() -> tuple[Retrieved, list[RetrievalMode]]:
            core = rag.retriever_core
            found = core.retrieve(query, top_k=k, groups=user.groups_any, mode=mode)
            # A store without BM25 vectors answers dense queries alone: no other mode to suggest there.
            modes: list[RetrievalMode] = list(MODE_HINTS) if rag.store.has_sparse else ["dense"]
            return found, [m for m in modes if m != (mode or core.effective_mode)]

        found, other_modes = await for_tool(run)
        server.record("search", user, "search", question=query,
                      cited=list(dict.fromkeys(p.path for p in found.passages)),
                      latency_ms=found.seconds * 1000, extra={"collection": name})
        if not found.passages:
            tries = ["other words", *(MODE_HINTS[m] for m in other_modes), "another collection (list_collections)"]
            raise ToolError(f"nothing relevant found for {shown(query)} in the documents you may read: try "
                            f"{', '.join(tries[:-1])} or {tries[-1]}. Do not answer from memory as if the "
                            "documents said it.")
        return SearchResult(query=query, collection=name, results=[to_hit(p) for p in found.passages])


def add_ask(server: RagMCP) -> None:
    @server.tool(name="ask", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False), description=(
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
        user, name, rag = server.target(ctx, collection)
        turns = [(t.role, t.content) for t in history or []]
        # Before any token is counted: each history turn would cost the tokenizer a call.
        if (too_large := conversation_error(server.rag_settings, [c for _, c in turns] + [question])) is not None:
            raise ToolError(too_large)

        # The answer writes the "ask" audit record itself (cited paths, model, latency); this says who shelled.
        stream = rag.stream(question, turns, user=user, audit_extra={"via": "mcp", "tool": "ask", "collection": name})
        return to_ask_result(await for_answer(stream), name)


def add_get_source(server: RagMCP) -> None:
    @server.tool(name="get_source", annotations=READ_ONLY, description=(
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
        user, name, rag = server.target(ctx, collection)
        path, index = parse_passage_id(id)

        def run():
            if not rag.readable(path, user=user):
                return None
            return rag.store.chunks_of(path, groups_any=user.groups_any)

        hits = await for_tool(run)
        chunks = sorted_chunks(path, hits or [])
        at = next((i for i, c in enumerate(chunks) if c.index == index), None)
        server.record("download", user, "get_source", cited=[path] if at is not None else [],
                      extra={"collection": name, "id": id, "found": at is not None})
        if at is None:
            raise ToolError(f"{shown(id)}: {NOT_READABLE}. Use an id from a recent search or ask (ids change when a "
                            "document is re-ingested).")
        first = hits[0].payload if hits else {}
        return SourceResult(id=id, path=path, source=first.get("source") or path.rsplit("/", 1)[-1],
                            collection=name, passage=chunks[at], before=chunks[max(0, at - neighbours):at],
                            after=chunks[at + 1:at + 1 + neighbours])


def add_list_collections(server: RagMCP) -> None:
    @server.tool(name="list_collections", annotations=READ_ONLY, description=(
        "List the document collections this server can search, with how many documents of each the caller "
        "may read. Pass a name as `collection` to the other tools."))
    async def list_collections(ctx: Context) -> CollectionsResult:
        user = server.caller(ctx)

        def run() -> list[CollectionInfo]:
            out = []
            for i, n in enumerate(server.pool.names):
                rag = server.pool.get(n)
                docs = [p for p in rag.store.documents() if rag.readable(p, user=user)]
                out.append(CollectionInfo(name=n, documents=len(docs), default=i == 0))
            return out

        infos = await for_tool(run)
        server.record("mcp_tool", user, "list_collections")
        return CollectionsResult(collections=infos)
