"""Sparse (keyword) vectors for hybrid retrieval: BM25 term weights computed locally, no model download.

qdrant-edge ships a BM25 encoder; its token ids are murmur3 hashes (the Qdrant server's own BM25 uses the same),
so vectors made by one process are valid for a store written by another, embedded or server alike. A document
vector holds only the term-frequency part; the store's IDF modifier adds inverse document frequency at query
time, so adding documents never requires re-encoding the others. Queries weigh each distinct term 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import qdrant_edge as qe

from rag.settings import Settings


@dataclass(frozen=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __bool__(self) -> bool:
        return bool(self.indices)


class SparseEncoder(Protocol):
    #: What the weights depend on; a change means documents must be encoded again.
    signature: str

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]: ...

    def embed_query(self, text: str) -> SparseVector: ...


class Bm25Encoder:
    def __init__(self, *, avg_len: float = 256.0, language: str = "english", k: float = 1.2, b: float = 0.75) -> None:
        # English stopwords and Snowball stemming by default ("running" = "run"); the language names both.
        self._bm25 = qe.Bm25(qe.Bm25Config(avg_len=avg_len, language=language, k=k, b=b))
        self.signature = f"bm25:avg_len={avg_len:g}:k={k:g}:b={b:g}:{language}"

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        return [_ours(self._bm25.embed_document(t)) for t in texts]

    def embed_query(self, text: str) -> SparseVector:
        return _ours(self._bm25.embed_query(text))


def _ours(v: qe.SparseVector) -> SparseVector:
    return SparseVector(tuple(v.indices), tuple(v.values))


def get_sparse_encoder(settings: Settings) -> SparseEncoder:
    """BM25 with the settings' length normalisation (RAG_BM25_B, weaker than the textbook 0.75: see its comment in
    rag/settings.py and bench/README.md for the cross-validated figures)."""
    return Bm25Encoder(avg_len=settings.bm25_avg_len, language=settings.bm25_language, b=settings.bm25_b)
