"""The domain objects that cross the stages, in one place: what retrieval hands to packing, what a chat turn is,
and what a group name may be. Only the standard library here, so every stage can import it without importing
another stage.

The chunk payload written by ingestion and read by retrieval is still a dict (rag/index/store/base.py); it
becomes a typed schema here next.
"""

from __future__ import annotations

from dataclasses import dataclass


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


