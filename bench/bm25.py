"""BM25 parameters, title handling and chunk-to-document aggregation on a BEIR dataset, by nested cross-validation.

    RAG_DATA_DIR=/work/evaldata .venv/bin/python bench/bm25.py ../shared/eval/scifact --split train

Reads every chunk (text and dense vector) of the index `rag eval retrieval` built, once; then recomputes BM25 in
memory for each setting with the product's encoder (rag.index.sparse.Bm25Encoder) and the IDF Qdrant's modifier
adds at query time, ln(1 + (N - n + 0.5) / (n + 0.5)), so no setting needs a re-ingest. Dense and BM25 top-200
lists are fused by the product's own score_fusion (weight RAG_HYBRID_SPARSE_WEIGHT), documents ranked by their best
chunk, as `rag eval retrieval` does. First a check: for the index's own settings the in-memory BM25 must equal the
store's. Reported per family: nDCG@10 on all queries and per fold (the 5 folds of `--folds 5`), the change against
the family's reference in each fold, and the nested estimate (the setting picked on four folds, scored on the fifth).
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
from rag.index.sparse import Bm25Encoder, SparseEncoder, get_sparse_encoder  # noqa: E402
from rag.index.store import Hit, open_store  # noqa: E402
from rag.retrieval.fusion import score_fusion  # noqa: E402
from rag.settings import Settings  # noqa: E402

DEPTH = 200  # candidates each side and chunks per query, as `rag eval retrieval` asks for


class Bench:
    def __init__(self, dataset: Path, split: str) -> None:
        self.ds = load_beir(dataset, split)
        self.settings = eval_settings(Settings(), self.ds)
        if not (self.settings.data_dir / "qdrant-edge").exists():
            sys.exit(f"no index under {self.settings.data_dir}: run `rag eval retrieval {dataset} --split {split}`")
        embedder = get_embedder(self.settings)
        self.qids = sorted(self.ds.queries)
        self.folds = deal_folds(self.qids, 5)
        self.qrels = {q: self.ds.qrels[q] for q in self.qids}
        chunks: list[Hit] = []
        with open_store(self.settings) as store:
            for path in sorted(store.chunk_paths()):
                chunks += store.chunks_of(path)
            vectors = store.vectors([h.id for h in chunks])
            # the store's own BM25 for the check below
            enc = get_sparse_encoder(self.settings)
            probe = self.qids[:20]
            self.store_bm25 = {q: store.query(embedder.embed_query(self.ds.queries[q]).tolist(), 10, None,
                                              sparse=enc.embed_query(self.ds.queries[q]), mode="sparse")
                               for q in probe}
        self.chunks = chunks
        self.docs = [_doc_id(h.payload["path"]) for h in chunks]
        dense = np.asarray([vectors[h.id] for h in chunks], dtype=np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        queries = np.asarray([embedder.embed_query(self.ds.queries[q]) for q in self.qids], dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        self.cos = queries @ dense.T
        self.weight = self.settings.hybrid_sparse_weight

    def bm25(self, enc: SparseEncoder, text: Callable[[int], str] | None = None) -> np.ndarray:
        """queries x chunks BM25, as Qdrant scores it: document weights from ``enc``, IDF over these chunks."""
        import scipy.sparse as sps

        cols: dict[int, int] = {}

        def matrix(vecs) -> sps.csr_matrix:
            rows, cs, vals = [], [], []
            for i, v in enumerate(vecs):
                for t, x in zip(v.indices, v.values, strict=True):
                    rows.append(i), cs.append(cols.setdefault(t, len(cols))), vals.append(x)
            return sps.csr_matrix((vals, (rows, cs)), shape=(len(vecs), 1 << 24))

        texts = [text(i) if text else h.payload["text"] for i, h in enumerate(self.chunks)]
        d = matrix(enc.embed_documents(texts))
        q = matrix([enc.embed_query(self.ds.queries[x]) for x in self.qids])
        n = np.asarray((d > 0).sum(axis=0)).ravel()
        idf = np.log1p((d.shape[0] - n + 0.5) / (n + 0.5))
        return np.asarray((q @ d.multiply(idf[None, :]).T.tocsr()).todense())

    def check(self) -> float:
        """Largest relative gap between the in-memory BM25 and the store's, for the index's own settings."""
        bm = self.bm25(get_sparse_encoder(self.settings))
        pos = {h.id: i for i, h in enumerate(self.chunks)}
        qi = {q: i for i, q in enumerate(self.qids)}
        return max(abs(bm[qi[q], pos[h.id]] - h.score) / h.score for q, hits in self.store_bm25.items() for h in hits)

    def _top(self, row: np.ndarray, positive: bool) -> np.ndarray:
        idx = np.argpartition(-row, DEPTH)[:DEPTH]
        idx = idx[np.argsort(-row[idx], kind="stable")]
        return idx[row[idx] > 0] if positive else idx

    def hits(self, qi: int, bm: np.ndarray, mode: str) -> list[tuple[int, float]]:
        d, s = self._top(self.cos[qi], False), self._top(bm[qi], True)
        if mode == "dense":
            return [(int(i), float(self.cos[qi, i])) for i in d]
        if mode == "sparse":
            return [(int(i), float(bm[qi, i])) for i in s]
        fused = score_fusion([Hit(str(i), float(self.cos[qi, i]), {}) for i in d],
                             [Hit(str(i), float(bm[qi, i]), {}, float(self.cos[qi, i])) for i in s], self.weight, DEPTH)
        return [(int(h.id), h.score) for h in fused]

    def per_query(self, bm: np.ndarray, mode: str, alpha: float = 0.0) -> dict[str, dict[str, float]]:
        """Documents by best chunk; with ``alpha``, best + alpha x second best chunk of the same document."""
        import pytrec_eval

        run = {}
        for qi, q in enumerate(self.qids):
            by_doc: dict[str, list[float]] = {}
            for i, score in self.hits(qi, bm, mode):
                by_doc.setdefault(self.docs[i], []).append(score)
            doc_score = {d: s[0] + alpha * (s[1] if len(s) > 1 else 0.0) for d, s in by_doc.items()}
            ranked = sorted(doc_score, key=lambda d: -doc_score[d])[:100]
            run[q] = {d: float(len(ranked) - r) for r, d in enumerate(ranked)}
        return _per_query(pytrec_eval, self.qrels, run)

    def report(self, family: str, per: dict[str, dict], reference: str) -> None:
        def folds(name: str) -> list[float]:
            return [_mean(per[name], f)["ndcg@10"] for f in self.folds]

        ref = folds(reference)
        print(f"\n{family} (reference: {reference})")
        print(f"  {'setting':34s} {'all':>7s}  " + " ".join(f"{'f' + str(i + 1):>6s}" for i in range(5))
              + "   vs reference")
        for name in per:
            f = folds(name)
            wins = sum(a > b for a, b in zip(f, ref, strict=True))
            print(f"  {name:34s} {_mean(per[name], self.qids)['ndcg@10']:7.4f}  " + " ".join(f"{x:6.4f}" for x in f)
                  + f"   {statistics.fmean(f) - statistics.fmean(ref):+.4f}, better in {wins}/5")
        picks, held = [], []
        for i, f in enumerate(self.folds):
            rest = [q for j, g in enumerate(self.folds) if j != i for q in g]
            best = max(per, key=lambda x: _mean(per[x], rest)["ndcg@10"])
            picks.append(best)
            held.append(_mean(per[best], f)["ndcg@10"])
        print(f"  nested: picked {'; '.join(picks)}; held-out nDCG@10 {statistics.fmean(held):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--split", default="train")
    args = ap.parse_args()
    b = Bench(args.dataset, args.split)
    print(f"{len(b.qids)} queries, {len(b.chunks)} chunks, 5 folds; in-memory BM25 vs the store's "
          f"(index settings {get_sparse_encoder(b.settings).signature}): max relative gap {b.check():.1e}")
    lengths = np.asarray([len(_terms(h.payload["text"])) for h in b.chunks])
    print(f"chunk length in BM25 terms: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
          f"p10-p90 {np.percentile(lengths, 10):.0f}-{np.percentile(lengths, 90):.0f}")

    def both(label: str, enc: Bm25Encoder, text=None) -> tuple[dict, dict]:
        bm = b.bm25(enc, text)
        return {label: b.per_query(bm, "hybrid")}, {label: b.per_query(bm, "sparse")}

    grids = {
        "b (k=1.2, avg_len=100)": [(f"b={x:g}", Bm25Encoder(avg_len=100, b=x)) for x in (0.75, 0, 0.1, 0.2, 0.3, 0.4,
                                                                                       0.5, 0.6)],
        "avg_len (k=1.2, b=0.75)": [(f"avg_len={x:g}", Bm25Encoder(avg_len=x, b=0.75))
                                    for x in (100, 86, 150, 256, 400, 800)],
        "k (b=0.3, avg_len=100)": [(f"k={x:g}", Bm25Encoder(avg_len=100, b=0.3, k=x)) for x in (1.2, 0.6, 0.9, 1.5, 2)],
    }
    for family, settings in grids.items():
        hybrid, sparse = {}, {}
        for label, enc in settings:
            h, s = both(label, enc)
            hybrid |= h
            sparse |= s
        b.report(f"hybrid, {family}", hybrid, settings[0][0])
        b.report(f"BM25 alone, {family}", sparse, settings[0][0])

    titles = {d: t for d, (t, _) in b.ds.corpus.items()}

    def body(i: int) -> str:
        h, t = b.chunks[i], titles[b.docs[i]]
        text = h.payload["text"]
        return text[len(t) + 2:] if t and h.payload["chunk_index"] == 0 and text.startswith(t + "\n\n") else text

    title_variants: dict[str, Callable[[int], str]] = {
        "title in the first chunk (as ingested)": lambda i: b.chunks[i].payload["text"],
        "no title": body,
        "title in every chunk": lambda i: f"{titles[b.docs[i]]}\n\n{body(i)}" if titles[b.docs[i]] else body(i),
        "title twice in every chunk": lambda i: f"{titles[b.docs[i]]}\n\n" * 2 + body(i),
    }
    hybrid, sparse = {}, {}
    for label, fn in title_variants.items():
        h, s = both(label, Bm25Encoder(avg_len=100, b=0.3), fn)
        hybrid |= h
        sparse |= s
    b.report("hybrid, title in the BM25 text (b=0.3)", hybrid, "title in the first chunk (as ingested)")
    b.report("BM25 alone, title in the BM25 text (b=0.3)", sparse, "title in the first chunk (as ingested)")

    bm = b.bm25(Bm25Encoder(avg_len=100, b=0.3))
    for mode in ("dense", "sparse", "hybrid"):
        b.report(f"{mode}, document = best + alpha x second-best chunk (b=0.3)",
                 {f"alpha={a:g}": b.per_query(bm, mode, a) for a in (0, 0.05, 0.1, 0.2, 0.3)}, "alpha=0")


def _terms(text: str) -> list[int]:
    """The BM25 terms of ``text`` with repeats (b=0 and k -> the weight is tf/(tf+k)(k+1): invert it)."""
    v = Bm25Encoder(b=0.0, k=1.0).embed_documents([text])[0]
    out: list[int] = []
    for t, w in zip(v.indices, v.values, strict=True):
        out += [t] * round(w / (2 - w))  # w = 2 tf / (tf + 1)
    return out


if __name__ == "__main__":
    main()
