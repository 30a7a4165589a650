"""Retrieval over the ingested sample handbook: real embeddings, real embedded Qdrant."""

from __future__ import annotations

import json

import pytest

from rag.retrieval.retriever import Retriever, StoreRetriever
from rag.index.store import open_store

from conftest import ROOT, rag_cmd

QUESTIONS = json.loads((ROOT / "tests" / "data" / "sample_questions.json").read_text())


@pytest.fixture(scope="module")
def indexed(sample_index):
    settings = sample_index
    store = open_store(settings)
    yield settings, store
    store.close()


def test_sample_questions_find_their_source(indexed, embedder):
    settings, store = indexed
    r = Retriever(store, embedder, top_k=5, min_score=settings.min_score)
    hits_at_5 = 0
    for q in QUESTIONS:
        found = r.retrieve(q["question"]).passages
        if any(p.source == q["file"] and (q["page"] is None or p.page_start <= q["page"] <= p.page_end)
               for p in found):
            hits_at_5 += 1
    assert hits_at_5 / len(QUESTIONS) >= 0.85, hits_at_5


def test_unrelated_question_finds_nothing_relevant(indexed, embedder):
    settings, store = indexed
    r = Retriever(store, embedder, min_score=settings.min_score)
    for q in ("What is the boiling point of tungsten?", "Who won the 1998 football world cup?"):
        found = r.retrieve(q)
        assert found.candidates > 0 and found.passages == [], [p.score for p in found.passages]


def test_group_filter_applies(indexed, embedder):
    _, store = indexed
    r = Retriever(store, embedder, top_k=5, min_score=-1)
    assert r.retrieve("vacation days", groups=["admins"]).passages  # ingested with the default group
    assert r.retrieve("vacation days", groups=["interns"]).passages == []


def test_langchain_retriever(indexed, embedder):
    _, store = indexed
    lc = StoreRetriever(retriever=Retriever(store, embedder, min_score=-1), k=5)
    docs = lc.invoke("What is the per-diem for Lisbon?")
    assert len(docs) == 5 and any(d.metadata["path"].endswith("employee-handbook.pdf") for d in docs)
    assert {"path", "page", "score", "section", "source"} <= set(docs[0].metadata)


def test_cli_search_json(tmp_path, docs):
    env = {"RAG_DATA_DIR": str(tmp_path / "d")}
    assert rag_cmd("ingest", str(docs), "-q", env=env).returncode == 0
    res = rag_cmd("search", "minimum password length", "--json", "-k", "3", env=env)
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)["results"]
    assert len(results) == 3 and set(results[0]) >= {"path", "page", "score", "snippet"}
    assert results[0]["path"].endswith("it-security.md") and "14 characters" in " ".join(
        r["snippet"] for r in results)


@pytest.mark.parametrize("mode", ["sparse", "hybrid"])
def test_keyword_modes_find_their_source_too(indexed, embedder, mode):
    settings, store = indexed
    assert store.has_sparse  # a store made by this version carries BM25 vectors
    r = Retriever.from_settings(settings.model_copy(update={"retrieval_mode": mode}), store, embedder, top_k=5)
    hits_at_5 = sum(
        any(p.source == q["file"] and (q["page"] is None or p.page_start <= q["page"] <= p.page_end)
            for p in r.retrieve(q["question"]).passages)
        for q in QUESTIONS)
    assert hits_at_5 / len(QUESTIONS) >= 0.75, hits_at_5
    # A product name the embedding model has never seen: the keyword side puts its chunk first.
    top = r.retrieve("Chronos").passages
    assert top and "Chronos" in top[0].text
    assert all(-1.0 <= p.score <= 1.0 for p in top)  # scores stay cosine similarities in every mode


def test_unrelated_question_is_refused_in_hybrid_mode_too(indexed, embedder):
    settings, store = indexed
    r = Retriever.from_settings(settings.model_copy(update={"retrieval_mode": "hybrid"}), store, embedder)
    assert r.retrieve("What is the boiling point of tungsten?").passages == []


def test_cli_search_modes(sample_index, tmp_path):
    import shutil

    shutil.copytree(sample_index.data_dir, tmp_path / "data")  # this module's fixture holds the original open
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    res = rag_cmd("search", "Chronos", "--mode", "sparse", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert "Chronos" in json.loads(res.stdout)["results"][0]["snippet"]
    bad = rag_cmd("search", "x", "--mode", "bm42", env=env)
    assert bad.returncode == 2 and "dense, sparse or hybrid" in bad.stderr


def test_feedback_reranks_hybrid_but_hits_report_the_questions_cosine(indexed, embedder):
    """Pseudo-relevance feedback (on by default in hybrid score fusion) changes the fused scores, never the cosine a
    passage reports, which RAG_MIN_SCORE judges and the UI shows."""
    settings, store = indexed
    hybrid = settings.model_copy(update={"retrieval_mode": "hybrid"})
    on = Retriever.from_settings(hybrid, store, embedder, top_k=8, min_score=-1)
    off = Retriever.from_settings(hybrid, store, embedder, top_k=8, min_score=-1, feedback_hits=0)
    assert on.feedback_hits == settings.hybrid_feedback_hits > 0 and on.feedback_weight > 0
    for q in QUESTIONS[:4]:
        vector = embedder.embed_query(q["question"]).tolist()
        sparse = on.sparse.embed_query(q["question"])
        fused_on = {h.id: h.score for h in on._search(vector, sparse, 8, None, "hybrid")}
        fused_off = {h.id: h.score for h in off._search(vector, sparse, 8, None, "hybrid")}
        shared = set(fused_on) & set(fused_off)
        assert shared and any(abs(fused_on[i] - fused_off[i]) > 1e-4 for i in shared)
        passages = on.retrieve(q["question"]).passages
        own = store.cosines(vector, [p.id for p in passages])
        assert {p.id: p.score for p in passages} == pytest.approx(own, abs=1e-5)
