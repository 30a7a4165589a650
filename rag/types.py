"""The domain objects that cross the stages, in one place: what retrieval hands to packing, what a chat turn is,
and what a group name may be. Only the standard library here, so every stage can import it without importing
another stage.

The chunk payload is the one schema both sides of the index share: ingestion writes it (ingest/pipeline.py),
retrieval and the MCP server read it (rag/retrieval/retriever.py, rag/api/mcp/schemas.py); Qdrant stores it as a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ChunkPayload:
    """What the index keeps with each chunk's vectors: its text, where it comes from, and who may read it.

    Stored as a plain dict (:meth:`to_dict`); :meth:`from_dict` reads one back, tolerating keys it does not know
    and filling keys an older index lacks with their defaults."""

    text: str
    path: str
    source: str = ""  # the file name, shown in citations
    title: str | None = None
    doc_sha256: str = ""
    chunk_index: int = 0
    chunk_count: int = 0
    page_start: int | None = None
    page_end: int | None = None
    section: str | None = None
    char_start: int = 0  # the chunk's span in the document's extracted text
    char_end: int = 0
    token_count: int = 0
    groups: list[str] = field(default_factory=list)  # who may read it: any of these (the store filter)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ChunkPayload:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in payload.items() if k in known}
        data.setdefault("text", "")
        data.setdefault("path", "")
        if not data.get("source"):
            data["source"] = str(data["path"]).rsplit("/", 1)[-1]
        return cls(**data)


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk, as the retriever hands it to the packer."""

    id: str
    text: str
    score: float
    path: str
    source: str
    page_start: int | None = None
    page_end: int | None = None
    section: str | None = None
    chunk_index: int = 0
    char_start: int = 0
    char_end: int = 0
    trimmed: bool = False  # cut to fill the last room in the window; its text ends with TRIM_MARK
    rerank_score: float | None = None  # set when a reranker ordered the passages; ``score`` stays the cosine


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant"
    content: str


def check_group(name: object, where: str = "") -> str:
    """A valid group name, or an error. Commas are refused because groups travel comma-separated (--groups,
    X-Forwarded-Groups); control characters because they end up in logs and headers."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}group names must be non-empty strings, not {name!r}")
    if name != name.strip() or "," in name or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name) > 256:
        raise ValueError(f"{where}invalid group name {name!r}: no commas, control characters or surrounding "
                         "spaces, at most 256 characters")
    return name


