"""BM25 parameters, title handling, word pairs, query expansion, chunk-to-document aggregation, the title's vector
as a second dense field and a per-question BM25 weight on a BEIR dataset, by nested cross-validation.

    RAG_DATA_DIR=/work/evaldata .venv/bin/python bench/bm25.py ../shared/eval/scifact --split train
    ... bench/bm25.py ../shared/eval/scifact --split train --families pairs expansion     # some grids only
    ... bench/bm25.py ../shared/eval/scifact --split train --families titlevec calibrated

Reads every chunk (text and dense vector) of the index `rag eval retrieval` built, once; then recomputes BM25 in
memory for each setting with the product's encoder (rag.index.sparse.Bm25Encoder) and the IDF Qdrant's modifier
adds at query time, ln(1 + (N - n + 0.5) / (n + 0.5)), so no setting needs a re-ingest. Dense and BM25 top-200
lists are fused by the product's own score_fusion (weight RAG_HYBRID_SPARSE_WEIGHT, ranked by the cosine moved by
dense feedback, RAG_HYBRID_FEEDBACK_*; RAG_HYBRID_FEEDBACK_HITS=0 ranks as before that default, as the b, avg_len,
title and aggregation tables of bench/README.md were measured), documents ranked by their best chunk, as `rag eval
retrieval` does. First a check: for the index's own settings the in-memory BM25 must equal the store's. Reported
per family: nDCG@10 on all queries and per fold (the 5 folds of `--folds 5`), the change against the family's
reference in each fold, and the nested estimate (the setting picked on four folds, scored on the fifth).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag import offline  # noqa: E402

offline.apply()

from evaluation.retrieval import _doc_id, _mean, _per_query, deal_folds, eval_settings, load_beir  # noqa: E402
from rag.index.embeddings import get_embedder  # noqa: E402
from rag.index.sparse import Bm25Encoder, SparseEncoder, SparseVector, get_sparse_encoder  # noqa: E402
from rag.index.store import Hit, open_store  # noqa: E402
from rag.retrieval.fusion import feedback_vector, score_fusion  # noqa: E402
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
        self.dense, self.queries = dense, queries
        self.cos = queries @ dense.T
        self.weight = self.settings.hybrid_sparse_weight
        self.feedback = (self.settings.hybrid_feedback_hits, self.settings.hybrid_feedback_weight)

    def bm25(self, enc: SparseEncoder, text: Callable[[int], str] | None = None) -> np.ndarray:
        """queries x chunks BM25, as Qdrant scores it: document weights from ``enc``, IDF over these chunks."""
        q, d, _ = self.matrices(enc, text)
        return np.asarray((q @ d.T).todense())

    def matrices(self, enc: SparseEncoder, text: Callable[[int], str] | None = None):
        """The queries' term weights (queries x terms), the chunks' BM25 weights with IDF (chunks x terms), and the
        IDF per term."""
        import scipy.sparse as sps

        cols: dict[int, int] = {}

        def entries(vecs) -> tuple[list[float], tuple[list[int], list[int]]]:
            rows, cs, vals = [], [], []
            for i, v in enumerate(vecs):
                for t, x in zip(v.indices, v.values, strict=True):
                    rows.append(i), cs.append(cols.setdefault(t, len(cols))), vals.append(x)
            return vals, (rows, cs)

        texts = [text(i) if text else h.payload["text"] for i, h in enumerate(self.chunks)]
        de = entries(enc.embed_documents(texts))
        qe = entries([enc.embed_query(self.ds.queries[x]) for x in self.qids])
        d = sps.csr_matrix(de, shape=(len(texts), len(cols)))
        q = sps.csr_matrix(qe, shape=(len(self.qids), len(cols)))
        n = np.asarray((d > 0).sum(axis=0)).ravel()
        idf = np.log1p((d.shape[0] - n + 0.5) / (n + 0.5))
        return q.tocsr(), d.multiply(idf[None, :]).tocsr(), idf

    def expanded(self, enc: SparseEncoder, hits: int, terms: int, weight: float) -> np.ndarray:
        """BM25 of each query plus ``weight`` x the ``terms`` heaviest terms (BM25 x IDF, scaled to 1 at the
        heaviest) of its best ``hits`` dense chunks: keyword-side feedback taken from the dense side."""
        q, d, _ = self.matrices(enc)
        rows = []
        for qi in range(len(self.qids)):
            mean = np.asarray(d[self.top(self.cos[qi], False)[:hits]].mean(axis=0)).ravel()
            pick = np.argpartition(-mean, terms)[:terms]
            pick = pick[mean[pick] > 0]
            query = np.asarray(q[qi].todense()).ravel()
            query[pick] += weight * mean[pick] / mean[pick].max()
            rows.append(d @ query)
        return np.asarray(rows)

    def check(self) -> float:
        """Largest relative gap between the in-memory BM25 and the store's, for the index's own settings."""
        bm = self.bm25(get_sparse_encoder(self.settings))
        pos = {h.id: i for i, h in enumerate(self.chunks)}
        qi = {q: i for i, q in enumerate(self.qids)}
        return max(abs(bm[qi[q], pos[h.id]] - h.score) / h.score for q, hits in self.store_bm25.items() for h in hits)

    @staticmethod
    def top(row: np.ndarray, positive: bool, depth: int = DEPTH) -> np.ndarray:
        """The best ``depth`` positions of ``row``, best first; ``positive``: only those scoring above 0."""
        idx = np.argpartition(-row, depth)[:depth]
        idx = idx[np.argsort(-row[idx], kind="stable")]
        return idx[row[idx] > 0] if positive else idx

    def hits(self, qi: int, bm: np.ndarray, mode: str,
             extra: Callable[[int, np.ndarray], np.ndarray] | None = None,
             weight: Callable[[int], float] | None = None) -> list[tuple[int, float]]:
        """``extra(qi, chunk positions)``: a further dense signal added to each candidate's ranking cosine;
        ``weight(qi)``: the question's own BM25 weight in the fusion instead of the setting's."""
        d, s = self.top(self.cos[qi], False), self.top(bm[qi], True)
        if mode == "dense":
            if extra is not None:
                score = self.cos[qi, d] + extra(qi, d)
                return [(int(i), float(x)) for i, x in sorted(zip(d, score, strict=True), key=lambda p: -p[1])]
            return [(int(i), float(self.cos[qi, i])) for i in d]
        if mode == "sparse":
            return [(int(i), float(bm[qi, i])) for i in s]
        # Ranked as Retriever._search ranks: by the cosine to the question moved toward its best dense hits
        # (RAG_HYBRID_FEEDBACK_*), every candidate re-scored against it.
        moved = feedback_vector(self.queries[qi], list(self.dense[d[:self.feedback[0]]]), self.feedback[1])
        union = np.union1d(d, s)
        rank = self.dense[union] @ moved + (extra(qi, union) if extra is not None else 0.0)
        ranking = {str(i): float(x) for i, x in zip(union, rank, strict=True)}
        fused = score_fusion([Hit(str(i), float(self.cos[qi, i]), {}) for i in d],
                             [Hit(str(i), float(bm[qi, i]), {}, float(self.cos[qi, i])) for i in s],
                             self.weight if weight is None else weight(qi), DEPTH,
                             ranking)
        return [(int(h.id), h.score) for h in fused]

    def per_query(self, bm: np.ndarray, mode: str, alpha: float = 0.0,
                  extra: Callable[[int, np.ndarray], np.ndarray] | None = None,
                  weight: Callable[[int], float] | None = None) -> dict[str, dict[str, float]]:
        """Documents by best chunk; with ``alpha``, best + alpha x second best chunk of the same document."""
        import pytrec_eval

        run = {}
        for qi, q in enumerate(self.qids):
            by_doc: dict[str, list[float]] = {}
            for i, score in self.hits(qi, bm, mode, extra, weight):
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


FAMILIES = ("b", "avg_len", "k", "title", "aggregation", "pairs", "expansion", "titlevec", "calibrated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=FAMILIES, help="which grids to run (all)")
    args = ap.parse_args()
    b = Bench(args.dataset, args.split)
    print(f"{len(b.qids)} queries, {len(b.chunks)} chunks, 5 folds; in-memory BM25 vs the store's "
          f"(index settings {get_sparse_encoder(b.settings).signature}): max relative gap {b.check():.1e}")
    lengths = np.asarray([len(_terms(h.payload["text"])) for h in b.chunks])
    print(f"chunk length in BM25 terms: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
          f"p10-p90 {np.percentile(lengths, 10):.0f}-{np.percentile(lengths, 90):.0f}")

    def compare(family: str, settings: list[tuple[str, np.ndarray]]) -> None:
        """Hybrid and BM25 alone for each (label, queries x chunks BM25); the first setting is the reference."""
        b.report(f"hybrid, {family}", {label: b.per_query(bm, "hybrid") for label, bm in settings}, settings[0][0])
        b.report(f"BM25 alone, {family}", {label: b.per_query(bm, "sparse") for label, bm in settings},
                 settings[0][0])

    grids = {
        "b": ("b (k=1.2, avg_len=100)",
              [(f"b={x:g}", Bm25Encoder(avg_len=100, b=x)) for x in (0.75, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]),
        "avg_len": ("avg_len (k=1.2, b=0.75)",
                    [(f"avg_len={x:g}", Bm25Encoder(avg_len=x, b=0.75)) for x in (100, 86, 150, 256, 400, 800)]),
        "k": ("k (b=0.3, avg_len=100)", [(f"k={x:g}", Bm25Encoder(avg_len=100, b=0.3, k=x)) for x in (1.2, 0.6, 0.9,
                                                                                                     1.5, 2)]),
        "pairs": ("word pairs beside single words (b=0.3), the pair's weight in the query",
                  [("single words", Bm25Encoder(avg_len=100, b=0.3))]
                  + [(f"pairs x{w:g}{'' if strict else ', across stopwords'}", WithBigrams(w, strict=strict))
                     for strict in (True, False) for w in (0.25, 0.5, 1.0)]),
    }
    for key, (family, encoders) in grids.items():
        if key in args.families:
            compare(family, [(label, b.bm25(enc)) for label, enc in encoders])

    if "title" in args.families:
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
        compare("title in the BM25 text (b=0.3)",
                [(label, b.bm25(Bm25Encoder(avg_len=100, b=0.3), fn)) for label, fn in title_variants.items()])

    if "aggregation" in args.families:
        bm = b.bm25(Bm25Encoder(avg_len=100, b=0.3))
        for mode in ("dense", "sparse", "hybrid"):
            b.report(f"{mode}, document = best + alpha x second-best chunk (b=0.3)",
                     {f"alpha={a:g}": b.per_query(bm, mode, a) for a in (0, 0.05, 0.1, 0.2, 0.3)}, "alpha=0")

    if "expansion" in args.families:
        enc = Bm25Encoder(avg_len=100, b=0.3)
        compare("the BM25 query expanded by its best dense chunks' terms (b=0.3)",
                [("no expansion", b.bm25(enc))]
                + [(f"dense top {k}, {m} terms x{w:g}", b.expanded(enc, k, m, w))
                   for k in (3, 5, 10) for m in (10, 20) for w in (0.2, 0.5)])

    if "titlevec" in args.families:
        title_vectors(b)
    if "calibrated" in args.families:
        calibrated(b)


def title_vectors(b: Bench) -> None:
    """Family titlevec: the document's title as a second dense field, cos(question, title vector) added to every
    chunk's ranking cosine with a weight (BM25F's idea on the dense side), and, for comparison, the mean of the
    document's chunk vectors (a document vector any file has, title or not)."""
    embedder = get_embedder(b.settings)
    doc_ids = sorted(set(b.docs))
    dpos = {d: j for j, d in enumerate(doc_ids)}
    chunk_doc = np.asarray([dpos[d] for d in b.docs])
    titles = [b.ds.corpus[d][0] for d in doc_ids]
    tv = np.asarray(embedder.embed_documents(titles), dtype=np.float32)
    tv /= np.linalg.norm(tv, axis=1, keepdims=True)
    has_title = np.asarray([bool(t.strip()) for t in titles])
    title_cos = (b.queries @ tv.T) * has_title[None, :]
    mean = np.zeros((len(doc_ids), b.dense.shape[1]), dtype=np.float32)
    np.add.at(mean, chunk_doc, b.dense)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    mean_cos = b.queries @ mean.T
    print(f"titles: {int(has_title.sum())} of {len(doc_ids)} documents")

    def add(matrix: np.ndarray, w: float) -> Callable[[int, np.ndarray], np.ndarray]:
        return lambda qi, idx: w * matrix[qi, chunk_doc[idx]]

    def lift(matrix: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        # max(chunk cosine, title cosine): the extra is what the title adds above the chunk
        return lambda qi, idx: np.maximum(matrix[qi, chunk_doc[idx]] - b.cos[qi, idx], 0.0)

    variants: dict[str, Callable[[int, np.ndarray], np.ndarray] | None] = {"chunk only": None}
    variants |= {f"+ title x{w:g}": add(title_cos, w) for w in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)}
    variants["max(chunk, title)"] = lift(title_cos)
    variants |= {f"+ document mean x{w:g}": add(mean_cos, w) for w in (0.1, 0.2, 0.3)}
    bm = b.bm25(get_sparse_encoder(b.settings))
    for mode in ("dense", "hybrid"):
        b.report(f"{mode}, the title's vector as a second field",
                 {label: b.per_query(bm, mode, extra=fn) for label, fn in variants.items()}, "chunk only")


def calibrated(b: Bench) -> None:
    """Family calibrated: a BM25 weight per question. BM25 divided by the most the question could score (every
    query term's IDF x (k + 1), a chunk that repeats each term without end) instead of by its best hit: the keyword
    side's say then grows with how much of the question the best chunk matches, instead of being 1 for every
    question's best hit."""
    q, d, idf = b.matrices(get_sparse_encoder(b.settings))
    bm = np.asarray((q @ d.T).todense())
    ceiling = np.asarray(q @ (idf * 2.2)).ravel()  # k + 1, k = 1.2 (the product never sets k)
    share = bm.max(axis=1) / np.maximum(ceiling, 1e-9)
    print(f"best hit's share of the ceiling: median {np.median(share):.3f}, p10-p90 "
          f"{np.percentile(share, 10):.3f}-{np.percentile(share, 90):.3f}")
    med = float(np.median(share))

    def scaled(w: float, power: float = 1.0) -> Callable[[int], float]:
        return lambda qi: w * (share[qi] / med) ** power

    # the same without IDF (which the engine keeps to itself): the share of the question's terms in its best hit
    best = bm.argmax(axis=1)
    qb, db = (q > 0).astype(np.float32), (d > 0).astype(np.float32)
    cover = np.asarray([(qb[i] @ db[best[i]].T).toarray()[0, 0] / max(qb[i].sum(), 1) for i in range(q.shape[0])])
    cmed = float(np.median(cover))
    print(f"best hit's share of the question's terms: median {cmed:.3f}, p10-p90 "
          f"{np.percentile(cover, 10):.3f}-{np.percentile(cover, 90):.3f}")

    def covered(w: float, power: float) -> Callable[[int], float]:
        return lambda qi: w * (cover[qi] / cmed) ** power

    variants: dict[str, Callable[[int], float] | None] = {"best hit (the product)": None}
    variants |= {f"ceiling^{p:g}, weight {w:g} at the median": scaled(w, p)
                 for p in (0.25, 0.5, 0.75, 1.0) for w in (0.5, 0.55, 0.6)}
    variants |= {f"terms^{p:g}, weight {w:g} at the median": covered(w, p)
                 for p in (0.5, 1.0) for w in (0.5, 0.6)}
    b.report("hybrid, BM25 normalised by the question's ceiling",
             {label: b.per_query(bm, "hybrid", weight=fn) for label, fn in variants.items()},
             "best hit (the product)")


class WithBigrams:
    """The product's BM25 plus adjacent pairs of content words (stopwords dropped, Snowball stems, as the unigram
    side), a pair weighing ``weight`` in the query: phrase matching for multi-word terms ("vitamin D", "T cells").
    Pairs get BM25's term-frequency part with the chunk's content-word count as its length."""

    def __init__(self, weight: float, *, strict: bool = True, avg_len: float = 100, b: float = 0.3, k: float = 1.2):
        self.unigrams = Bm25Encoder(avg_len=avg_len, b=b, k=k)
        self.weight, self.strict, self.avg_len, self.b, self.k = weight, strict, avg_len, b, k
        self.signature = f"{self.unigrams.signature}:pairs={weight:g}:strict={strict}"
        self._stems: dict[str, int | None] = {}

    def _stem(self, word: str) -> int | None:
        if word not in self._stems:
            ids = self.unigrams.embed_query(word).indices
            self._stems[word] = ids[0] if len(ids) == 1 else None
        return self._stems[word]

    def _pairs(self, text: str) -> tuple[list[int], int]:
        """Pair ids (above every unigram id) and the number of content words; ``strict``: a stopword breaks a pair."""
        pairs, prev, words = [], None, 0
        for stem in map(self._stem, re.findall(r"\w+", text.lower())):
            if stem is None:
                prev = None if self.strict else prev
                continue
            words += 1
            if prev is not None:
                pairs.append((1 << 64) | (prev << 32) | stem)
            prev = stem
        return pairs, words

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        out = []
        for text, uni in zip(texts, self.unigrams.embed_documents(texts), strict=True):
            pairs, words = self._pairs(text)
            tf = Counter(pairs)
            norm = self.k * (1 - self.b + self.b * words / self.avg_len)
            out.append(SparseVector(uni.indices + tuple(tf), uni.values + tuple(f * (self.k + 1) / (f + norm)
                                                                               for f in tf.values())))
        return out

    def embed_query(self, text: str) -> SparseVector:
        uni, pairs = self.unigrams.embed_query(text), set(self._pairs(text)[0])
        return SparseVector(uni.indices + tuple(pairs), uni.values + (self.weight,) * len(pairs))


def _terms(text: str) -> list[int]:
    """The BM25 terms of ``text`` with repeats (b=0 and k -> the weight is tf/(tf+k)(k+1): invert it)."""
    v = Bm25Encoder(b=0.0, k=1.0).embed_documents([text])[0]
    out: list[int] = []
    for t, w in zip(v.indices, v.values, strict=True):
        out += [t] * round(w / (2 - w))  # w = 2 tf / (tf + 1)
    return out


if __name__ == "__main__":
    main()
