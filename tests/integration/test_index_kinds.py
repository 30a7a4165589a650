"""Index kinds of the embedded store (exact, HNSW, HNSW over int8): chosen by size or setting, switched on an
existing store from its stored vectors (never a re-ingest), permission filters kept inside an HNSW search.

Real qdrant-edge shards throughout. ``threshold_kb=1`` makes the engine build a graph over a few hundred points
and search through it (by default a graph starts at ~6,500 points); the figures at scale are in bench/README.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rag.index.store import ChunkPoint, IndexOptions, SearchFilter, chunk_id
from rag.index.store.edge import EdgeStore

DIM = 32


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _load(store: EdgeStore, vecs: np.ndarray, start: int = 0) -> list[str]:
    points = [ChunkPoint(chunk_id(f"/d{i // 10}", "s", i % 10), vecs[i - start].tolist(),
                         {"path": f"/d{i // 10}", "chunk_index": i % 10, "text": f"chunk {i}",
                          "groups": ["hr"] if i % 4 == 0 else ["staff"]})
              for i in range(start, start + len(vecs))]
    store.upsert_chunks(points)
    return [p.id for p in points]


def _exact_top(vecs: np.ndarray, ids: list[str], q: np.ndarray, k: int, mask: np.ndarray | None = None) -> set[str]:
    sims = vecs @ q
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    return {ids[i] for i in np.argsort(-sims)[:k]}


def test_kind_follows_the_chunk_count_and_switches_without_reingest(tmp_path):
    opts = IndexOptions(kind="auto", hnsw_from=300, int8_from=600, threshold_kb=1)
    vecs = _vectors(700)
    store = EdgeStore(tmp_path / "s", opts)
    store.ensure_ready(DIM, "m")
    ids = _load(store, vecs[:200])
    state = store.build_index()
    assert (state.kind, state.points, state.indexed) == ("exact", 200, 0)
    assert "200 chunks < RAG_INDEX_HNSW_FROM=300" in state.reason

    ids += _load(store, vecs[200:400], start=200)
    assert store.index_state().indexed == 0  # nothing is built behind the caller's back
    state = store.build_index()
    assert state.kind == "hnsw" and state.indexed == 400 and not state.note
    ids += _load(store, vecs[400:], start=400)
    state = store.build_index()
    assert state.kind == "hnsw-int8" and state.points == 700 and state.indexed == 700
    top = store.search(vecs[123].tolist(), 5)
    assert top[0].id == ids[123]
    store.close()

    # A setting overrides the size, on the same files: the vectors are neither re-sent nor re-embedded.
    store = EdgeStore(tmp_path / "s", IndexOptions(kind="exact", threshold_kb=1))
    state = store.index_state()
    assert (state.kind, state.reason, state.points) == ("exact", "RAG_INDEX_KIND=exact", 700)
    q = _vectors(1, seed=7)[0]
    assert {h.id for h in store.search(q.tolist(), 10)} == _exact_top(vecs, ids, q, 10)
    store.close()
    store = EdgeStore(tmp_path / "s", IndexOptions(kind="hnsw", threshold_kb=1))
    assert store.build_index().kind == "hnsw"
    assert store.count_chunks() == 700
    store.close()


@pytest.mark.parametrize("kind", ["hnsw", "hnsw-int8"])
def test_filtered_search_through_the_graph_returns_only_permitted_chunks(tmp_path, kind):
    n = 2000
    vecs = _vectors(n, seed=1)
    store = EdgeStore(tmp_path / "s", IndexOptions(kind=kind, threshold_kb=1))  # type: ignore[arg-type]
    store.ensure_ready(DIM, "m")
    ids = _load(store, vecs)
    assert store.build_index().indexed == n
    hr = np.array([i % 4 == 0 for i in range(n)])
    recall = []
    for q in _vectors(30, seed=2):
        for mode in ("dense", "hybrid"):
            hits = store.query(q.tolist(), 10, SearchFilter(groups_any=("hr",)), mode=mode, prefetch=50)
            assert hits and all(h.payload["groups"] == ["hr"] for h in hits)
        hits = store.search(q.tolist(), 10, SearchFilter(groups_any=("hr",)))
        recall.append(len({h.id for h in hits} & _exact_top(vecs, ids, q, 10, hr)) / 10)
        assert not store.search(q.tolist(), 10, SearchFilter(groups_any=("nobody",)))
    # The filter is applied while walking the graph (payload-aware), not after it: recall stays near exact.
    assert np.mean(recall) >= 0.9
    store.close()


def test_status_shows_the_kind_and_why(tmp_path):
    from rag.cli import app

    store = EdgeStore(tmp_path / "data" / "qdrant-edge" / "documents")
    store.ensure_ready(384, "sentence-transformers/all-MiniLM-L6-v2")
    _load_384 = np.random.default_rng(3).normal(size=(50, 384)).astype(np.float32)
    store.upsert_chunks([ChunkPoint(chunk_id("/a", "s", i), v.tolist(), {"path": "/a", "groups": ["staff"]})
                         for i, v in enumerate(_load_384)])
    store.close()
    env = {"RAG_DATA_DIR": str(tmp_path / "data"), "RAG_LLM_BASE_URL": "http://127.0.0.1:9/v1"}
    runner = CliRunner()
    info = json.loads(runner.invoke(app, ["status", "--json"], env=env).stdout)
    assert info["index_kind"] == "exact" and info["index_reason"] == "auto: 50 chunks < RAG_INDEX_HNSW_FROM=50,000"
    r = runner.invoke(app, ["status", "--json"], env=env | {"RAG_INDEX_KIND": "hnsw-int8"})
    state = json.loads(r.stdout)["index"]
    assert (state["kind"], state["reason"], state["points"], state["indexed"]) == (
        "hnsw-int8", "RAG_INDEX_KIND=hnsw-int8", 50, 0)
    assert "50 chunks outside the graph" in state["note"]
    r = runner.invoke(app, ["status"], env=env | {"RAG_INDEX_KIND": "hnsw"})
    assert "hnsw (RAG_INDEX_KIND=hnsw" in r.stdout


def test_qdrant_client_local_mode_says_it_searches_exactly(tmp_path):
    from rag.index.store.server import QdrantServerStore

    store = QdrantServerStore("t", path=str(tmp_path / "qc"), index=IndexOptions(kind="hnsw-int8"))
    store.ensure_ready(DIM, "m")
    _load(store, _vectors(20))  # type: ignore[arg-type]
    state = store.build_index()
    assert (state.kind, state.points) == ("exact", 20)
    assert "local mode has no HNSW" in state.reason
    store.close()
