"""One conformance suite for every store backend (as Haystack tests each DocumentStore with shared mixins).

Backends: the embedded qdrant-edge store, and the Qdrant server store running against qdrant-client's local
mode (same client API as a server; no server needed here).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rag.errors import StoreConfigError, StoreLockedError
from rag.index.store import ChunkPoint, DocumentRecord, SearchFilter, WriterRecord, chunk_id
from rag.index.store.base import META_ID
from rag.index.store.edge import EdgeStore
from rag.index.store.server import QdrantServerStore

from conftest import edge_store_before_windows

DIM = 8


@pytest.fixture(params=["edge", "qdrant-client-local"])
def store(request, tmp_path):
    if request.param == "edge":
        s = EdgeStore(tmp_path / "edge")
    else:
        s = QdrantServerStore("test", path=str(tmp_path / "qc"))
    s.ensure_ready(DIM, "model-a")
    yield s
    s.close()


def _vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


def _points(path: str, n: int, groups=("staff",), sha="s1") -> list[ChunkPoint]:
    return [ChunkPoint(chunk_id(path, sha, i), _vec(hash((path, i)) % 10_000),
                       {"path": path, "chunk_index": i, "text": f"{path} {i}", "groups": list(groups),
                        "doc_sha256": sha}) for i in range(n)]


def test_upsert_count_and_idempotence(store):
    store.upsert_chunks(_points("/a.txt", 5))
    store.upsert_chunks(_points("/a.txt", 5))  # same ids: no duplicates
    store.upsert_chunks(_points("/b.txt", 3))
    assert store.count_chunks() == 8
    assert store.count_chunks("/a.txt") == 5
    assert store.chunk_paths() == {"/a.txt": 5, "/b.txt": 3}


def test_search_returns_nearest_with_payload(store):
    pts = _points("/a.txt", 20)
    store.upsert_chunks(pts)
    hits = store.search(pts[7].vector, 3)
    assert hits[0].id == pts[7].id
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload["chunk_index"] == 7
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score


def test_filters_apply_inside_the_query(store):
    store.upsert_chunks(_points("/public.txt", 10, groups=("everyone",)))
    store.upsert_chunks(_points("/secret.txt", 10, groups=("hr",)))
    probe = _points("/secret.txt", 10)[3].vector
    hits = store.search(probe, 5, SearchFilter(groups_any=("everyone",)))
    assert len(hits) == 5 and all(h.payload["path"] == "/public.txt" for h in hits)
    hits = store.search(probe, 50, SearchFilter(paths=("/secret.txt",)))
    assert len(hits) == 10 and {h.payload["path"] for h in hits} == {"/secret.txt"}
    assert store.search(probe, 5, SearchFilter(groups_any=("nobody",))) == []


def test_delete_by_path(store):
    store.upsert_chunks(_points("/a.txt", 4))
    store.upsert_chunks(_points("/b.txt", 4))
    store.delete_chunks("/a.txt")
    assert store.count_chunks() == 4 and store.count_chunks("/a.txt") == 0


def test_delete_chunks_of_writers_spares_the_others(store):
    def by(writer: str | None, idx: range) -> list[ChunkPoint]:
        pts = _points("/a.txt", 9)
        return [ChunkPoint(p.id, p.vector, {**p.payload, **({"writer": writer} if writer else {})})
                for p in pts if p.payload["chunk_index"] in idx]

    store.upsert_chunks(by("dead", range(0, 3)) + by("alive", range(3, 6)) + by(None, range(6, 9)))
    store.upsert_chunks(_points("/b.txt", 2))  # no writer either, but another path
    store.delete_chunks_of_writers("/a.txt", ["dead", "gone"])
    assert sorted(h.payload["chunk_index"] for h in store.chunks_of("/a.txt")) == [3, 4, 5]
    store.delete_chunks_of_writers("/a.txt", [])  # only chunks without a writer: none left here
    assert store.count_chunks("/a.txt") == 3 and store.count_chunks("/b.txt") == 2


def test_writer_records(store):
    w = WriterRecord(id="w1", host="h", pid=7, scope="s", started=1.0, expires=2.0)
    store.put_writer(w)
    store.put_writer(WriterRecord(id="w2", host="h", pid=8, scope="s", started=1.0, expires=3.0))
    w.expires = 0.0
    store.put_writer(w)  # a refresh replaces, never adds
    assert sorted(store.writers(), key=lambda r: r.id) == [w, WriterRecord("w2", "h", 8, "s", 1.0, 3.0)]
    assert store.documents() == {}  # writers are not documents
    store.delete_writer("w1")
    assert [r.id for r in store.writers()] == ["w2"]


def test_chunks_of_in_order_and_filtered(store):
    store.upsert_chunks(list(reversed(_points("/a.txt", 6, groups=("hr",)))))
    assert [h.payload["chunk_index"] for h in store.chunks_of("/a.txt")] == list(range(6))
    assert store.chunks_of("/a.txt", groups_any=["staff"]) == []


def test_registry_roundtrip(store):
    rec = DocumentRecord(path="/a.txt", sha256="abc", chunks=3, config_sig="sig", size=10, pages=2,
                         title="A", groups=["hr"], ingested_at=1.5)
    store.put_document(rec)
    assert store.get_document("/a.txt") == rec
    assert store.documents() == {"/a.txt": rec}
    store.delete_document("/a.txt")
    assert store.get_document("/a.txt") is None and store.documents() == {}
    assert store.meta()["embedding_model"] == "model-a"  # the meta record is not a document


def test_set_groups_without_reembedding(store):
    pts = _points("/a.txt", 3, groups=("hr",))
    store.upsert_chunks(pts)
    store.put_document(DocumentRecord(path="/a.txt", sha256="s1", chunks=3, config_sig="x", groups=["hr"]))
    store.set_groups("/a.txt", ["staff", "hr"])
    hits = store.search(pts[0].vector, 1, SearchFilter(groups_any=("staff",)))
    assert hits and hits[0].id == pts[0].id
    assert store.get_document("/a.txt").groups == ["staff", "hr"]
    why = {"groups": ["finance"], "decided_by": "rule", "line": 4, "rule": ["finance/**"]}
    store.set_groups("/a.txt", ["finance"], access=why)
    assert store.get_document("/a.txt").access == why
    assert not store.search(pts[0].vector, 3, SearchFilter(groups_any=("staff", "hr")))


def test_other_embedding_model_is_refused(store):
    with pytest.raises(StoreConfigError, match="model-a"):
        store.ensure_ready(DIM, "model-b")
    with pytest.raises(StoreConfigError):
        store.ensure_ready(DIM + 1, "model-a")


def test_reopen_keeps_data(tmp_path):
    s = EdgeStore(tmp_path / "e")
    s.ensure_ready(DIM, "m")
    s.upsert_chunks(_points("/a.txt", 7))
    s.put_document(DocumentRecord(path="/a.txt", sha256="s1", chunks=7, config_sig="x"))
    s.close()
    s = EdgeStore(tmp_path / "e")
    assert s.count_chunks() == 7 and list(s.documents()) == ["/a.txt"]
    s.close()


def test_edge_store_is_locked_against_a_second_process(tmp_path):
    s = EdgeStore(tmp_path / "e")
    s.ensure_ready(DIM, "m")
    code = ("import sys\nfrom rag.index.store.edge import EdgeStore\nfrom rag.errors import StoreLockedError\n"
            f"try:\n    EdgeStore({str(tmp_path / 'e')!r})\nexcept StoreLockedError as e:\n"
            "    print(e); sys.exit(3)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    assert "open in another process" in res.stdout and "RAG_QDRANT_URL" in res.stdout
    s.close()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_edge_store_is_locked_in_process(tmp_path):
    s = EdgeStore(tmp_path / "e")
    # Not "open in another process (pid <our own>)": the fix is in this program.
    with pytest.raises(StoreLockedError, match="already open in this process.*with_settings"):
        EdgeStore(tmp_path / "e")
    s.close()


def test_edge_store_closed_from_another_thread_is_unlocked(tmp_path):
    # A server opens the store in a request thread and closes it from another (Streamlit's cache release).
    import threading

    opened: list[EdgeStore] = []
    t = threading.Thread(target=lambda: opened.append(EdgeStore(tmp_path / "e")))
    t.start()
    t.join()
    opened[0].close()
    EdgeStore(tmp_path / "e").close()


# --- hybrid retrieval: BM25 sparse vectors next to the dense ones, fused inside Qdrant ---------------------

_WORDS = ["budget", "meeting", "travel", "office", "report", "laptop", "policy", "review", "team", "customer"]


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(_WORDS, size=12)) for _ in range(n)]
    texts[13] += " the zeppelin hangar key is kept at reception"
    return texts


def _hybrid_points(n: int = 60) -> list[ChunkPoint]:
    from rag.index.sparse import Bm25Encoder

    texts = _texts(n)
    sparse = Bm25Encoder(avg_len=12).embed_documents(texts)
    return [ChunkPoint(chunk_id("/h.txt", "s", i), _vec(1000 + i),
                       {"path": "/h.txt", "chunk_index": i, "text": t,
                        "groups": ["secret"] if i == 13 else ["staff"], "doc_sha256": "s"}, sparse[i])
            for i, t in enumerate(texts)]


def test_sparse_and_hybrid_find_a_keyword_the_dense_vector_misses(store):
    from rag.index.sparse import Bm25Encoder

    pts = _hybrid_points()
    store.upsert_chunks(pts)
    assert store.has_sparse
    q_dense, q_sparse = _vec(5), Bm25Encoder(avg_len=12).embed_query("where is the zeppelin key?")
    dense = store.query(q_dense, 5, mode="dense")
    assert pts[13].id not in [h.id for h in dense]
    sparse = store.query(q_dense, 5, sparse=q_sparse, mode="sparse")
    assert sparse[0].id == pts[13].id and sparse[0].score > 0
    hybrid = store.query(q_dense, 5, sparse=q_sparse, mode="hybrid", prefetch=20)
    assert pts[13].id in [h.id for h in hybrid[:2]]
    for h in dense + sparse + hybrid:  # every hit carries its cosine to the query, whatever ranked it
        assert h.similarity == pytest.approx(float(np.dot(q_dense, pts[h.payload["chunk_index"]].vector)), abs=1e-4)


def test_hybrid_and_sparse_apply_the_group_filter_inside_the_query(store):
    from rag.index.sparse import Bm25Encoder

    store.upsert_chunks(_hybrid_points())
    q_sparse = Bm25Encoder(avg_len=12).embed_query("zeppelin hangar key budget")
    for mode in ("sparse", "hybrid"):
        hits = store.query(_vec(5), 60, SearchFilter(groups_any=("staff",)), sparse=q_sparse, mode=mode)
        assert hits and all(h.payload["groups"] == ["staff"] for h in hits), mode
        # with the group, the only chunk containing the keywords comes first
        top = store.query(_vec(5), 3, SearchFilter(groups_any=("secret",)), sparse=q_sparse, mode=mode)
        assert [h.payload["chunk_index"] for h in top] == [13], mode


def test_candidates_without_payloads_then_the_payloads_of_the_kept(store):
    """Hybrid score fusion reads ids and scores of many candidates, then payloads of the few kept."""
    from rag.index.sparse import Bm25Encoder

    pts = _hybrid_points()
    store.upsert_chunks(pts)
    q_dense, q_sparse = _vec(5), Bm25Encoder(avg_len=12).embed_query("where is the zeppelin key?")
    for mode in ("dense", "sparse", "hybrid"):
        bare = store.query(q_dense, 10, sparse=q_sparse, mode=mode, payload=False)
        full = store.query(q_dense, 10, sparse=q_sparse, mode=mode)
        # The same hits; RRF gives ties, whose order (and which of them make the cut) the engine does not fix.
        assert [h.score for h in bare] == [h.score for h in full], mode
        by_id = {h.id: (h.score, h.similarity) for h in full}
        assert all(by_id[h.id] == (h.score, h.similarity) for h in bare if h.id in by_id), mode
        assert len({h.id for h in bare} & set(by_id)) >= len(full) - 2, mode
        assert all(h.payload == {} for h in bare), mode
    by_id = {p.id: p.payload for p in pts}
    ids = [pts[i].id for i in (13, 2, 40)]
    assert store.payloads(ids) == {i: by_id[i] for i in ids}
    assert store.payloads([*ids, chunk_id("/nowhere.txt", "s", 0)]) == {i: by_id[i] for i in ids}
    assert store.payloads([]) == {}


@pytest.mark.attack("evidence", "asks the store for the text of a chunk it may not read, by the chunk's id (ids are not "
                    "secret: they derive from the path)")
def test_payloads_by_id_apply_the_group_filter(store):
    """Payloads are read by id after the filtered search; the filter is applied again there, so a caller holding
    an id gets nothing outside its groups."""
    pts = _hybrid_points()
    store.upsert_chunks(pts)
    secret, public = pts[13].id, pts[12].id
    got = store.payloads([secret, public], SearchFilter(groups_any=("staff",)))
    assert set(got) == {public}
    assert store.payloads([secret], SearchFilter(groups_any=("secret",)))[secret]["chunk_index"] == 13


@pytest.mark.attack("evidence", "asks the store how close a chunk it may not read is to a vector of its choosing, "
                    "by the chunk's id (a similarity oracle on text outside its groups)")
def test_cosines_by_id_are_exact_and_apply_the_group_filter(store):
    """Pseudo-relevance feedback re-scores candidates by id; the filter is applied there too."""
    pts = _hybrid_points()
    store.upsert_chunks(pts)
    probe = _vec(7)
    got = store.cosines(probe, [p.id for p in pts[10:15]], SearchFilter(groups_any=("staff",)))
    assert set(got) == {p.id for p in pts[10:15]} - {pts[13].id}
    for p in pts[10:15]:
        if p.id in got:
            assert got[p.id] == pytest.approx(float(np.dot(probe, p.vector)), abs=1e-5)
    assert set(store.cosines(probe, [pts[13].id], SearchFilter(groups_any=("secret",)))) == {pts[13].id}
    assert store.cosines(probe, []) == {}


def test_a_store_built_before_sparse_vectors_falls_back_to_dense(store):
    pts = _hybrid_points()
    store.upsert_chunks(pts)
    meta = store.meta()
    meta.pop("sparse")
    store._put_registry(META_ID, meta)  # what a store made before hybrid retrieval holds
    store._has_sparse = None
    assert not store.has_sparse
    assert [h.id for h in store.query(_vec(5), 5, mode="hybrid")] == [h.id for h in store.query(_vec(5), 5)]


def _windowed(path: str, n: int, groups=("staff",)) -> list[ChunkPoint]:
    """Chunks of which the even ones carry three window vectors, the odd ones none (short chunks)."""
    return [ChunkPoint(p.id, p.vector, p.payload | {"groups": list(groups)}, None,
                       [_vec(1000 + 10 * i + j) for j in range(3)] if i % 2 == 0 else None)
            for i, p in enumerate(_points(path, n))]


def test_window_cosines_score_the_best_window_and_leave_out_chunks_without(store):
    assert store.has_windows
    pts = _windowed("/w.txt", 6)
    store.upsert_chunks(pts)
    probe = _vec(7)
    got = store.window_cosines(probe, [p.id for p in pts])
    assert set(got) == {p.id for p in pts[::2]}
    for p in pts[::2]:
        assert got[p.id] == pytest.approx(max(float(np.dot(probe, w)) for w in p.windows), abs=1e-5)
    # The chunk's own vector is searched and scored as before: windows are extra.
    assert store.search(pts[2].vector, 1)[0].id == pts[2].id
    assert store.cosines(probe, [pts[2].id])[pts[2].id] == pytest.approx(float(np.dot(probe, pts[2].vector)),
                                                                         abs=1e-5)
    assert store.window_cosines(probe, []) == {}


@pytest.mark.attack("evidence", "asks for the best-window similarity of a chunk it may not read, by the chunk's id "
                    "(a similarity oracle on parts of a text outside its groups)")
def test_window_cosines_apply_the_group_filter(store):
    public_points, secret_points = _windowed("/public.txt", 4), _windowed("/secret.txt", 4, groups=("hr",))
    store.upsert_chunks(public_points + secret_points)
    public, secret = [p.id for p in public_points], [p.id for p in secret_points]
    got = store.window_cosines(_vec(3), secret + public, SearchFilter(groups_any=("staff",)))
    assert set(got) == {public[0], public[2]}
    assert set(store.window_cosines(_vec(3), secret, SearchFilter(groups_any=("hr",)))) == {secret[0], secret[2]}


def test_windows_survive_a_reopen_and_a_change_of_index_kind(tmp_path):
    from rag.index.store.base import IndexOptions

    s = EdgeStore(tmp_path / "e")
    s.ensure_ready(DIM, "m")
    pts = _windowed("/a.txt", 6)
    s.upsert_chunks(pts)
    s.close()
    # Reopened as each kind: the shard is reloaded with the kind's config, which must name the windows too.
    for kind in ("hnsw", "hnsw-int8", "exact"):
        s = EdgeStore(tmp_path / "e", IndexOptions(kind=kind))
        try:
            assert s.index_state().kind == kind and s.has_windows
            s.upsert_chunks(_windowed(f"/{kind}.txt", 2))
            s.build_index()
            got = s.window_cosines(_vec(1), [p.id for p in pts])
            assert set(got) == {p.id for p in pts[::2]}
            for p in pts[::2]:
                assert got[p.id] == pytest.approx(max(float(np.dot(_vec(1), w)) for w in p.windows), abs=1e-5)
        finally:
            s.close()


def test_a_store_created_before_window_vectors_has_none(tmp_path):
    edge_store_before_windows(tmp_path / "old", DIM, "m")
    s = EdgeStore(tmp_path / "old")
    try:
        assert not s.has_windows
        pts = _windowed("/a.txt", 4)
        s.upsert_chunks(pts)  # the windows are dropped, the chunks stored
        assert s.count_chunks() == 4 and s.window_cosines(_vec(1), [p.id for p in pts]) == {}
    finally:
        s.close()
