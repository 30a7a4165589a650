"""Retrieval quality and speed of the embedding backends on BEIR SciFact (TRAIN split).

Decides whether the int8 ONNX backend may become the default: the rule is that its nDCG@10 on SciFact
TRAIN must stay within 0.005 of fp32 (torch).

For each backend: embed every corpus document as ``title + " " + text`` (the model truncates at 256 word
pieces, as MTEB does), embed the TRAIN queries (those with a line in ``qrels/train.tsv``), rank the corpus by
exact cosine similarity (vectors are unit length, so a dot product) and keep the top 100, then compute
nDCG@10, Recall@100 and MRR@10 averaged over queries. Only the corpus embedding is timed (docs/s).

Metrics come from pytrec_eval when it is importable, otherwise from the implementation below, which
follows trec_eval/pytrec_eval: gain = graded relevance (not 2^rel - 1), discount log2(rank + 1), ideal DCG
over all relevant documents of the query (cut at 10), relevant = relevance > 0, MRR@10 = 1/rank of the
first relevant document in the top 10 (0 if none), Recall@100 = relevant in top 100 / all relevant.
``--selftest`` checks that implementation against hand-computed values (and against pytrec_eval if present).

    .venv/bin/python bench/embedding_quality.py --backends torch,onnx-int8
    .venv/bin/python bench/embedding_quality.py --backends torch,onnx-int8 --limit 500   # quick check
    .venv/bin/python bench/embedding_quality.py --selftest
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = Path("/work/shared/eval/scifact")
THRESHOLD = 0.005
TOP_K = 100
BACKENDS = ("torch", "onnx-int8")

Qrels = dict[str, dict[str, int]]  # query id -> doc id -> relevance
Run = dict[str, dict[str, float]]  # query id -> doc id -> score


# --- data ---------------------------------------------------------------------------------------------


def load_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_qrels(path: Path) -> Qrels:
    """BEIR qrels: ``query-id<TAB>corpus-id<TAB>score``, a header line, CRLF line ends."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines()  # splitlines() drops "\r\n" and "\n" alike
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if n == 0 and parts[0] == "query-id":
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{n + 1}: expected 3 tab-separated fields, got {parts!r}")
        qid, did, rel = parts
        qrels.setdefault(qid, {})[did] = int(rel)
    return qrels


def load_dataset(data_dir: Path, split: str, limit: int | None):
    corpus = load_jsonl(data_dir / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in load_jsonl(data_dir / "queries.jsonl")}
    qrels = load_qrels(data_dir / "qrels" / f"{split}.tsv")
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise ValueError(f"{len(missing)} qrels queries have no text in queries.jsonl, e.g. {missing[:5]}")
    doc_ids = {d["_id"] for d in corpus}
    if len(doc_ids) != len(corpus):
        raise ValueError("duplicate _id in corpus.jsonl")
    unknown = sorted({d for rels in qrels.values() for d in rels} - doc_ids)
    if unknown:
        raise ValueError(f"{len(unknown)} qrels documents are not in the corpus, e.g. {unknown[:5]}")
    qids = [qid for qid in queries if qid in qrels]  # file order, only queries judged in this split

    if limit is not None and limit < len(corpus):
        # Subset for quick checks: queries (file order) whose relevant documents fill at most half of the
        # budget, all of those documents, then other documents in file order up to `limit` in total.
        keep: set[str] = set()
        chosen: list[str] = []
        for qid in qids:
            rel = set(qrels[qid])
            if chosen and len(keep | rel) > max(1, limit // 2):
                break
            keep |= rel
            chosen.append(qid)
        for d in corpus:
            if len(keep) >= limit:
                break
            keep.add(d["_id"])
        corpus = [d for d in corpus if d["_id"] in keep]
        qids = chosen
    qrels = {qid: qrels[qid] for qid in qids}
    return corpus, [(qid, queries[qid]) for qid in qids], qrels


def doc_text(doc: Mapping) -> str:
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip()


# --- metrics ------------------------------------------------------------------------------------------


def _ranked(scores: Mapping[str, float]) -> list[str]:
    # trec_eval order: score descending, ties broken by document id descending.
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def ndcg_at_k(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if rels.get(d, 0) > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(rels: Mapping[str, int], ranking: Sequence[str], k: int) -> float:
    for i, d in enumerate(ranking[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def per_query_builtin(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    out = {}
    for qid, rels in qrels.items():
        ranking = _ranked(run.get(qid, {}))
        out[qid] = {
            "ndcg@10": ndcg_at_k(rels, ranking, 10),
            "recall@100": recall_at_k(rels, ranking, 100),
            "mrr@10": mrr_at_k(rels, ranking, 10),
        }
    return out


def per_query_pytrec(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    import pytrec_eval

    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    res = ev.evaluate(run)
    # pytrec_eval has no MRR@k (recip_rank is uncut): cut the run at 10 and take recip_rank of that.
    run10 = {q: dict(sorted(s.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, s in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run10)
    out = {}
    for qid in qrels:
        r = res.get(qid, {})
        out[qid] = {
            "ndcg@10": r.get("ndcg_cut_10", 0.0),
            "recall@100": r.get("recall_100", 0.0),
            "mrr@10": rr.get(qid, {}).get("recip_rank", 0.0),
        }
    return out


def have_pytrec() -> bool:
    try:
        import pytrec_eval  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate(qrels: Qrels, run: Run) -> tuple[dict[str, float], dict[str, dict[str, float]], str]:
    """Mean over all judged queries (a query with no retrieved relevant document counts as 0)."""
    if have_pytrec():
        per_q, impl = per_query_pytrec(qrels, run), "pytrec_eval"
    else:
        per_q, impl = per_query_builtin(qrels, run), "builtin"
    names = ("ndcg@10", "recall@100", "mrr@10")
    mean = {m: float(np.mean([per_q[q][m] for q in qrels])) for m in names}
    return mean, per_q, impl


def selftest() -> int:
    """Hand-computed example: graded relevance, a relevant document outside the top 10, an unretrieved
    relevant document, a query with nothing relevant retrieved, and a score tie."""
    l2 = math.log2
    qrels: Qrels = {
        "q1": {"d1": 2, "d3": 1, "d9": 1, "dX": 0},  # d9 never retrieved; dX judged non-relevant
        "q2": {"d5": 1},  # d5 at rank 12: outside @10, inside @100
        "q3": {"d7": 1},  # nothing relevant retrieved
        "q4": {"a": 1, "b": 1},  # tie between a and z (score 0.5): trec_eval puts z (larger id) first
    }
    run: Run = {
        "q1": {"d2": 0.9, "d1": 0.8, "dX": 0.7, "d3": 0.6},
        "q2": {f"n{i:02d}": 1.0 - i / 100 for i in range(11)} | {"d5": 0.5},
        "q3": {"d1": 0.9},
        "q4": {"z": 0.5, "a": 0.5, "b": 0.4},
    }
    # q1 ranking: d2, d1(2), dX(0), d3(1). DCG = 2/log2(3) + 1/log2(5); IDCG = 2/1 + 1/log2(3) + 1/log2(4)
    q1_ndcg = (2 / l2(3) + 1 / l2(5)) / (2 + 1 / l2(3) + 1 / l2(4))
    # q4 ranking: z, a, b. DCG = 1/log2(3) + 1/log2(4); IDCG = 1 + 1/log2(3)
    q4_ndcg = (1 / l2(3) + 1 / l2(4)) / (1 + 1 / l2(3))
    expected = {
        "q1": {"ndcg@10": q1_ndcg, "recall@100": 2 / 3, "mrr@10": 1 / 2},
        "q2": {"ndcg@10": 0.0, "recall@100": 1.0, "mrr@10": 0.0},
        "q3": {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0},
        "q4": {"ndcg@10": q4_ndcg, "recall@100": 1.0, "mrr@10": 1 / 2},
    }
    failures = 0
    impls = [("builtin", per_query_builtin)] + ([("pytrec_eval", per_query_pytrec)] if have_pytrec() else [])
    for name, fn in impls:
        got = fn(qrels, run)
        for qid, exp in expected.items():
            for m, v in exp.items():
                ok = abs(got[qid][m] - v) < 1e-9
                failures += not ok
                print(f"{name:12s} {qid} {m:10s} expected {v:.6f} got {got[qid][m]:.6f} {'ok' if ok else 'FAIL'}")
    # Consistency of the ranking step used on real data with the metric functions.
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8]], dtype=np.float32)
    ids = ["a", "b", "c"]
    r = top_k_run(["x", "y"], scores, ids, k=2)
    ok = list(r["x"]) == ["b", "c"] and list(r["y"]) == ["c", "a"]
    failures += not ok
    print(f"top_k_run ordering {'ok' if ok else 'FAIL'}: {r}")
    if not have_pytrec():
        print("pytrec_eval not importable: cross-checked the builtin metrics against hand-computed values only")
    print("selftest", "PASSED" if failures == 0 else f"FAILED ({failures})")
    return 1 if failures else 0


# --- retrieval ----------------------------------------------------------------------------------------


def top_k_run(qids: Sequence[str], scores: np.ndarray, doc_ids: Sequence[str], k: int) -> Run:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    run: Run = {}
    for row, qid in enumerate(qids):
        idx = part[row][np.argsort(-scores[row, part[row]], kind="stable")]
        run[qid] = {doc_ids[j]: float(scores[row, j]) for j in idx}
    return run


def run_backend(backend: str, corpus, queries, qrels, models_dir: Path, batch_size: int, threads: int | None):
    from rag.index.embeddings import SentenceTransformerEmbedder

    t0 = time.perf_counter()
    emb = SentenceTransformerEmbedder(backend=backend, models_dir=models_dir, batch_size=batch_size, threads=threads)
    load_s = time.perf_counter() - t0
    texts = [doc_text(d) for d in corpus]
    emb.embed_documents(texts[:8])  # warm-up, not timed
    t0 = time.perf_counter()
    doc_vecs = emb.embed_documents(texts)
    corpus_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_vecs = np.stack([emb.embed_query(text) for _, text in queries])
    query_s = time.perf_counter() - t0
    norms = np.linalg.norm(doc_vecs, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise RuntimeError(f"{backend}: document vectors are not unit length (min {norms.min()}, max {norms.max()})")
    scores = q_vecs @ doc_vecs.T  # cosine
    run = top_k_run([qid for qid, _ in queries], scores, [d["_id"] for d in corpus], TOP_K)
    mean, per_q, impl = evaluate(qrels, run)
    result = {
        "backend": backend,
        **{k: round(v, 6) for k, v in mean.items()},
        "docs_per_s": round(len(corpus) / corpus_s, 2),
        "corpus_embed_s": round(corpus_s, 2),
        "queries_embed_s": round(query_s, 2),
        "model_load_s": round(load_s, 2),
        "max_seq_length": int(emb._model.max_seq_length),
        "metrics_impl": impl,
    }
    return result, per_q, doc_vecs, run


# --- main ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="torch,onnx-int8", help="comma-separated: torch, onnx-int8")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder")
    ap.add_argument("--split", default="train", help="qrels/<split>.tsv")
    ap.add_argument("--models-dir", type=Path, default=None, help="where the ONNX export goes (default: a temp dir)")
    ap.add_argument("--limit", type=int, default=None, help="corpus subset of N docs for quick checks")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--selftest", action="store_true", help="check the metric implementation and exit")
    args = ap.parse_args(argv)

    if args.selftest:
        return selftest()

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        ap.error(f"unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}")

    corpus, queries, qrels = load_dataset(args.data_dir, args.split, args.limit)
    log = sys.stderr
    print(f"{len(corpus)} docs, {len(queries)} {args.split} queries, "
          f"{sum(len(r) for r in qrels.values())} qrels", file=log)

    tmp = None
    models_dir = args.models_dir
    if models_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="emb-quality-models-")
        models_dir = Path(tmp.name)
    results, per_query, vecs, runs = {}, {}, {}, {}
    try:
        for b in backends:
            print(f"[{b}] embedding ...", file=log, flush=True)
            results[b], per_query[b], vecs[b], runs[b] = run_backend(
                b, corpus, queries, qrels, models_dir, args.batch_size, args.threads
            )
            print(f"[{b}] {json.dumps(results[b])}", file=log, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    out: dict = {
        "dataset": str(args.data_dir),
        "split": args.split,
        "docs": len(corpus),
        "queries": len(queries),
        "limit": args.limit,
        "backends": results,
        "threshold": THRESHOLD,
    }
    if "torch" in results and "onnx-int8" in results:
        diff = results["onnx-int8"]["ndcg@10"] - results["torch"]["ndcg@10"]
        within = abs(diff) <= THRESHOLD
        cos = np.sum(vecs["torch"] * vecs["onnx-int8"], axis=1)
        pq_diff = np.array([per_query["onnx-int8"][q]["ndcg@10"] - per_query["torch"][q]["ndcg@10"] for q in qrels])
        top10_overlap = np.mean([
            len(set(list(runs["torch"][q])[:10]) & set(list(runs["onnx-int8"][q])[:10])) / 10 for q in qrels
        ])
        out.update({
            "ndcg@10_diff_onnx_minus_torch": round(diff, 6),
            "recall@100_diff_onnx_minus_torch": round(results["onnx-int8"]["recall@100"] - results["torch"]["recall@100"], 6),
            "mrr@10_diff_onnx_minus_torch": round(results["onnx-int8"]["mrr@10"] - results["torch"]["mrr@10"], 6),
            "onnx_int8_within_threshold": within,
            "speedup_onnx_over_torch": round(results["onnx-int8"]["docs_per_s"] / results["torch"]["docs_per_s"], 2),
            "doc_vector_cosine_torch_vs_onnx": {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)},
            "queries_ndcg@10_changed": int(np.sum(np.abs(pq_diff) > 1e-9)),
            "queries_ndcg@10_better_worse": [int(np.sum(pq_diff > 1e-9)), int(np.sum(pq_diff < -1e-9))],
            "mean_top10_overlap": round(float(top10_overlap), 4),
        })

    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    print(f"SciFact {args.split}: {out['docs']} docs, {out['queries']} queries"
          + (f" (subset, --limit {args.limit})" if args.limit else ""))
    print(f"{'backend':10s} {'nDCG@10':>8s} {'R@100':>8s} {'MRR@10':>8s} {'docs/s':>8s} {'embed s':>8s}")
    for b, r in results.items():
        print(f"{b:10s} {r['ndcg@10']:8.4f} {r['recall@100']:8.4f} {r['mrr@10']:8.4f} "
              f"{r['docs_per_s']:8.1f} {r['corpus_embed_s']:8.1f}")
    print(f"metrics: {next(iter(results.values()))['metrics_impl']}")
    if "ndcg@10_diff_onnx_minus_torch" in out:
        print(f"nDCG@10 onnx-int8 - torch: {out['ndcg@10_diff_onnx_minus_torch']:+.4f}   "
              f"(R@100 {out['recall@100_diff_onnx_minus_torch']:+.4f}, MRR@10 {out['mrr@10_diff_onnx_minus_torch']:+.4f})")
        print(f"speed-up onnx-int8 / torch: {out['speedup_onnx_over_torch']:.2f}x   "
              f"doc-vector cosine torch vs onnx: mean {out['doc_vector_cosine_torch_vs_onnx']['mean']:.4f} "
              f"min {out['doc_vector_cosine_torch_vs_onnx']['min']:.4f}   "
              f"queries with changed nDCG@10: {out['queries_ndcg@10_changed']} "
              f"(better {out['queries_ndcg@10_better_worse'][0]}, worse {out['queries_ndcg@10_better_worse'][1]})")
        print(f"ONNX int8 within {THRESHOLD} of fp32: {'yes' if out['onnx_int8_within_threshold'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
