"""Retrieval over the store: embed the question locally, search Qdrant with the caller's filter, return passages.

``Retriever`` is ours (typed passages, scores, timings); ``StoreRetriever`` wraps it as a LangChain
``BaseRetriever`` so a developer can drop it into any LangChain chain.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from rag.embeddings import Embedder
from rag.packing import Passage
from rag.store import Hit, SearchFilter, Store


@dataclass
class Retrieved:
    passages: list[Passage]
    seconds: float
    candidates: int  # before the relevance threshold


def to_passage(hit: Hit) -> Passage:
    p = hit.payload
    return Passage(
        id=hit.id,
        text=p.get("text", ""),
        score=hit.score,
        path=p.get("path", ""),
        source=p.get("source") or p.get("path", "").rsplit("/", 1)[-1],
        page_start=p.get("page_start"),
        page_end=p.get("page_end"),
        section=p.get("section"),
        chunk_index=int(p.get("chunk_index", 0)),
        char_start=int(p.get("char_start", 0)),
        char_end=int(p.get("char_end", 0)),
    )


class Retriever:
    def __init__(self, store: Store, embedder: Embedder, *, top_k: int = 20, min_score: float = 0.0) -> None:
        self.store = store
        self.embedder = embedder
        self.top_k = top_k
        self.min_score = min_score

    def retrieve(self, query: str, *, top_k: int | None = None, groups: Sequence[str] | None = None,
                 min_score: float | None = None) -> Retrieved:
        """Best passages for ``query``, best first. ``groups`` restricts to chunks those groups may read
        (applied inside the Qdrant query); ``None`` means no restriction (single-user local mode)."""
        started = time.perf_counter()
        vector = self.embedder.embed_query(query)
        flt = SearchFilter(groups_any=tuple(groups)) if groups is not None else None
        hits = self.store.search(vector.tolist(), top_k or self.top_k, flt)
        threshold = self.min_score if min_score is None else min_score
        passages = [to_passage(h) for h in hits if h.score >= threshold]
        return Retrieved(passages, time.perf_counter() - started, len(hits))


class StoreRetriever(BaseRetriever):
    """LangChain face of :class:`Retriever`: ``Document(page_content=text, metadata={path, page, score, ...})``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Retriever
    groups: list[str] | None = None
    top_k: int | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        found = self.retriever.retrieve(query, top_k=self.top_k, groups=self.groups)
        return [
            Document(
                page_content=p.text,
                id=p.id,
                metadata={"path": p.path, "source": p.source, "page": p.page_start, "page_end": p.page_end,
                          "section": p.section, "score": p.score, "chunk_index": p.chunk_index,
                          "char_start": p.char_start, "char_end": p.char_end},
            )
            for p in found.passages
        ]
