"""A chunk's dense score from 128-token windows beside its whole vector (multi-vector chunks), on a BEIR dataset.

    RAG_DATA_DIR=/work/evaldata .venv/bin/python bench/windows.py ../shared/eval/scifact --split train
    ... bench/windows.py ../shared/eval/scifact --split train --window 128 --stride 128
    ... bench/windows.py ../shared/eval/scifact --split train --window 96 --stride 72 --rescore --late

all-MiniLM-L6-v2 was trained on inputs of at most 128 tokens and embeds up to 256, the chunk size; shorter chunks
help its side and hurt BM25 (bench/README.md). This asks whether a 256-token chunk can keep its size and still be
matched by its parts: every chunk longer than ``--window`` tokens is cut into windows (``--stride`` apart, cut at
the embedder's own token offsets) and each window embedded, what Qdrant would store as a multivector with MAX_SIM
(``--late``: pooled from the chunk's own token vectors instead, one forward pass for both).
A chunk then scores by its whole vector, by its best window, by the larger of the two, or by their mean.

The int8 ONNX model's vectors depend on which texts share a batch, so the whole chunks are embedded again here
(``whole``) rather than compared with the stored vectors (``stored``, shown for scale). Hybrid ranks as
Retriever._search does (score fusion, dense feedback; the moved vector scored the same way as the question's),
with bench/bm25.py's in-memory BM25 over the index `rag eval retrieval` built. Reported like bench/bm25.py: nDCG@10
on all queries, per fold and nested; ``--grid`` adds the fusion weight and feedback settings around the defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag import offline  # noqa: E402

offline.apply()

from evaluation.retrieval import _per_query  # noqa: E402
from rag.index.embeddings import get_embedder  # noqa: E402
from rag.index.sparse import get_sparse_encoder  # noqa: E402
from rag.index.windows import positions  # noqa: E402
from rag.index.store import Hit  # noqa: E402
from rag.retrieval.fusion import feedback_vector, score_fusion  # noqa: E402

# bench/ is not a package, and a sibling named ingest.py would shadow the product's ingest package on sys.path.
_spec = importlib.util.spec_from_file_location("bench_bm25", Path(__file__).with_name("bm25.py"))
assert _spec and _spec.loader
bm25 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bm25)

DEPTH = 100  # candidates each side, RAG_HYBRID_PREFETCH


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _token_model(settings):
    """The embedding model through sentence-transformers, whose encode() also gives token vectors (the product
    runs the int8 model with onnxruntime alone, which gives pooled ones only)."""
    from rag.index.embeddings import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(settings.embedding_model, backend=settings.embedding_backend,
                                       models_dir=settings.models_dir, batch=True, full=True)._model


class Windows:
    """The bench's chunks embedded whole and in windows, and the ways of scoring a chunk from them."""

    def __init__(self, b, window: int, stride: int, rescore: bool = False, late: bool = False) -> None:
        self.b, self.rescore = b, rescore
        embedder = get_embedder(b.settings, batch=True)
        self.bm = b.bm25(get_sparse_encoder(b.settings))
        texts = [h.payload["text"] for h in b.chunks]
        # --late: the chunk's own forward pass, its token vectors ([CLS] tokens [SEP]) mean-pooled over the whole
        # (what the model's pooling does) and over each window ("late chunking": no second pass).
        tokens = ([t.float().numpy() for t in _token_model(b.settings).encode(
            texts, batch_size=32, output_value="token_embeddings", convert_to_numpy=False)] if late else None)
        self.whole = unit(np.asarray([t.mean(0) for t in tokens]) if tokens else embedder.embed_documents(texts))
        windows, owner = [], []
        for i, text in enumerate(texts):
            offsets = [o for o in embedder.token_offsets(text) if o[1] > o[0]]
            for start, end in positions(len(offsets), window, stride):
                windows.append(tokens[i][1 + start:1 + end].mean(0) if tokens else
                               text[offsets[start][0]:offsets[end - 1][1]])
                owner.append(i)
        self.vectors = unit(np.asarray(windows) if tokens else embedder.embed_documents(windows))
        owners = np.asarray(owner)
        self.order = np.argsort(owners, kind="stable")
        self.starts = np.r_[0, np.flatnonzero(np.diff(owners[self.order])) + 1]
        self.cut = owners[self.order][self.starts]  # the chunks that have windows, one per segment of ``order``
        self.summary = (f"{len(b.qids)} queries, {len(texts)} chunks, {len(windows)} windows of {window} tokens "
                        f"(stride {stride}) for {len(self.cut)} chunks")
        self.scorers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "whole": lambda q: q @ self.whole.T,
            "best window": lambda q: np.where(np.isnan(w := self.best_window(q)), q @ self.whole.T, w),
            "max(whole, best window)": lambda q: np.fmax(q @ self.whole.T, self.best_window(q)),
            "mean(whole, best window)": lambda q: np.where(np.isnan(w := self.best_window(q)), q @ self.whole.T,
                                                           (q @ self.whole.T + w) / 2),
        }

    def best_window(self, q: np.ndarray) -> np.ndarray:
        """queries x chunks: the best window's cosine, NaN for a chunk too short for windows."""
        out = np.full((q.shape[0], len(self.whole)), np.nan, dtype=np.float32)
        out[:, self.cut] = np.maximum.reduceat((q @ self.vectors.T)[:, self.order], self.starts, axis=1)
        return out

    def run(self, name: str, mode: str, weight: float, feedback: tuple[int, float]) -> dict[str, dict[str, float]]:
        """Per-query metrics of one scorer (or ``stored``: the index's own vectors) in dense or hybrid mode."""
        import pytrec_eval

        b = self.b
        score = self.scorers.get(name)
        vectors = self.whole if score else b.dense
        cos = score(b.queries) if score else b.cos
        ranked_docs = {}
        # --rescore: candidates (and feedback hits) by the chunk's own cosine, as the store's graph finds them, then
        # ranked by the scorer: Retriever._search with RAG_DENSE_WINDOWS.
        own = ((b.queries @ self.whole.T) if score else b.cos) if self.rescore else cos
        for qi, q in enumerate(b.qids):
            found = b.top(own[qi], False, DEPTH)
            d = found[np.argsort(-cos[qi, found], kind="stable")]
            hits = list(d)
            if mode == "hybrid":
                s = b.top(self.bm[qi], True, DEPTH)
                moved = feedback_vector(b.queries[qi], list(vectors[found[:feedback[0]]]), feedback[1])
                moved_cos = score(moved[None, :])[0] if score else b.dense @ moved
                fused = score_fusion([Hit(str(i), float(cos[qi, i]), {}) for i in d],
                                     [Hit(str(i), float(self.bm[qi, i]), {}, float(cos[qi, i])) for i in s], weight,
                                     DEPTH, {str(i): float(moved_cos[i]) for i in np.union1d(d, s)})
                hits = [int(h.id) for h in fused]
            docs = list(dict.fromkeys(b.docs[i] for i in hits))[:100]
            ranked_docs[q] = {doc: float(len(docs) - r) for r, doc in enumerate(docs)}
        return _per_query(pytrec_eval, b.qrels, ranked_docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--window", type=int, default=128, help="tokens per window")
    ap.add_argument("--stride", type=int, default=96, help="tokens from one window's start to the next")
    ap.add_argument("--grid", action="store_true", help="also fusion weights 0.4-0.7 x feedback settings")
    ap.add_argument("--rescore", action="store_true",
                    help="candidates by the chunk's own cosine, then ranked by the scorer (what the product does)")
    ap.add_argument("--late", action="store_true",
                    help="windows pooled from the whole chunk's token vectors (late chunking) instead of embedded alone")
    args = ap.parse_args()
    t0 = time.monotonic()
    b = bm25.Bench(args.dataset, args.split)
    w = Windows(b, args.window, args.stride, args.rescore, args.late)
    print(f"{w.summary}; embedded in {time.monotonic() - t0:.0f} s")
    defaults = (b.weight, b.feedback)
    names = ["whole", "stored", *list(w.scorers)[1:]]
    for mode in ("dense", "hybrid"):
        b.report(f"{mode}, windows {args.window}/{args.stride}", {n: w.run(n, mode, *defaults) for n in names},
                 "whole")
    if args.grid:
        per = {"whole (defaults)": w.run("whole", "hybrid", *defaults)}
        for name in ("max(whole, best window)", "mean(whole, best window)"):
            for weight in (0.4, 0.5, 0.6, 0.7):
                for fb in ((5, 0.25), (3, 0.25), (5, 0.5), (0, 0.0)):
                    per[f"{name} w={weight:g} feedback {fb[0]}x{fb[1]:g}"] = w.run(name, "hybrid", weight, fb)
        b.report(f"hybrid, windows {args.window}/{args.stride}, fusion weight x feedback", per, "whole (defaults)")


if __name__ == "__main__":
    main()
