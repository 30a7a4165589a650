"""Query latency of the embedded store by retrieval mode and index size, and the non-LLM work per question.

    .venv/bin/python bench/query.py                    # 10k and 100k chunks, table on stdout
    .venv/bin/python bench/query.py --sizes 10000 --json
    .venv/bin/python bench/query.py --synthetic 100000 300000 --kinds exact hnsw hnsw-int8   # index kinds

--synthetic (index kinds, no BM25, no per-question part): clustered unit vectors (384-d; 2,000 centres, a
point's cosine to its centre ~0.7, like chunks of one topic), one in four points in group "hr" (the 25 %
permission filter). Loaded once, then for each kind in turn the store is reopened with RAG_INDEX_KIND=<kind>
in a fresh process (so its RSS is its own) which builds what the kind needs from the stored vectors — no
re-ingest, exactly as a switch would — and times top-10 queries without and with the filter; recall@10 is
against numpy's exact top 10 (with the same filter).

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
from rag.index.store.base import IndexOptions  # noqa: E402
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


def _pad(store, n: int) -> None:  # noqa: ANN001 (a Store)
    """``n`` synthetic chunks (random unit vectors, BM25 of word salad) beside the real ones, so retrieval
    searches an index of that size; their vectors are unrelated to the questions, as other topics would be."""
    rng = np.random.default_rng(0)
    bm25 = Bm25Encoder()
    for start in range(0, n, 2000):
        m = min(2000, n - start)
        vecs, texts = unit(rng, m), [words(rng, 120) for _ in range(m)]
        sparse = bm25.embed_documents(texts)
        store.upsert_chunks([ChunkPoint(chunk_id(f"/pad{(start + i) // 10}", "s", i % 10), vecs[i].tolist(),
                                        {"path": f"/pad{(start + i) // 10}", "text": texts[i], "groups": ["staff"]},
                                        sparse[i]) for i in range(m)])


def bench_question(queries: int = 50, pad: int = 0, keep: Path | None = None) -> dict:
    from ingest import ingest
    from rag.index.embeddings import get_embedder
    from rag.generation.packing import format_source, join_sources, pack
    from rag.generation.prompts import SYSTEM_PROMPT, user_message
    from rag.retrieval.retriever import Retriever
    from rag.settings import Settings
    from rag.index.store import open_store

    questions = [q["question"] for q in json.loads((ROOT / "tests" / "data" / "sample_questions.json").read_text())]
    with tempfile.TemporaryDirectory() as d:
        # --keep-dir: build once (ingest + padding + graph take minutes), time again later on a quiet machine.
        ready = keep / f"ready-{pad}" if keep else None
        settings = Settings(data_dir=keep or Path(d))
        embedder = get_embedder(settings)
        out: dict = {}
        if ready is None or not ready.exists():
            ingest([ROOT / "sample_docs"], settings, embedder=embedder)
        if pad and (ready is None or not ready.exists()):
            with open_store(settings) as store:
                _pad(store, pad)
                t0 = time.perf_counter()
                out["index"] = store.build_index().to_dict() | {"build_s": round(time.perf_counter() - t0, 1)}
        if ready is not None:
            ready.touch()

        class _Counter:  # the embedding model's tokenizer stands in for the LLM's (no server in this bench)
            def count(self, text: str) -> int:
                return embedder.count_tokens(text)

        counter = _Counter()
        # The question's embedding alone, to tell the model's share from the index's.
        embedder.embed_query(questions[0])
        lat = []
        for i in range(queries):
            t = time.perf_counter()
            embedder.embed_query(questions[i % len(questions)])
            lat.append((time.perf_counter() - t) * 1000)
        out["embed_only"] = {"p50_ms": round(statistics.median(lat), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2)}
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


CENTRES = 2000


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """Unit vectors around random centres: HNSW on uniform random 384-d vectors is a worst case no text
    embedding resembles."""
    v = centres[rng.integers(0, len(centres), size=n)] + rng.normal(scale=1.0 / np.sqrt(DIM), size=(n, DIM))
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rss_mb() -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def _disk_mb(path: Path) -> float:
    """Blocks really used (the engine preallocates sparse files, so sizes overstate)."""
    return round(sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 1e6, 1)


def _kind_phase(root: str, kind: str, efs: list[int], acorns: list[bool], qv: np.ndarray,
                truth: dict[str, list[set[str]]]) -> dict:
    """In a fresh process: open the store with ``kind``, build, time and score queries (per hnsw_ef)."""
    out: dict = {"kind": kind, "runs": []}
    t0 = time.perf_counter()
    store = EdgeStore(Path(root), IndexOptions(kind=kind))  # type: ignore[arg-type]
    state = store.build_index()
    out["build_s"] = round(time.perf_counter() - t0, 1)
    out["indexed"] = state.indexed
    out["rss_after_build_mb"] = _rss_mb()
    store.close()
    combos = [(ef, acorn) for ef in efs for acorn in acorns] if kind != "exact" else [(efs[0], False)]
    for ef, acorn in combos:
        store = EdgeStore(Path(root), IndexOptions(kind=kind, ef=ef, acorn=acorn))  # type: ignore[arg-type]
        run: dict = {"ef": ef if kind != "exact" else None, "acorn": acorn}
        for label, flt in (("dense", None), ("dense+filter", SearchFilter(groups_any=("hr",)))):
            store.query(qv[0].tolist(), 10, flt)  # warm
            lat, recall = [], []
            for i in range(len(qv)):
                t = time.perf_counter()
                hits = store.query(qv[i].tolist(), 10, flt)
                lat.append((time.perf_counter() - t) * 1000)
                recall.append(len({h.id for h in hits} & truth[label][i]) / 10)
                if flt is not None:
                    assert all("hr" in h.payload["groups"] for h in hits), "the filter let a forbidden chunk through"
            run[label] = {"p50_ms": round(statistics.median(lat), 2),
                          "p95_ms": round(float(np.percentile(lat, 95)), 2),
                          "recall@10": round(float(np.mean(recall)), 4)}
        run["rss_serving_mb"] = _rss_mb()["VmRSS"]
        store.close()
        out["runs"].append(run)
    out["peak_rss_mb"] = _rss_mb()["VmHWM"]
    out["disk_mb"] = _disk_mb(Path(root) / "chunks")
    return out


def bench_synthetic(n: int, kinds: list[str], efs: list[int], acorns: list[bool], queries: int = 200) -> dict:
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    rng = np.random.default_rng(n)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    base = tempfile.mkdtemp(prefix="rag-bench-", dir=tempfile.gettempdir())
    root = Path(base) / "s"
    ids: list[str] = []
    hr = np.zeros(n, dtype=bool)
    vecs = np.empty((n, DIM), dtype=np.float32)
    store = EdgeStore(root, IndexOptions(kind="exact"))
    store.ensure_ready(DIM, "bench")
    t0 = time.perf_counter()
    for start in range(0, n, 5000):
        m = min(5000, n - start)
        vecs[start:start + m] = clustered(rng, centres, m)
        batch = []
        for i in range(start, start + m):
            path = f"/doc{i // 10}"
            hr[i] = i % 4 == 0
            batch.append(ChunkPoint(chunk_id(path, "s", i % 10), vecs[i].tolist(),
                                    {"path": path, "chunk_index": i % 10, "text": f"chunk {i}",
                                     "groups": ["hr"] if hr[i] else ["staff"]}))
            ids.append(batch[-1].id)
        store.upsert_chunks(batch)
    store.close()
    out: dict = {"chunks": n, "load_s": round(time.perf_counter() - t0, 1), "kinds": []}
    qv = clustered(rng, centres, queries)
    idarr = np.array(ids)
    truth: dict[str, list[set[str]]] = {"dense": [], "dense+filter": []}
    for q in qv:
        sims = vecs @ q
        truth["dense"].append(set(idarr[np.argpartition(-sims, 10)[:10]]))
        sims[~hr] = -np.inf
        truth["dense+filter"].append(set(idarr[np.argpartition(-sims, 10)[:10]]))
    del vecs
    out["numpy_truth_mb"] = _rss_mb()
    # One process per kind (max_tasks_per_child): its RSS is the store's alone, not the loader's or the last kind's.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        for kind in kinds:
            r = pool.submit(_kind_phase, str(root), kind, efs, acorns, qv, truth).result()
            print(json.dumps({"chunks": n} | r), file=sys.stderr, flush=True)
            out["kinds"].append(r)
    import shutil

    shutil.rmtree(base, ignore_errors=True)
    return out


def _ef(run: dict) -> str:
    return "-" if run["ef"] is None else f"{run['ef']}{'+acorn' if run['acorn'] else ''}"


def main_synthetic(args: argparse.Namespace) -> None:
    results = [bench_synthetic(n, args.kinds, args.ef, [False, True] if args.acorn else [False]) for n in args.synthetic]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("index kinds, top 10, 200 queries, 25 % filter; latency ms p50/p95, recall@10 vs exact")
    print(f"{'chunks':>8} {'kind':>10} {'ef':>9} {'build s':>8} {'dense':>13} {'rec':>6} {'filtered':>13} "
          f"{'rec':>6} {'RSS MB':>7} {'peak MB':>8} {'disk MB':>8}")
    for r in results:
        for k in r["kinds"]:
            for run in k["runs"]:
                d, f = run["dense"], run["dense+filter"]
                print(f"{r['chunks']:>8} {k['kind']:>10} {_ef(run):>9} {k['build_s']:>8} "
                      f"{d['p50_ms']:>6.2f}/{d['p95_ms']:<6.2f} {d['recall@10']:>6.3f} "
                      f"{f['p50_ms']:>6.2f}/{f['p95_ms']:<6.2f} {f['recall@10']:>6.3f} "
                      f"{run['rss_serving_mb']:>7} {k['peak_rss_mb']:>8} {k['disk_mb']:>8}")
        print(f"{r['chunks']:>8} loaded in {r['load_s']} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--synthetic", type=int, nargs="+", help="index-kind benchmark at these chunk counts")
    ap.add_argument("--kinds", nargs="+", default=["exact", "hnsw", "hnsw-int8"],
                    choices=["exact", "hnsw", "hnsw-int8"])
    ap.add_argument("--question-chunks", type=int, default=0,
                    help="per question: pad the index with this many synthetic chunks (its kind chosen by auto)")
    ap.add_argument("--question-only", action="store_true", help="only the per-question part, as JSON")
    ap.add_argument("--keep-dir", type=Path, help="per-question part: build its index here once and reuse it")
    ap.add_argument("--queries", type=int, default=50,
                    help="per-question part: questions timed per mode (50 make the p95 the 3rd-worst sample)")
    ap.add_argument("--acorn", action="store_true", help="also time each ef with ACORN for the filtered queries")
    ap.add_argument("--ef", type=int, nargs="+", default=[128], help="hnsw_ef values to time (no rebuild)")
    args = ap.parse_args()
    if args.synthetic:
        main_synthetic(args)
        return
    if args.question_only:
        print(json.dumps(bench_question(args.queries, pad=args.question_chunks, keep=args.keep_dir), indent=2))
        return
    result = {"store": [bench_store(n) for n in args.sizes],
              "per_question_no_llm": bench_question(args.queries, pad=args.question_chunks, keep=args.keep_dir)}
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
        if mode == "index":
            print(f"  index: {r}")
            continue
        print(f"  {mode:>7}: {r['p50_ms']:.1f} / {r['p95_ms']:.1f}")


if __name__ == "__main__":
    main()
