"""The local embedder: limits, prompts for e5/bge-style models, the int8 ONNX backend."""

from __future__ import annotations

import numpy as np
import pytest

from rag.index.embeddings import SentenceTransformerEmbedder, get_embedder
from rag.errors import EmbeddingModelError
from rag.settings import Settings


def test_packaged_model_offline(embedder):
    assert embedder.dimension == 384
    assert embedder.max_tokens == 256 - 2  # [CLS] and [SEP]
    v = embedder.embed_documents(["Lost badges are replaced at reception.", "x"])
    assert v.shape == (2, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_prompts_are_applied_and_counted():
    embedder = SentenceTransformerEmbedder(backend="torch")
    e5 = SentenceTransformerEmbedder(backend="torch", query_prompt="query: ", passage_prompt="passage: ")
    assert e5.max_tokens == embedder.max_tokens - embedder.count_tokens("passage: ")
    text = "Employees get thirty vacation days."
    assert np.allclose(e5.embed_documents([text])[0], embedder.embed_documents(["passage: " + text])[0], atol=1e-5)
    assert np.allclose(e5.embed_query(text), embedder.embed_query("query: " + text), atol=1e-5)


def test_token_offsets_cover_words(embedder):
    text = "Per-diem rates: Lisbon 140"
    offsets = embedder.token_offsets(text)
    assert len(offsets) == embedder.count_tokens(text)
    assert text[offsets[0][0]:offsets[0][1]] == "per" or text[offsets[0][0]:offsets[0][1]].lower() == "per"
    assert offsets[-1][1] == len(text)


def test_unknown_model_says_what_to_do(tmp_path):
    with pytest.raises(EmbeddingModelError, match="RAG_EMBEDDING_MODEL"):
        SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))


def test_embedder_is_shared_per_process(tmp_path):
    a = get_embedder(Settings(data_dir=tmp_path / "a"))
    b = get_embedder(Settings(data_dir=tmp_path / "a"))
    assert a is b


def test_default_backend_is_onnx_int8(embedder):
    assert Settings().embedding_backend == "onnx-int8" and embedder.backend == "onnx-int8"


def test_onnx_int8_backend_agrees_with_torch(tmp_path):
    embedder = SentenceTransformerEmbedder(backend="torch")
    onnx = SentenceTransformerEmbedder(backend="onnx-int8", models_dir=tmp_path / "models")
    texts = ["The travel policy allows economy class for flights under six hours.",
             "Lost badges are replaced at reception.", "Core hours are 10:00 to 15:00."]
    a, b = onnx.embed_documents(texts), embedder.embed_documents(texts)
    assert (a * b).sum(axis=1).min() > 0.97
    assert any((tmp_path / "models").rglob("model_q*int8_*.onnx"))
    # A query-side embedder's threads spin between operators (one question: the wake-up is the cost) ...
    def spinning(e):
        session = e._model.session  # onnxruntime's own (rag/index/onnx_model.py)
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(onnx) == "1"
    # ... an ingesting one's sleep instead (CPU time parsing can use). Exported once: it reuses the export, and
    # gives the same vectors.
    again = SentenceTransformerEmbedder(backend="onnx-int8", models_dir=tmp_path / "models", batch=True)
    assert spinning(again) == "0"
    assert np.allclose(again.embed_documents(texts), a, atol=1e-6)
