"""RAG_EMBEDDING_URL against a real embeddings server: vLLM's CPU build serving the packaged all-MiniLM-L6-v2 folder
(``vllm_embedding_server``). Its vectors are the local model's (same weights, float32), so an index built by
either backend answers queries embedded by the other; an index built with another model or dimension is refused."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from ingest import ingest
from rag.errors import EmbeddingModelError, StoreConfigError
from rag.index.embeddings import get_embedder
from rag.index.remote_embeddings import RemoteEmbedder
from rag.index.store import open_store
from rag.llm.local import vllm
from rag.retrieval.retriever import Retriever
from rag.settings import Settings

from conftest import SAMPLE_DOCS

QUESTIONS = ["How many vacation days do employees get?", "How do I report a phishing email?",
             "What should I bring on my first day?", "Is there parking at the office?"]


def _remote(url: str, **kw) -> Settings:
    return Settings(embedding_url=url, **kw)


def test_ingest_and_search_through_the_server_match_the_local_model(vllm_embedding_server, tmp_path):
    settings = _remote(vllm_embedding_server, data_dir=tmp_path / "data")
    remote = get_embedder(settings)
    assert isinstance(remote, RemoteEmbedder)
    # Learned from the server: the name and size, and the window (max_model_len 256 minus [CLS] and [SEP]).
    assert (remote.model_name, remote.dimension, remote.max_tokens) == ("all-MiniLM-L6-v2", 384, 254)
    report = ingest([SAMPLE_DOCS], settings)
    assert report.added == 5 and not report.failed, report

    local = get_embedder(Settings(embedding_backend="torch"))  # fp32, as the server computes
    store = open_store(settings)
    try:
        assert store.meta()["embedding_model"] == "all-MiniLM-L6-v2" and store.meta()["dimension"] == 384
        hits = [h for path in store.chunk_paths() for h in store.chunks_of(path)]
        assert len(hits) > 5
        stored = store.vectors([h.id for h in hits])
        texts = [h.payload["text"] for h in hits]
        mine = local.embed_documents(texts)
        cos = [float(np.dot(stored[h.id], mine[i])) for i, h in enumerate(hits)]
        assert min(cos) >= 0.99, sorted(cos)[:5]
        # Token-exact chunks by the server's own count: none is truncated when it embeds it.
        root = vllm_embedding_server.removesuffix("/v1")
        for text in texts:
            served = httpx.post(root + "/tokenize", json={"model": remote.model_name, "prompt": text,
                                                           "add_special_tokens": False}).json()
            assert served["count"] <= remote.max_tokens
        for q in QUESTIONS:
            assert float(np.dot(remote.embed_query(q), local.embed_query(q))) >= 0.99

        found = Retriever.from_settings(settings, store, remote, mode="dense", reranker=None).retrieve(QUESTIONS[0])
        assert found.passages and found.passages[0].source == "employee-handbook.pdf"
    finally:
        store.close()


def test_an_index_built_locally_is_queried_through_the_server(vllm_embedding_server, sample_index):
    """Same model name and dimension: the collections are interchangeable between the backends."""
    settings = sample_index.model_copy(update={"embedding_url": vllm_embedding_server})
    store = open_store(settings)
    try:
        found = Retriever.from_settings(settings, store, get_embedder(settings), reranker=None).retrieve(QUESTIONS[1])
        assert found.passages[0].source == "it-security.md"
    finally:
        store.close()


@pytest.mark.parametrize("model,dimension", [("all-mpnet-base-v2", 768), ("bge-small-en-v1.5", 384)])
def test_an_index_of_another_model_or_dimension_is_refused(vllm_embedding_server, tmp_path, model, dimension):
    settings = _remote(vllm_embedding_server, data_dir=tmp_path / "data")
    store = open_store(settings)
    try:
        store.ensure_ready(dimension, model)  # a real store, as an ingest with that model leaves it
        with pytest.raises(StoreConfigError, match=rf"built with embedding model '{model}' \({dimension}.*"
                                                   rf"RAG_EMBEDDING_MODEL={model}"):
            Retriever.from_settings(settings, store, get_embedder(settings), reranker=None)
    finally:
        store.close()
    with pytest.raises(StoreConfigError, match="all-MiniLM-L6-v2"):
        ingest([SAMPLE_DOCS / "office-faq.txt"], settings)


def test_a_model_the_server_does_not_serve_is_named_with_what_it_serves(vllm_embedding_server):
    with pytest.raises(EmbeddingModelError, match="does not serve 'e5-small'; it serves 'all-MiniLM-L6-v2'"):
        get_embedder(_remote(vllm_embedding_server, embedding_model="e5-small"))


def test_a_tokenizer_other_than_the_servers_is_refused(vllm_embedding_server):
    """The demo LLM's tokenizer (SmolLM2, BPE) cuts text differently from the served model's (WordPiece)."""
    other = vllm.ensure_model(lambda line: None)
    with pytest.raises(EmbeddingModelError, match="RAG_EMBEDDING_TOKENIZER"):
        get_embedder(_remote(vllm_embedding_server, embedding_tokenizer=str(other)))
