"""`rag eval retrieval`: BEIR loading, trec_eval metrics, and a whole run through the real pipeline."""

from __future__ import annotations

import json
import math

import pytest

from conftest import rag_cmd
from evaluation.retrieval import (_doc_id, _file_name, _metrics, _per_query, build_index, deal_folds, evaluate,
                                  fold_summary, load_beir)


def test_metrics_match_hand_computed_values():
    import pytrec_eval

    qrels = {"q1": {"a": 1}, "q2": {"c": 1, "d": 1}, "q3": {"e": 1}}
    run = {"q1": {"b": 2.0, "a": 1.0},  # relevant at rank 2
           "q2": {"c": 3.0, "x": 2.0, "d": 1.0}}  # ranks 1 and 3; q3 missing from the run: scores 0
    m = _metrics(pytrec_eval, qrels, run)
    ndcg_q1 = 1 / math.log2(3)
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 3, abs=1e-4)
    assert m["recall@10"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["mrr@10"] == pytest.approx((0.5 + 1) / 3, abs=1e-4)


def test_folds_partition_the_queries_the_same_way_every_time():
    import pytrec_eval

    qids = [f"q{i}" for i in range(23)]
    folds = deal_folds(qids, 5)
    assert sorted(q for f in folds for q in f) == sorted(qids)  # each query in exactly one fold
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert deal_folds(list(reversed(qids)), 5) == folds  # not the input order: the same folds on every run
    assert deal_folds(qids, 5, seed=1) != folds
    # Per fold means, by hand: q1 ndcg 1, q2 ndcg 0 (its document missing), q3 ndcg 1/log2(3).
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"x": 1.0}, "q3": {"x": 2.0, "c": 1.0}}
    summary = fold_summary(_per_query(pytrec_eval, qrels, run), [["q1", "q2"], ["q3"]])
    nd = summary["ndcg@10"]
    assert nd["per_fold"] == [0.5, pytest.approx(1 / math.log2(3), abs=1e-4)]
    assert nd["mean"] == pytest.approx((0.5 + 1 / math.log2(3)) / 2, abs=1e-4) and nd["min"] == 0.5
    assert nd["stdev"] == pytest.approx(abs(0.5 - 1 / math.log2(3)) / math.sqrt(2), abs=1e-4)
    assert summary["k"] == 2 and summary["mrr@10"]["per_fold"] == [0.5, 0.5]


def test_doc_ids_survive_file_names():
    for doc_id in ("4983", "a/b c", "..", "x.txt"):
        assert _doc_id("/some/dir/" + _file_name(doc_id)) == doc_id


@pytest.fixture
def tiny_beir(tmp_path):
    d = tmp_path / "tiny"
    (d / "qrels").mkdir(parents=True)
    docs = {"1": ("Zeppelins", "The airship hangar in Friedrichshafen housed the zeppelin fleet."),
            "2": ("Coffee", "Espresso is brewed by forcing hot water through finely ground coffee beans."),
            "3": ("Volcanoes", "Magma rises through the crust and erupts as lava from a volcano."),
            "4": ("Tides", "The moon's gravity pulls the oceans, causing high and low tides twice a day.")}
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n"
                                            for k, (t, x) in docs.items()))
    (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "Where were zeppelin airships kept?"}) + "\n"
                                     + json.dumps({"_id": "q2", "text": "How is espresso made?"}) + "\n"
                                     + json.dumps({"_id": "q9", "text": "unjudged query"}) + "\n")
    (d / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\r\nq1\t1\t1\r\nq2\t2\t1\r\n")
    return d


def test_whole_run_through_the_pipeline(tiny_beir, settings, embedder):
    ds = load_beir(tiny_beir, "train")
    assert sorted(ds.queries) == ["q1", "q2"] and len(ds.corpus) == 4  # unjudged queries are not scored
    assert build_index(ds, settings, embedder=embedder).added == 4
    assert build_index(ds, settings, embedder=embedder).unchanged == 4  # a second run reuses the index
    res = evaluate(ds, settings, embedder=embedder)
    for mode in ("dense", "sparse", "hybrid"):
        assert res[mode]["ndcg@10"] == pytest.approx(1.0) and res[mode]["recall@100"] == 1.0, (mode, res[mode])
        assert res[mode]["queries"] == 2 and res[mode]["p95_ms"] >= res[mode]["p50_ms"] > 0
    assert not (settings.data_dir / "qdrant-edge").exists()  # the company index is never touched


def test_cli(tiny_beir, tmp_path):
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    res = rag_cmd("eval", "retrieval", str(tiny_beir), "--split", "train", "--mode", "sparse", "--json", env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == ["sparse"] and {"ndcg@10", "recall@10", "recall@100", "mrr@10", "p50_ms",
                                        "p95_ms"} <= out["sparse"].keys()
    missing = rag_cmd("eval", "retrieval", str(tiny_beir), "--split", "test", env=env)
    assert missing.returncode == 2 and "qrels/test.tsv" in missing.stderr
    folds = rag_cmd("eval", "retrieval", str(tiny_beir), "--split", "train", "--mode", "sparse", "--folds", "2", env=env)
    assert folds.returncode == 0, folds.stderr
    assert "nDCG@10 per fold (2 folds)" in folds.stdout and " f2 " in folds.stdout
    too_many = rag_cmd("eval", "retrieval", str(tiny_beir), "--split", "train", "--folds", "3", env=env)
    assert too_many.returncode == 2 and "--folds must be between 2 and the number of queries (2)" in too_many.stderr
