"""LangChain's own standard tests (langchain-tests) against our retriever, on the ingested sample documents: a
developer composing chains can rely on it behaving like any LangChain retriever (``k`` in the constructor and
per call, invoke and ainvoke returning Documents)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from rag.retrieval.retriever import Retriever, StoreRetriever

from conftest import SAMPLE_DOCS


@functools.cache
def _retriever() -> Retriever:
    """sample_docs/ ingested once for this module (the standard tests build their retrievers in properties,
    where fixtures cannot reach), into a store this process keeps open."""
    from ingest import ingest
    from rag.index.embeddings import get_embedder
    from rag.index.store import open_store
    from rag.settings import Settings

    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="lc-standard-")))
    embedder = get_embedder(settings)
    store = open_store(settings)
    report = ingest([SAMPLE_DOCS], settings, store=store, embedder=embedder)
    assert report.added == 5
    # No relevance threshold: the tests ask for exactly k documents.
    return Retriever.from_settings(settings, store, embedder, min_score=-1.0, reranker=None)


class TestStoreRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return StoreRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"retriever": _retriever()}

    @property
    def retriever_query_example(self) -> str:
        return "How many vacation days do full-time employees get?"
