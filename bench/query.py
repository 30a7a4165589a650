"""Query latency of the embedded store by retrieval mode and index size, and the non-LLM work per question.

    .venv/bin/python bench/query.py                    # 10k and 100k chunks, table on stdout
    .venv/bin/python bench/query.py --sizes 10000 --json

Part 1 (store): synthetic chunks — random unit dense vectors (384-d, like MiniLM) and BM25 vectors of
word-salad text drawn from a Zipf vocabulary — in a fresh qdrant-edge store; queries are timed in the store
only (no embedding), dense vs sparse vs hybrid, with and without a permission filter.
Part 2 (per question, no LLM): the real embedder and sample_docs/ — embed + retrieve + pack + build the
prompt, as `RAG.pack` does before the LLM call, with the packer counting tokens locally.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag import offline  # noqa: E402

offline.apply()

from rag.index.sparse import Bm25Encoder  # noqa: E402
from rag.index.store import ChunkPoint, SearchFilter, chunk_id  # noqa: E402
from rag.index.store.edge import EdgeStore  # noqa: E402

DIM = 384
VOCAB = 30_000


def words(rng: np.random.Generator, n: int) -> str:
    ids = np.minimum(rng.zipf(1.2, size=n), VOCAB)
    return " ".join(f"w{i}" for i in ids)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bench_store(n: int, queries: int = 200) -> dict:
    rng = np.random.default_rng(n)
    bm25 = Bm25Encoder()
    with tempfile.TemporaryDirectory() as d:
        store = EdgeStore(Path(d) / "s")
        store.ensure_ready(DIM, "bench")
        t0 = time.perf_counter()
        for start in range(0, n, 2000):
            m = min(2000, n - start)
            vecs = unit(rng, m)
            texts = [words(rng, 120) for _ in range(m)]
            sparse = bm25.embed_documents(texts)
            store.upsert_chunks([
                ChunkPoint(chunk_id(f"/doc{(start + i) // 10}", "s", (start + i) % 10), vecs[i].tolist(),
                           {"path": f"/doc{(start + i) // 10}", "text": texts[i],
                            "groups": ["staff"] if (start + i) % 4 else ["hr"]}, sparse[i])
                for i in range(m)])
        load_s = time.perf_counter() - t0
        out = {"chunks": n, "load_s": round(load_s, 1)}
        qv = unit(rng, queries)
        qs = [bm25.embed_query(words(rng, 6)) for _ in range(queries)]
        for mode in ("dense", "sparse", "hybrid"):
            for label, flt in (("", None), ("+filter", SearchFilter(groups_any=("hr",)))):
                store.query(qv[0].tolist(), 20, flt, sparse=qs[0], mode=mode, rrf_k=5, prefetch=100)  # warm
                lat = []
                for i in range(queries):
                    t = time.perf_counter()
                    store.query(qv[i].tolist(), 20, flt, sparse=qs[i], mode=mode, rrf_k=5, prefetch=100)
                    lat.append((time.perf_counter() - t) * 1000)
                out[f"{mode}{label}"] = {"p50_ms": round(statistics.median(lat), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2)}
        store.close()
    return out


def bench_question(queries: int = 50) -> dict:
    from ingest import ingest
    from rag.index.embeddings import get_embedder
    from rag.generation.packing import format_source, join_sources, pack
    from rag.generation.prompts import SYSTEM_PROMPT, user_message
    from rag.retrieval.retriever import Retriever
    from rag.settings import Settings
    from rag.index.store import open_store

    questions = [q["question"] for q in json.loads((ROOT / "tests" / "data" / "sample_questions.json").read_text())]
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(data_dir=Path(d))
        embedder = get_embedder(settings)
        ingest([ROOT / "sample_docs"], settings, embedder=embedder)
        out = {}

        class _Counter:  # the embedding model's tokenizer stands in for the LLM's (no server in this bench)
            def count(self, text: str) -> int:
                return embedder.count_tokens(text)

        counter = _Counter()
        with open_store(settings) as store:
            for mode in ("dense", "hybrid"):
                r = Retriever.from_settings(settings.model_copy(update={"retrieval_mode": mode}), store, embedder)
                r.retrieve(questions[0])  # warm
                lat = []
                for i in range(queries):
                    q = questions[i % len(questions)]
                    t = time.perf_counter()
                    found = r.retrieve(q)
                    packing = pack(found.passages, question=q, system_prompt=SYSTEM_PROMPT, context_window=8192,
                                   max_output_tokens=512, counter=counter)
                    user_message(join_sources([format_source(s.n, s) for s in packing.sources]), q)
                    lat.append((time.perf_counter() - t) * 1000)
                out[mode] = {"p50_ms": round(statistics.median(lat), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = {"store": [bench_store(n) for n in args.sizes], "per_question_no_llm": bench_question()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("store query latency (ms, p50 / p95), top 20, 200 queries")
    cols = ["dense", "dense+filter", "sparse", "sparse+filter", "hybrid", "hybrid+filter"]
    print(f"{'chunks':>8} {'load s':>7} " + " ".join(f"{c:>15}" for c in cols))
    for r in result["store"]:
        print(f"{r['chunks']:>8} {r['load_s']:>7} "
              + " ".join(f"{r[c]['p50_ms']:>7.2f}/{r[c]['p95_ms']:<7.2f}" for c in cols))
    print("per question without the LLM (embed + retrieve + pack + prompt), sample_docs, ms p50 / p95:")
    for mode, r in result["per_question_no_llm"].items():
        print(f"  {mode:>7}: {r['p50_ms']:.1f} / {r['p95_ms']:.1f}")


if __name__ == "__main__":
    main()
