"""Time the citation check adds to one answer: a 10-sentence answer citing 5 sources, checked as the chain checks
it (sentences embedded in one batch, the chunks' vectors read from the store).

    .venv/bin/python bench/citation_check.py              # sample_docs/ into a temporary store, 30 runs
    .venv/bin/python bench/citation_check.py --runs 100 --json

Prints the median and 90th percentile wall time per answer, and the process CPU time per answer (on a busy
machine the wall time includes waiting for a core; CPU time / cores used is the idle machine's figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag import offline  # noqa: E402

offline.apply()

from ingest import ingest  # noqa: E402
from rag.generation.packing import Source  # noqa: E402
from rag.generation.support import SupportScorer, check_answer, split_sentences  # noqa: E402
from rag.index.embeddings import get_embedder  # noqa: E402
from rag.index.store import open_store  # noqa: E402
from rag.retrieval.retriever import Retriever  # noqa: E402
from rag.settings import Settings  # noqa: E402
from rag.types import Answer, Citation  # noqa: E402

QUESTION = "What are the rules for business travel, hotels and meal allowances?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        embedder = get_embedder(settings)
        ingest([ROOT / "sample_docs"], settings, embedder=embedder)
        with open_store(settings) as store:
            passages = Retriever.from_settings(settings, store, embedder).retrieve(QUESTION, top_k=5).passages
            sources = [Source(i, p.path, p.source, [p], p.text, 0, p.score) for i, p in enumerate(passages, 1)]
            # Two sentences of each source, each citing it: 10 sentences, 5 sources.
            sentences = [f"{s} [{src.n}]" for src in sources
                         for s in [x for x in split_sentences(src.text) if len(x.split()) >= 6][:2]]
            text = " ".join(sentences)
            scorer = SupportScorer(embedder, threshold=settings.citation_threshold)
            wall, cpu = [], []
            for i in range(args.runs + 3):
                answer = Answer(QUESTION, QUESTION, text, [
                    Citation(s.n, s.path, s.source, None, None, None, "", s.score, True, text=s.text)
                    for s in sources], False, {}, {}, None, None)
                t, c = time.perf_counter(), time.process_time()
                check_answer(answer, sources, scorer, store.vectors)
                if i >= 3:  # warm-up: the first runs load the tokenizer's caches
                    wall.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
    result = {"sentences": len(sentences), "sources": len(sources), "runs": args.runs,
              "wall_ms_median": round(statistics.median(wall) * 1000, 1),
              "wall_ms_p90": round(sorted(wall)[int(0.9 * (len(wall) - 1))] * 1000, 1),
              "cpu_ms_median": round(statistics.median(cpu) * 1000, 1),
              "verdicts": {c.n: c.verdict for c in answer.sources}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"citation check, {result['sentences']} sentences citing {result['sources']} sources: "
              f"{result['wall_ms_median']} ms median, {result['wall_ms_p90']} ms p90 (wall); "
              f"{result['cpu_ms_median']} ms CPU (all threads)")


if __name__ == "__main__":
    main()
