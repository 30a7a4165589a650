"""BM25 document weights (rag/index/sparse.py) against the formula by hand, and the settings that shape them."""

from __future__ import annotations

import pytest

from rag.index.sparse import Bm25Encoder, get_sparse_encoder
from rag.settings import Settings

K = 1.2


def weight(encoder, text: str, term: str) -> float:
    """The document weight of ``term`` (its only entry in a one-word query) in ``text``."""
    (tid,) = encoder.embed_query(term).indices
    v = encoder.embed_documents([text])[0]
    return dict(zip(v.indices, v.values, strict=True))[tid]


def chunk(n_terms: int) -> str:
    # "zeppelin" once plus distinct filler terms: n_terms BM25 terms in all (no stopwords, nothing stems together)
    return " ".join(["zeppelin"] + [f"x{i}" for i in range(n_terms - 1)])


@pytest.mark.parametrize("b", [0.0, 0.3, 0.75, 1.0])
@pytest.mark.parametrize("n_terms", [5, 20, 80])
def test_term_weight_is_the_bm25_formula(b, n_terms):
    enc = Bm25Encoder(avg_len=20, k=K, b=b)
    expected = (K + 1) / (1 + K * (1 - b + b * n_terms / 20))  # tf = 1
    assert weight(enc, chunk(n_terms), "zeppelin") == pytest.approx(expected, rel=1e-5)


def test_weaker_length_normalisation_penalises_long_chunks_less():
    short, long = chunk(10), chunk(200)
    ratio = {b: weight(Bm25Encoder(avg_len=100, b=b), long, "zeppelin")
             / weight(Bm25Encoder(avg_len=100, b=b), short, "zeppelin") for b in (0.0, 0.3, 0.75)}
    assert ratio[0.0] == pytest.approx(1.0)
    assert ratio[0.75] < ratio[0.3] < ratio[0.0]


def test_settings_shape_the_encoder_and_its_signature():
    """Every parameter is in the signature: a change of RAG_BM25_B or RAG_BM25_AVG_LEN re-encodes the documents
    (ingest compares it; tests/integration/test_pipeline.py checks the re-ingest)."""
    enc = get_sparse_encoder(Settings(bm25_b=0.0, bm25_avg_len=50))
    assert weight(enc, chunk(10), "zeppelin") == pytest.approx(weight(enc, chunk(200), "zeppelin"))
    sigs = {get_sparse_encoder(Settings(**kw)).signature
            for kw in ({}, {"bm25_b": 0.75}, {"bm25_avg_len": 256}, {"bm25_language": "german"})}
    assert len(sigs) == 4
    assert "b=0.75" in get_sparse_encoder(Settings(bm25_b=0.75)).signature
