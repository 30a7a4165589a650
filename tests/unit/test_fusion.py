"""Score fusion (rag/retrieval/fusion.py): cosine + weight x BM25 / the query's best BM25, by hand."""

from __future__ import annotations

import pytest

from rag.index.store import Hit
import numpy as np

from rag.retrieval.fusion import feedback_vector, score_fusion


def hit(i: str, score: float, similarity: float | None = None) -> Hit:
    return Hit(i, score, {"path": i}, similarity)


def test_fused_scores_by_hand():
    dense = [hit("a", 0.80, 0.80), hit("b", 0.70, 0.70), hit("c", 0.60, 0.60)]
    sparse = [hit("c", 12.0, 0.60), hit("d", 6.0, 0.30), hit("b", 3.0, 0.70)]
    got = score_fusion(dense, sparse, 0.5, 10)
    expected = {"c": 0.60 + 0.5 * 1.0,   # best BM25
                "a": 0.80 + 0.5 * 0.25,  # dense only: the weakest BM25 on the list (3/12)
                "b": 0.70 + 0.5 * 0.25,
                "d": 0.30 + 0.5 * 0.5}   # sparse only: its own cosine
    assert [h.id for h in got] == ["c", "a", "b", "d"]
    assert {h.id: h.score for h in got} == pytest.approx(expected)
    # similarity stays the cosine (the relevance threshold reads it), the payload the hit's own
    assert {h.id: h.similarity for h in got} == pytest.approx({"a": 0.8, "b": 0.7, "c": 0.6, "d": 0.3})
    assert got[0].payload == {"path": "c"}
    assert [h.id for h in score_fusion(dense, sparse, 0.5, 2)] == ["c", "a"]


def test_weight_zero_is_dense_order_and_no_keyword_hits_change_nothing():
    dense = [hit("a", 0.8, 0.8), hit("b", 0.7, 0.7)]
    sparse = [hit("b", 9.0, 0.7), hit("z", 8.0, 0.1)]
    assert [h.id for h in score_fusion(dense, sparse, 0.0, 3)] == ["a", "b", "z"]
    # A query none of whose words is in the index: the dense order, unchanged scores.
    got = score_fusion(dense, [], 0.5, 3)
    assert [(h.id, h.score) for h in got] == [("a", 0.8), ("b", 0.7)]
    # Only keyword hits (a filter left the dense side empty): ranked by BM25 among equal cosines.
    assert [h.id for h in score_fusion([], [hit("x", 2.0, 0.5), hit("y", 4.0, 0.5)], 0.5, 3)] == ["y", "x"]


def test_feedback_ranks_by_its_cosines_and_reports_the_questions():
    dense = [hit("a", 0.80, 0.80), hit("b", 0.70, 0.70)]
    sparse = [hit("b", 4.0, 0.70), hit("c", 2.0, 0.50)]
    got = score_fusion(dense, sparse, 0.5, 10, ranking_cosine={"a": 0.60, "b": 0.75})
    # b: 0.75 + 0.5, a: 0.60 + 0.5 x 0.5 (the list's weakest), c: no feedback cosine, its own 0.50 + 0.25
    assert [h.id for h in got] == ["b", "a", "c"]
    assert {h.id: h.score for h in got} == pytest.approx({"b": 1.25, "a": 0.85, "c": 0.75})
    assert {h.id: h.similarity for h in got} == pytest.approx({"a": 0.8, "b": 0.7, "c": 0.5})


def test_feedback_vector_moves_toward_the_hits_and_stays_unit_length():
    q = np.array([1.0, 0.0, 0.0])
    hits = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    moved = feedback_vector(q, hits, 0.5)
    assert np.linalg.norm(moved) == pytest.approx(1.0)
    assert moved == pytest.approx(np.array([1.0, 0.25, 0.25]) / np.linalg.norm([1.0, 0.25, 0.25]))
    assert feedback_vector(q, hits, 0.0) == pytest.approx(q)
    assert feedback_vector(q, [], 0.5) == pytest.approx(q)
