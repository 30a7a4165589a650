"""What the MCP tools return (their output schemas, which the SDK publishes to clients), the passage and resource
ids, and the conversions from the library's types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from rag.generation.chain import Answer
from rag.generation.citations import snippet
from rag.types import ChunkPayload, Passage

RESOURCE_PREFIX = "rag://document"
NOT_READABLE = "no such passage or document, or you may not read it"
#: How far get_source reaches either side of the passage asked for, at most.
MAX_NEIGHBOURS = 5
#: How much of a caller's text (a query, an id, a URI) an error message repeats: enough to recognise it, and a
#: megabyte sent is not a megabyte echoed back (a path, hence an id, rarely comes near it).
ECHO_CHARS = 200


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


def shown(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` quoted for an error message, cut to its first ``limit`` characters if longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def passage_id(path: str, chunk_index: int) -> str:
    """Stable as long as the document is not re-ingested changed; readable, so a model can quote it."""
    return f"{path}#{chunk_index}"


def parse_passage_id(pid: str) -> tuple[str, int]:
    path, sep, index = pid.rpartition("#")
    if not sep or not path or not index.isdigit():
        raise ToolError(f"{shown(pid)} is not a passage id: use an id exactly as search or ask returned it "
                        "(PATH#NUMBER)")
    return path, int(index)


def resource_uri(path: str) -> str:
    return RESOURCE_PREFIX + quote(path)


def path_of_uri(uri: str) -> str | None:
    return unquote(uri[len(RESOURCE_PREFIX):]) if uri.startswith(RESOURCE_PREFIX + "/") else None


# --- from the library's types -----------------------------------------------------------------------------------


def to_hit(p: Passage) -> Hit:
    return Hit(id=passage_id(p.path, p.chunk_index), path=p.path, source=p.source, page=p.page_start,
               page_end=p.page_end, section=p.section, score=round(p.score, 4), snippet=snippet(p.text, 300))


def to_chunk(path: str, payload: Mapping[str, Any]) -> Chunk:
    p = ChunkPayload.from_dict(dict(payload))
    return Chunk(id=passage_id(path, p.chunk_index), index=p.chunk_index, page=p.page_start, section=p.section,
                 text=p.text)


def sorted_chunks(path: str, hits) -> list[Chunk]:
    """A document's stored chunks in document order (the store returns them in any order)."""
    return sorted((to_chunk(path, h.payload) for h in hits), key=lambda c: c.index)


def to_ask_result(answer: Answer, collection: str) -> AskResult:
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
