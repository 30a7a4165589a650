"""Retrieval quality on a BEIR-format dataset, through the product's own pipeline and retriever.

Each corpus record becomes one text file (title, blank line, text) that the normal ingestion pipeline chunks,
embeds and stores in a collection of its own; each query goes through the normal ``Retriever``. A document's
rank is the rank of its best chunk. Metrics come from ``pytrec_eval`` (trec_eval's own code).

With ``folds=K`` the queries are dealt into K folds (a fixed shuffle, the same for every mode, so modes are
compared on the same queries) and each metric is also reported per fold with its mean, spread and worst fold:
a setting that wins on average but loses in some fold is tuned to those queries, not to the collection.

With a reranker, each mode is measured twice, as ``<mode>`` and ``<mode>+rerank``, so the gain and its cost in
latency show side by side; the reranker reorders the first ``rerank_candidates`` chunks of each query.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from ingest import ingest
from rag.index.embeddings import Embedder, get_embedder
from rag.retrieval.rerank import Reranker
from rag.retrieval.retriever import Retriever
from rag.settings import RETRIEVAL_MODES, Settings
from rag.index.store import open_store

MODES = RETRIEVAL_MODES
#: Chunks fetched per query: enough distinct documents for Recall@100 when documents have several chunks.
CHUNKS_PER_QUERY = 200


@dataclass
class BeirDataset:
    name: str
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]  # only queries with judgements in the split
    qrels: dict[str, dict[str, int]]


def load_beir(path: Path, split: str = "test") -> BeirDataset:
    path = Path(path)
    qrels_file = path / "qrels" / f"{split}.tsv"
    for required in (path / "corpus.jsonl", path / "queries.jsonl", qrels_file):
        if not required.exists():
            raise FileNotFoundError(f"{required} is missing: a BEIR dataset has corpus.jsonl, queries.jsonl and "
                                    f"qrels/<split>.tsv (--split {split})")
    qrels: dict[str, dict[str, int]] = {}
    for i, line in enumerate(qrels_file.read_text().splitlines()):
        parts = line.strip().split("\t")
        if len(parts) < 3 or (i == 0 and not parts[2].strip().lstrip("-").isdigit()):
            continue  # header or blank
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    corpus: dict[str, tuple[str, str]] = {}
    with open(path / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                corpus[str(d["_id"])] = (d.get("title") or "", d.get("text") or "")
    queries: dict[str, str] = {}
    with open(path / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                if str(d["_id"]) in qrels:
                    queries[str(d["_id"])] = d["text"]
    return BeirDataset(path.name, corpus, queries, qrels)


def _file_name(doc_id: str) -> str:
    return quote(doc_id, safe="") + ".txt"


def _doc_id(path: str) -> str:
    return unquote(Path(path).name.removesuffix(".txt"))


def materialize(ds: BeirDataset, folder: Path) -> Path:
    """One file per record; unchanged files are not rewritten, so a second run's ingest skips them all."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id, (title, text) in ds.corpus.items():
        content = f"{title}\n\n{text}\n" if title else f"{text}\n"
        f = folder / _file_name(doc_id)
        if not f.exists() or f.read_text(encoding="utf-8") != content:
            f.write_text(content, encoding="utf-8")
    return folder


def eval_settings(settings: Settings, ds: BeirDataset) -> Settings:
    """The dataset's own data dir (never the company index), sharing the derived models."""
    return settings.model_copy(update={"data_dir": settings.data_dir / "eval" / ds.name,
                                       "models_dir_override": settings.models_dir, "qdrant_url": None})


def build_index(ds: BeirDataset, settings: Settings, *, embedder: Embedder | None = None,
                progress: Callable | None = None):
    """Ingest the corpus (incrementally: a second run only checks hashes). Returns the ingest report."""
    es = eval_settings(settings, ds)
    folder = materialize(ds, es.data_dir / "corpus")
    return ingest([folder], es, embedder=embedder, progress=progress)


def evaluate(ds: BeirDataset, settings: Settings, modes: Sequence[str] = MODES, *,
             embedder: Embedder | None = None, limit: int | None = None,
             reranker: Reranker | None = None, folds: int | None = None) -> dict[str, dict]:
    """Metrics per mode; with ``reranker``, also per ``<mode>+rerank``. The settings' own reranker is not used:
    the caller decides (``rag eval retrieval --rerank/--no-rerank``). ``folds``: see the module's docstring."""
    import pytrec_eval

    es = eval_settings(settings, ds)
    embedder = embedder or get_embedder(es)
    qids = sorted(ds.queries)[:limit] if limit else sorted(ds.queries)
    qrels = {q: ds.qrels[q] for q in qids}
    if folds is not None and not 2 <= folds <= len(qids):
        raise ValueError(f"--folds must be between 2 and the number of queries ({len(qids)}), not {folds}")
    fold_sets = deal_folds(qids, folds) if folds else []
    results: dict[str, dict] = {}
    with open_store(es) as store:
        for mode in modes:
            retriever = Retriever.from_settings(es.model_copy(update={"retrieval_mode": mode}), store, embedder,
                                                top_k=CHUNKS_PER_QUERY, min_score=float("-inf"), reranker=reranker)
            if retriever.effective_mode != mode:
                raise RuntimeError(f"the evaluation index has no sparse vectors; delete {es.data_dir} and rerun")
            variants = [(mode, False)] + ([(f"{mode}+rerank", True)] if reranker is not None else [])
            for name, rerank in variants:
                run: dict[str, dict[str, float]] = {}
                latencies = []
                for q in qids:
                    t = time.perf_counter()
                    passages = retriever.retrieve(ds.queries[q], rerank=rerank).passages
                    latencies.append((time.perf_counter() - t) * 1000)
                    ranked: list[str] = []
                    for p in passages:
                        d = _doc_id(p.path)
                        if d not in ranked:
                            ranked.append(d)
                    # Scores that encode the rank: trec_eval sorts by score, and ties would reorder by id.
                    run[q] = {d: float(len(ranked) - i) for i, d in enumerate(ranked[:100])}
                per_query = _per_query(pytrec_eval, qrels, run)
                results[name] = _mean(per_query, qids) | {
                    "p50_ms": round(statistics.median(latencies), 2),
                    "p95_ms": round(float(np.percentile(latencies, 95)), 2),
                    "queries": len(qids),
                }
                if fold_sets:
                    results[name]["folds"] = fold_summary(per_query, fold_sets)
    return results


def deal_folds(qids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """K folds of near-equal size from a fixed shuffle: the same queries land in the same fold on every run."""
    shuffled = random.Random(seed).sample(sorted(qids), len(qids))
    return [sorted(shuffled[i::k]) for i in range(k)]


def fold_summary(per_query: dict[str, dict[str, float]], fold_sets: Sequence[Sequence[str]]) -> dict:
    """Per metric: each fold's mean, and the mean, sample standard deviation and worst of those."""
    per_fold = [_mean(per_query, f) for f in fold_sets]
    out: dict = {"k": len(fold_sets)}
    for metric in METRICS:
        values = [m[metric] for m in per_fold]
        out[metric] = {"per_fold": values, "mean": round(statistics.fmean(values), 4),
                       "stdev": round(statistics.stdev(values), 4), "min": min(values), "max": max(values)}
    return out


METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def _per_query(pytrec_eval, qrels: dict, run: dict) -> dict[str, dict[str, float]]:
    """Each judged query's metrics; queries the run missed entirely count as 0, as BEIR does."""
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100"}).evaluate(run)
    top10 = {q: dict(sorted(r.items(), key=lambda kv: -kv[1])[:10]) for q, r in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {q: {"ndcg@10": full.get(q, {}).get("ndcg_cut_10", 0.0), "recall@10": full.get(q, {}).get("recall_10", 0.0),
                "recall@100": full.get(q, {}).get("recall_100", 0.0), "mrr@10": mrr.get(q, {}).get("recip_rank", 0.0)}
            for q in qrels}


def _mean(per_query: dict[str, dict[str, float]], qids: Sequence[str]) -> dict[str, float]:
    return {m: round(sum(per_query[q][m] for q in qids) / len(qids), 4) for m in METRICS}


def _metrics(pytrec_eval, qrels: dict, run: dict) -> dict[str, float]:
    return _mean(_per_query(pytrec_eval, qrels, run), list(qrels))

