"""Window vectors end to end (RAG_DENSE_WINDOWS): ingest stores them, the retriever ranks by them, the reported
cosine stays the chunk's own, and a store that cannot hold them is refused with what to do. Real model, real
embedded Qdrant, the sample documents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT, SAMPLE_DOCS, edge_store_before_windows
from ingest import ingest
from rag.errors import StoreConfigError
from rag.index.store import open_store
from rag.ops.status import index_info
from rag.retrieval.retriever import Retriever
from rag.settings import Settings

QUESTIONS = json.loads((ROOT / "tests" / "data" / "sample_questions.json").read_text())
WINDOW = 48  # small enough that most sample chunks get several windows


@pytest.fixture(scope="module")
def windowed(tmp_path_factory, embedder):
    settings = Settings(data_dir=tmp_path_factory.mktemp("windows"), dense_windows=WINDOW)
    report = ingest([SAMPLE_DOCS], settings, embedder=embedder)
    assert report.added == 5 and not report.failed
    store = open_store(settings)
    yield settings, store
    store.close()


def _chunks(store):
    return [h for path in sorted(store.chunk_paths()) for h in store.chunks_of(path)]


def test_every_chunk_longer_than_a_window_has_windows(windowed, embedder):
    settings, store = windowed
    chunks = _chunks(store)
    probe = embedder.embed_query("vacation days").tolist()
    have = set(store.window_cosines(probe, [h.id for h in chunks]))
    longer = {h.id for h in chunks if embedder.count_tokens(h.payload["text"]) > WINDOW}
    assert have == longer and 0 < len(longer) < len(chunks)
    assert "48-token windows" in index_info(store, settings)["windows"]


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_ranked_by_the_blend_reporting_the_chunk_s_own_cosine(windowed, embedder, mode):
    settings, store = windowed
    r = Retriever.from_settings(settings, store, embedder, top_k=8, min_score=-1, reranker=None, mode=mode)
    assert r.windows
    question = "How many vacation days do employees get per year?"
    vector = embedder.embed_query(question).tolist()
    passages = r.retrieve(question).passages
    ids = [p.id for p in passages]
    own, best = store.cosines(vector, ids), store.window_cosines(vector, ids)
    for p in passages:
        assert p.score == pytest.approx(own[p.id], abs=1e-5)  # what RAG_MIN_SCORE judges: unchanged
    if mode == "dense":
        blend = [(own[i] + best[i]) / 2 if i in best else own[i] for i in ids]
        assert blend == sorted(blend, reverse=True)
        plain = Retriever.from_settings(settings, store, embedder, top_k=8, min_score=-1, reranker=None,
                                        mode=mode, windows=False).retrieve(question).passages
        assert [p.score for p in plain] == sorted([p.score for p in plain], reverse=True)
        assert [p.id for p in plain] != ids  # the windows changed the order of the same question's chunks


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_sample_questions_still_find_their_source(windowed, embedder, mode):
    settings, store = windowed
    r = Retriever.from_settings(settings, store, embedder, top_k=5, reranker=None, mode=mode)
    hits = sum(any(p.source == q["file"] and (q["page"] is None or p.page_start <= q["page"] <= p.page_end)
                   for p in r.retrieve(q["question"]).passages) for q in QUESTIONS)
    assert hits / len(QUESTIONS) >= 0.85, hits


def test_turning_windows_off_and_on_re_ingests(tmp_path, embedder):
    settings = Settings(data_dir=tmp_path / "data", dense_windows=WINDOW)
    assert ingest([SAMPLE_DOCS], settings, embedder=embedder).added == 5
    off = settings.model_copy(update={"dense_windows": 0})
    assert ingest([SAMPLE_DOCS], off, embedder=embedder).updated == 5
    assert ingest([SAMPLE_DOCS], off, embedder=embedder).unchanged == 5
    with open_store(off) as store:
        ids = [h.id for h in _chunks(store)]
        assert store.has_windows and store.window_cosines(np.ones(embedder.dimension).tolist(), ids) == {}


def test_a_store_created_before_windows_is_refused_with_what_to_do(tmp_path, embedder):
    settings = Settings(data_dir=tmp_path / "data", dense_windows=96)
    edge_store_before_windows(settings.store_dir, embedder.dimension, embedder.model_name)
    with pytest.raises(StoreConfigError, match="created before them.*new store.*unset RAG_DENSE_WINDOWS"):
        ingest([SAMPLE_DOCS], settings, embedder=embedder)
    with open_store(settings) as store:
        assert store.count_chunks() == 0 and "unused" in index_info(store, settings)["windows"]
