"""Hybrid fusion settings on a BEIR dataset, chosen by nested cross-validation, from one pass over the store.

    .venv/bin/python bench/fusion.py ../shared/eval/scifact --split train          # needs `rag eval retrieval` once

For every judged query the dense and the BM25 candidate lists (``--depth`` chunks each, with the cosine of every
candidate) are fetched once from the index `rag eval retrieval` built; each fusion setting then re-ranks those lists
in memory, so a grid of dozens of settings takes seconds. Settings: Qdrant's reciprocal rank fusion (its formula,
1/(k + rank from 0), with optional per-side weights) and score fusion (rag/retrieval/fusion.py, the product's own
code), and score fusion with dense pseudo-relevance feedback (fusion.feedback_vector: the question's vector moved
toward the mean of its best dense hits, every candidate re-scored by its cosine to it). Reported per family: each setting's nDCG@10 on all queries and per fold (5 folds, the `--folds` split of
`rag eval retrieval`), and the nested estimate: the setting picked on four folds, scored on the fifth.
The product's numbers come from `rag eval retrieval --folds 5`; this script is for choosing its defaults.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag import offline  # noqa: E402

offline.apply()

from evaluation.retrieval import _doc_id, _mean, _per_query, deal_folds, eval_settings, load_beir  # noqa: E402
from rag.index.embeddings import get_embedder  # noqa: E402
from rag.index.sparse import get_sparse_encoder  # noqa: E402
from rag.index.store import Hit, open_store  # noqa: E402
from rag.retrieval.fusion import feedback_vector, score_fusion  # noqa: E402
from rag.settings import Settings  # noqa: E402

Lists = dict[str, tuple[list[Hit], list[Hit]]]
Vectors = dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]  # per query: its vector, its candidates' vectors


def candidates(dataset: Path, split: str, depth: int) -> tuple[dict, Lists, Vectors]:
    ds = load_beir(dataset, split)
    es = eval_settings(Settings(), ds)
    if not (es.data_dir / "qdrant-edge").exists():
        sys.exit(f"no index under {es.data_dir}: run `rag eval retrieval {dataset} --split {split}` first")
    embedder, sparse = get_embedder(es), get_sparse_encoder(es)
    lists: Lists = {}
    vectors: Vectors = {}
    with open_store(es) as store:
        for q, text in sorted(ds.queries.items()):
            v = embedder.embed_query(text)
            lists[q] = (store.query(v.tolist(), depth, None, mode="dense"),
                        store.query(v.tolist(), depth, None, sparse=sparse.embed_query(text), mode="sparse"))
            ids = list(dict.fromkeys(h.id for side in lists[q] for h in side))
            vectors[q] = (v, {i: np.asarray(x, dtype=np.float32) for i, x in store.vectors(ids).items()})
    return {q: ds.qrels[q] for q in lists}, lists, vectors


def with_feedback(dense: list[Hit], sparse: list[Hit], vecs: tuple[np.ndarray, dict[str, np.ndarray]], hits: int,
                  weight: float, w: float, limit: int) -> list[Hit]:
    """What Retriever._search does with RAG_HYBRID_FEEDBACK_HITS / _WEIGHT, in memory."""
    question, by_id = vecs
    moved = feedback_vector(question, [by_id[h.id] for h in dense[:hits]], weight)
    return score_fusion(dense, sparse, w, limit, {i: float(x @ moved) for i, x in by_id.items()})


def rrf(dense: list[Hit], sparse: list[Hit], k: int, weights: tuple[float, float], limit: int) -> list[Hit]:
    score: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    for side, w in ((dense, weights[0]), (sparse, weights[1])):
        for rank, h in enumerate(side):
            score[h.id] = score.get(h.id, 0.0) + w / (k + rank)
            hits.setdefault(h.id, h)
    return [hits[i] for i in sorted(score, key=lambda i: -score[i])[:limit]]


def ranking(hits: list[Hit]) -> dict[str, float]:
    """Documents by their best chunk, as `rag eval retrieval` ranks them."""
    docs: list[str] = []
    for h in hits:
        d = _doc_id(h.payload["path"])
        if d not in docs:
            docs.append(d)
    return {d: float(len(docs) - i) for i, d in enumerate(docs[:100])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--depth", type=int, default=100, help="candidates each side (RAG_HYBRID_PREFETCH)")
    args = ap.parse_args()
    import pytrec_eval

    qrels, lists, vectors = candidates(args.dataset, args.split, args.depth)
    qids = sorted(lists)
    folds = deal_folds(qids, 5)
    n = 200
    families: dict[str, dict[str, Callable[[list[Hit], list[Hit], str], list[Hit]]]] = {
        "single": {"dense": lambda d, s, q: d, "sparse": lambda d, s, q: s},
        "rrf (Qdrant's formula)": {
            f"rrf k={k} w={w[0]:g}:{w[1]:g}": (lambda d, s, q, k=k, w=w: rrf(d, s, k, w, n))
            for k in (1, 2, 3, 5, 10, 20, 60) for w in ((1, 1), (1, 1.5), (1.5, 1), (1, 2))},
        "score fusion": {
            f"score w={w:g}": (lambda d, s, q, w=w: score_fusion(d, s, w, n))
            for w in (0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 1.0)},
        "score fusion w=0.5 + dense feedback": {
            f"feedback {k} hits x{b:g}" if k else "no feedback":
                (lambda d, s, q, k=k, b=b: with_feedback(d, s, vectors[q], k, b, 0.5, n))
            for k in (0, 1, 3, 5, 8, 10) for b in ((0.1, 0.15, 0.25, 0.35, 0.5) if k else (0,))},
    }
    print(f"{len(qids)} queries, {args.depth} candidates each side, 5 folds")
    for family, settings in families.items():
        per = {name: _per_query(pytrec_eval, qrels, {q: ranking(fn(*lists[q], q)) for q in qids})
               for name, fn in settings.items()}
        print(f"\n{family}")
        print(f"  {'setting':22s} {'all':>7s}  " + " ".join(f"{'f' + str(i + 1):>6s}" for i in range(5)) + "   worst")
        for name in sorted(per, key=lambda x: -_mean(per[x], qids)["ndcg@10"])[:8]:
            fold_scores = [_mean(per[name], f)["ndcg@10"] for f in folds]
            print(f"  {name:22s} {_mean(per[name], qids)['ndcg@10']:7.4f}  "
                  + " ".join(f"{x:6.4f}" for x in fold_scores) + f"  {min(fold_scores):6.4f}")
        picks, held_out = [], []
        for i, f in enumerate(folds):
            rest = [q for j, g in enumerate(folds) if j != i for q in g]
            best = max(per, key=lambda x: _mean(per[x], rest)["ndcg@10"])
            picks.append(best)
            held_out.append(_mean(per[best], f)["ndcg@10"])
        print(f"  nested: picked {', '.join(picks)}; held-out nDCG@10 {statistics.fmean(held_out):.4f}")


if __name__ == "__main__":
    main()
