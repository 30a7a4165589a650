"""Retrieval over the store: embed the question locally, search Qdrant with the caller's filter, optionally
rerank the best candidates with a cross-encoder (rag.retrieval.rerank), return passages.

``Retriever`` is ours (typed passages, scores, timings); ``StoreRetriever`` wraps it as a LangChain
``BaseRetriever`` so a developer can drop it into any LangChain chain.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from rag.index.embeddings import Embedder
from rag.types import ChunkPayload, Passage
from rag.retrieval.fusion import feedback_vector, score_fusion
from rag.retrieval.rerank import Reranker, get_reranker
from rag.settings import HybridFusion, Settings
from rag.index.sparse import SparseEncoder, SparseVector, get_sparse_encoder
from rag.index.store import Hit, SearchFilter, Store
from rag.index.store.base import SearchMode, check_meta
from rag.index.windows import ranking_cosines


@dataclass
class Retrieved:
    passages: list[Passage]
    seconds: float  # all of it, reranking included
    candidates: int  # before the relevance threshold
    rerank_seconds: float = 0.0
    reranked: int = 0  # candidates the reranker scored (0: no reranking)
    reranker: str | None = None


def to_passage(hit: Hit) -> Passage:
    p = ChunkPayload.from_dict(hit.payload)
    return Passage(
        id=hit.id,
        text=p.text,
        score=hit.score if hit.similarity is None else hit.similarity,  # cosine: comparable across modes
        path=p.path,
        source=p.source,
        page_start=p.page_start,
        page_end=p.page_end,
        section=p.section,
        chunk_index=int(p.chunk_index),
        char_start=int(p.char_start),
        char_end=int(p.char_end),
    )


class Retriever:
    """``mode``: dense (cosine), sparse (BM25) or hybrid (both: ``fusion="score"``, the cosine plus
    ``sparse_weight`` times the BM25 scaled by the query's best (rag.retrieval.fusion), or ``"rrf"``, reciprocal
    rank fusion inside Qdrant with ``rrf_k``). Score fusion ranks by the cosine to the question's vector moved
    ``feedback_weight`` toward the mean of its best ``feedback_hits`` dense hits (pseudo-relevance feedback; 0 is
    off); the cosine a hit reports, and the threshold below, stay the question's own.

    ``windows``: in dense mode and in score fusion, a chunk stored with window vectors (RAG_DENSE_WINDOWS,
    rag.index.windows) ranks by the mean of its cosine and its best window's; the candidates are still the
    chunks' own nearest (``prefetch`` of them in dense mode), and the reported cosine stays the chunk's own.

    ``min_score`` is a cosine threshold in every mode. Dense drops each hit below it. The fused modes rank by
    keywords too, so a chunk can be the right one with a low cosine: there the threshold only decides whether
    anything relevant was found at all (no hit reaches it = nothing relevant, as in dense mode).

    ``reranker`` (optional): the first ``rerank_candidates`` hits that survived the threshold are reordered by it
    and the best ``top_k`` of that order returned (the rest, if ``top_k`` is larger, follow in store order).
    Reranking never changes whether a question is answered: the threshold is decided on the same ``top_k``
    store hits as without it, and a chunk the threshold dropped is never brought back.
    ``Passage.score`` stays the cosine; the reranker's score is ``Passage.rerank_score``.
    """

    def __init__(self, store: Store, embedder: Embedder, *, top_k: int = 20, min_score: float = 0.0,
                 mode: SearchMode = "dense", sparse: SparseEncoder | None = None, rrf_k: int = 5,
                 prefetch: int = 100, reranker: Reranker | None = None, rerank_candidates: int = 50,
                 fusion: HybridFusion = "score", sparse_weight: float = 0.5, feedback_hits: int = 0,
                 feedback_weight: float = 0.0, windows: bool = False) -> None:
        if mode != "dense" and sparse is None:
            raise ValueError(f"retrieval mode {mode!r} needs a sparse encoder")
        self.store = store
        self.embedder = embedder
        self.top_k = top_k
        self.min_score = min_score
        self.mode: SearchMode = mode
        self.sparse = sparse
        self.rrf_k = rrf_k
        self.fusion: HybridFusion = fusion
        self.sparse_weight = sparse_weight
        self.feedback_hits = feedback_hits
        self.feedback_weight = feedback_weight
        self.windows = windows
        self.prefetch = prefetch
        self.reranker = reranker
        self.rerank_candidates = rerank_candidates
        meta = store.meta()
        if meta:  # another model's vectors would answer with noise, or fail on their size deep in a query
            check_meta(meta, embedder.model_name, embedder.dimension, f"the index at {store.location}")

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, embedder: Embedder, **overrides) -> Retriever:
        """``reranker=None`` among the overrides turns reranking off whatever the settings say."""
        kw = {"top_k": settings.top_k, "min_score": settings.min_score, "mode": settings.retrieval_mode,
              "rrf_k": settings.rrf_k, "prefetch": settings.hybrid_prefetch, "fusion": settings.hybrid_fusion,
              "sparse_weight": settings.hybrid_sparse_weight, "feedback_hits": settings.hybrid_feedback_hits,
              "feedback_weight": settings.hybrid_feedback_weight, "windows": settings.dense_windows > 0,
              "rerank_candidates": settings.rerank_candidates} | overrides
        if kw["mode"] != "dense":
            kw.setdefault("sparse", get_sparse_encoder(settings))
        if "reranker" not in kw:
            kw["reranker"] = get_reranker(settings)
        return cls(store, embedder, **kw)

    @property
    def effective_mode(self) -> SearchMode:
        """Stores built before sparse vectors existed can only answer dense queries."""
        return self.mode if self.mode == "dense" or self.store.has_sparse else "dense"

    def retrieve(self, query: str, *, top_k: int | None = None, groups: Sequence[str] | None = None,
                 min_score: float | None = None, mode: SearchMode | None = None,
                 rerank: bool = True) -> Retrieved:
        """Best passages for ``query``, best first. ``groups`` restricts to chunks those groups may read
        (applied inside the Qdrant query); ``None`` means no restriction (single-user local mode).
        ``rerank=False`` skips the configured reranker for this call."""
        started = time.perf_counter()
        mode = mode or self.effective_mode
        k = top_k or self.top_k
        reranker = self.reranker if rerank else None
        vector = self.embedder.embed_query(query)
        sparse = self.sparse.embed_query(query) if mode != "dense" and self.sparse is not None else None
        flt = SearchFilter(groups_any=group_names(groups)) if groups is not None else None
        limit = max(k, self.rerank_candidates) if reranker is not None else k
        hits = self._search(vector.tolist(), sparse, limit, flt, mode)
        threshold = self.min_score if min_score is None else min_score
        sims = [h.score if h.similarity is None else h.similarity for h in hits]
        if mode == "dense":
            kept = [h for h, s in zip(hits, sims, strict=True) if s >= threshold]
        else:
            # Judged on the top k alone, as without reranking: more candidates must not turn a refusal into an answer.
            kept = hits if any(s >= threshold for s in sims[:k]) else []
        passages = [to_passage(h) for h in kept]
        rerank_seconds, reranked = 0.0, 0
        if reranker is not None and passages:
            t = time.perf_counter()
            pool, rest = passages[:self.rerank_candidates], passages[self.rerank_candidates:]
            scores = reranker.rerank(query, [p.text for p in pool])
            order = sorted(range(len(pool)), key=lambda i: -scores[i])  # stable: ties keep the store's order
            passages = [replace(pool[i], rerank_score=scores[i]) for i in order] + rest
            rerank_seconds, reranked = time.perf_counter() - t, len(pool)
        return Retrieved(passages[:k], time.perf_counter() - started, len(hits), rerank_seconds, reranked,
                         reranker.name if reranker is not None and reranked else None)

    def _search(self, vector: list[float], sparse: SparseVector | None, limit: int, flt: SearchFilter | None,
                mode: SearchMode) -> list[Hit]:
        windows = self.windows and self.store.has_windows
        if mode == "dense" and windows:
            return self._dense_by_windows(vector, limit, flt)
        if mode != "hybrid" or self.fusion == "rrf":
            return self.store.query(vector, limit, flt, sparse=sparse, mode=mode, rrf_k=self.rrf_k,
                                    prefetch=self.prefetch)
        n = max(self.prefetch, limit)
        # Ids and scores of 2 x n candidates, then the payloads of the few kept: reading every candidate's payload
        # made this 7.1 ms instead of 2.6 ms p50 on the SciFact index (bench/README.md, query.py).
        dense = self.store.query(vector, n, flt, mode="dense", payload=False)
        keyword = self.store.query(vector, n, flt, sparse=sparse, mode="sparse", payload=False)
        fused = score_fusion(dense, keyword, self.sparse_weight, limit,
                             self._ranking_cosines(vector, dense, keyword, flt, windows))
        return self._with_payloads(fused, flt)

    def _dense_by_windows(self, vector: list[float], limit: int, flt: SearchFilter | None) -> list[Hit]:
        """The chunks' own ``prefetch`` nearest, re-ranked by the mean of their cosine and their best window's."""
        hits = self.store.query(vector, max(self.prefetch, limit), flt, mode="dense", payload=False)
        rank = ranking_cosines({h.id: h.score for h in hits},
                               self.store.window_cosines(vector, [h.id for h in hits], flt))
        best = sorted(hits, key=lambda h: -rank[h.id])[:limit]
        return self._with_payloads([Hit(h.id, rank[h.id], {}, h.score) for h in best], flt)

    def _with_payloads(self, hits: Sequence[Hit], flt: SearchFilter | None) -> list[Hit]:
        payloads = self.store.payloads([h.id for h in hits], flt)
        return [replace(h, payload=payloads[h.id]) for h in hits if h.id in payloads]

    def _ranking_cosines(self, vector: list[float], dense: Sequence[Hit], keyword: Sequence[Hit],
                         flt: SearchFilter | None, windows: bool) -> dict[str, float] | None:
        """The cosine every candidate ranks by in score fusion, or None for the question's own. Feedback moves the
        question's vector (fusion.feedback_vector) and every candidate is re-scored against it: searching again
        with the moved vector found the same top 10 in every setting measured, for a second search's cost. With
        ``windows``, a chunk's cosine is blended with its best window's, to whichever vector ranks."""
        feedback = self.feedback_hits > 0 and self.feedback_weight > 0 and bool(dense)
        if not feedback and not windows:
            return None
        ids = list(dict.fromkeys([h.id for h in dense] + [h.id for h in keyword]))
        if feedback:
            best = self.store.vectors([h.id for h in dense[:self.feedback_hits]])
            target = feedback_vector(vector, list(best.values()), self.feedback_weight).tolist()
            own = self.store.cosines(target, ids, flt)
        else:  # the question's own cosines, which both candidate lists already carry
            target = vector
            own = {h.id: h.similarity for h in keyword if h.similarity is not None} | {h.id: h.score for h in dense}
        return ranking_cosines(own, self.store.window_cosines(target, ids, flt)) if windows else own


class StoreRetriever(BaseRetriever):
    """LangChain face of :class:`Retriever`: ``Document(page_content=text, metadata={path, page, score, ...})``.

    ``k`` (as LangChain's retrievers name it) caps the documents returned, in the constructor or per call
    (``retriever.invoke(query, k=3)``); unset, the Retriever's ``top_k``. ``groups`` restricts what it may
    return, inside the store's query. Passes LangChain's standard retriever tests
    (tests/integration/test_langchain_standard.py)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Retriever
    groups: list[str] | None = None
    k: int | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        found = self.retriever.retrieve(query, top_k=k or self.k, groups=self.groups)
        docs = [document_of(p) for p in found.passages]
        if found.reranked:  # a per-query figure; the chain reports it in Answer.timings["rerank"]
            for d in docs:
                d.metadata["rerank_seconds"] = found.rerank_seconds
        return docs


def document_of(p: Passage) -> Document:
    return Document(
        page_content=p.text,
        id=p.id,
        metadata={"path": p.path, "source": p.source, "page": p.page_start, "page_end": p.page_end,
                  "section": p.section, "score": p.score, "rerank_score": p.rerank_score,
                  "chunk_index": p.chunk_index, "char_start": p.char_start, "char_end": p.char_end},
    )


def group_names(groups: Sequence[str]) -> tuple[str, ...]:
    """``groups`` as the store filter takes them. A lone string is refused: as a sequence it is its letters, and
    a user of group "admins" would silently see only what groups "a", "d", ... may read."""
    if isinstance(groups, str):
        raise TypeError(f"groups is a list of group names: groups=[{groups!r}], not groups={groups!r}")
    return tuple(groups)


def passages_of(docs: Sequence[Document]) -> list[Passage]:
    """Documents from any retriever as passages with distinct ids, which the packer tells passages apart by.
    Another retriever's documents often carry no id and no chunk index, so two of one file would share
    ``path#0``: a repeat of the same text is dropped, a different text under a taken id gets a suffix."""
    out: list[Passage] = []
    texts: dict[str, str] = {}
    for doc in docs:
        p = passage_of(doc)
        if p.id in texts:
            if texts[p.id] == p.text:
                continue
            p = replace(p, id=f"{p.id}~{len(out)}")
        texts[p.id] = p.text
        out.append(p)
    return out


def passage_of(doc: Document) -> Passage:
    """A document from any retriever as a passage the packer takes: ours round-trip exactly; another
    retriever's documents need at least a ``source`` or ``path`` in their metadata to be citable by name."""
    m = doc.metadata
    path = str(m.get("path") or m.get("source") or "unknown")
    return Passage(
        id=str(doc.id or f"{path}#{m.get('chunk_index', 0)}"), text=doc.page_content,
        score=float(m.get("score") or 0.0), path=path, source=str(m.get("source") or path.rsplit("/", 1)[-1]),
        page_start=m.get("page"), page_end=m.get("page_end", m.get("page")), section=m.get("section"),
        chunk_index=int(m.get("chunk_index") or 0), char_start=int(m.get("char_start") or 0),
        char_end=int(m.get("char_end") or 0), rerank_score=m.get("rerank_score"),
    )
