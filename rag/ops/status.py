"""What the index holds and which LLM answers: one description for `rag status` and the UI's sidebar."""

from __future__ import annotations

from typing import Any

from rag.index.embeddings import describe as describe_embedder
from rag.retrieval.rerank import describe as describe_reranker
from rag.settings import Settings
from rag.index.store import Store


def index_info(store: Store, settings: Settings) -> dict[str, Any]:
    meta = store.meta() or {}
    docs = store.documents()
    index = store.index_state()
    sparse = store.has_sparse or not meta
    return {
        "backend": store.backend,
        "location": store.location,
        "collection": settings.collection,
        "data_dir": str(settings.data_dir.resolve()),
        "documents": len(docs),
        "chunks": store.count_chunks(),
        "pages": sum(d.pages or 0 for d in docs.values()),
        "embedding_model": meta.get("embedding_model") or settings.embedding_model,
        "embedding_dimension": meta.get("dimension"),
        "embedding_backend": describe_embedder(settings),
        "sparse_vectors": store.has_sparse,
        # A store not created yet (no meta) will get BM25 vectors at its first ingest: the setting applies.
        "retrieval_mode": settings.retrieval_mode if sparse else "dense",
        "fusion": describe_fusion(settings) if sparse and settings.retrieval_mode == "hybrid" else None,
        "reranker": describe_reranker(settings),
        "windows": describe_windows(store, settings),
        "index_kind": index.kind,
        "index_reason": index.reason,
        "index": index.to_dict(),
        "last_ingest": max((d.ingested_at for d in docs.values()), default=None),
    }


def describe_windows(store: Store, settings: Settings) -> str:
    """Whether chunks rank by their best window too (RAG_DENSE_WINDOWS), and why not where asked for."""
    if not settings.dense_windows:
        return "off (RAG_DENSE_WINDOWS=0)"
    if not store.has_windows:
        return (f"RAG_DENSE_WINDOWS={settings.dense_windows}, unused: this store was created before window vectors "
                "(ingest into a new one)")
    return (f"{settings.dense_windows}-token windows: chunks rank by the mean of their cosine and their best "
            "window's (chunks ingested before it was set, until re-ingested, by their own)")


def describe_fusion(settings: Settings) -> str:
    if settings.hybrid_fusion == "rrf":
        return f"rrf (k={settings.rrf_k}, {settings.hybrid_prefetch} candidates a side)"
    feedback = (f", feedback from the best {settings.hybrid_feedback_hits} dense hits x "
                f"{settings.hybrid_feedback_weight:g}" if settings.hybrid_feedback_hits and settings.hybrid_feedback_weight
                else "")
    return (f"score (cosine + {settings.hybrid_sparse_weight:g} x BM25 / best BM25, "
            f"{settings.hybrid_prefetch} candidates a side{feedback})")
