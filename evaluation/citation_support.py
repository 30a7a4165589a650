"""How well the citation check (rag/generation/support.py) tells a backed citation from a wrong one, on data built
from documents: calibrate its weight and threshold on one half, report on the other.

The set is built from a folder of documents (sample_docs/ by default), parsed and chunked as ingestion does and
embedded as the index holds them. Each sentence of a chunk becomes a claim, twice: verbatim, and reworded (a
lead-in as a model writes one, a quarter of its non-number words dropped) since models rarely copy. Each claim is
paired with

- its own chunk: supported;
- the chunk most similar to it that does not contain it (a hard negative: what a model citing the wrong one of
  several sources on the same topic points to), and a random chunk of the same document: unsupported.

Neighbouring chunks of its own (they overlap) and any chunk containing the sentence are never negatives. The
split is by sentence (a hash), so a sentence's true and wrong pairs are on the same side.

The held-in question file (tests/data/sample_qa.jsonl) gives a second measurement, never used to calibrate: each
question with its reference answer as a claim ("<question>: <answer>"), against the chunk of the expected source
that holds the answer (supported) and the most similar chunk that does not (unsupported).

    python -m evaluation.citation_support [--docs sample_docs] [--qa tests/data/sample_qa.jsonl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.answers import load_qa, normalize
from ingest.chunking import Chunk, chunk_document
from ingest.parsers import is_supported, parse
from rag.generation.support import SourceText, SupportScorer, split_sentences, terms
from rag.index.embeddings import Embedder, get_embedder
from rag.settings import Settings

_LEADS = ("According to the documents, ", "The policy says that ", "Note that ", "In short, ", "")


@dataclass(frozen=True)
class Pair:
    claim: str
    chunk: int  # index into the corpus' chunks
    supported: bool
    kind: str  # "true", "hard" or "random"
    group: str  # the sentence it came from: the unit of the calibration/measurement split


@dataclass
class Corpus:
    chunks: list[Chunk]
    doc_of: list[str]
    vectors: np.ndarray


def load_corpus(docs: Path, settings: Settings, embedder: Embedder) -> Corpus:
    chunks: list[Chunk] = []
    doc_of: list[str] = []
    for path in sorted(p for p in docs.iterdir() if p.is_file() and is_supported(p)):
        for c in chunk_document(parse(path, settings), embedder, settings.chunk_tokens, settings.chunk_overlap_tokens):
            chunks.append(c)
            doc_of.append(path.name)
    return Corpus(chunks, doc_of, embedder.embed_documents([c.text for c in chunks]))


def _flat(text: str) -> str:
    return " ".join(normalize(text).split())


def reword(sentence: str, rng: random.Random) -> str:
    words = sentence.split()
    kept = [w for w in words if re.search(r"\d", w) or rng.random() > 0.25] or words
    body = " ".join(kept)
    lead = rng.choice(_LEADS)
    return lead + (body[0].lower() + body[1:] if lead and body[:2] != body[:2].upper() else body)


def _negatives(corpus: Corpus, own: int, flat_sentence: str, vec: np.ndarray, rng: random.Random) -> list[tuple[int, str]]:
    def allowed(j: int) -> bool:
        same_doc = corpus.doc_of[j] == corpus.doc_of[own]
        return j != own and not (same_doc and abs(j - own) == 1) and flat_sentence not in _flat(corpus.chunks[j].text)

    order = np.argsort(-(corpus.vectors @ vec))
    hard = next((int(j) for j in order if allowed(int(j))), None)
    same = [j for j in range(len(corpus.chunks)) if corpus.doc_of[j] == corpus.doc_of[own] and allowed(j) and j != hard]
    out = [(hard, "hard")] if hard is not None else []
    if same:
        out.append((rng.choice(same), "random"))
    return out


def build_pairs(corpus: Corpus, embedder: Embedder, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    seen: set[str] = set()
    sentences: list[tuple[str, int]] = []
    for i, c in enumerate(corpus.chunks):
        for s in split_sentences(c.text):
            s = " ".join(s.split())
            if len(terms(s)) >= 4 and len(s.split()) <= 60 and _flat(s) not in seen:
                seen.add(_flat(s))
                sentences.append((s, i))
    vecs = embedder.embed_documents([s for s, _ in sentences])
    pairs: list[Pair] = []
    for (s, own), vec in zip(sentences, vecs, strict=True):
        group = hashlib.sha256(s.encode()).hexdigest()
        negatives = _negatives(corpus, own, _flat(s), vec, rng)
        for claim in (s, reword(s, rng)):
            pairs.append(Pair(claim, own, True, "true", group))
            pairs += [Pair(claim, j, False, kind, group) for j, kind in negatives]
    return pairs


def qa_pairs(corpus: Corpus, qa_file: Path, embedder: Embedder) -> list[Pair]:
    """The question file's answerable items with a source, as claims against the chunk that holds the answer."""
    pairs: list[Pair] = []
    for item in load_qa(qa_file):
        if not item.answers or not item.source:
            continue
        claim = f"{item.question.rstrip('?')}: {item.answers[0]}."
        refs = [_flat(a) for a in item.answers]
        holds = [j for j, c in enumerate(corpus.chunks) if any(r in _flat(c.text) for r in refs)]
        true = [j for j in holds if corpus.doc_of[j] == item.source]
        if not true:
            continue
        sims = corpus.vectors @ embedder.embed_documents([claim])[0]
        best = max(true, key=lambda j: sims[j])
        others = [j for j in np.argsort(-sims) if int(j) not in holds]
        pairs.append(Pair(claim, best, True, "true", item.question))
        if others:
            pairs.append(Pair(claim, int(others[0]), False, "hard", item.question))
    return pairs


def features(pairs: list[Pair], corpus: Corpus, scorer: SupportScorer) -> np.ndarray:
    """(cosine, lexical) per pair through the check's own code, with the chunks' stored vectors."""
    sources = [SourceText(0, corpus.chunks[p.chunk].text, [corpus.vectors[p.chunk].tolist()]) for p in pairs]
    return np.asarray(scorer.score_pairs([(p.claim, s) for p, s in zip(pairs, sources, strict=True)]))


def precision_recall(support: np.ndarray, supported: np.ndarray, threshold: float) -> dict[str, float]:
    """Of the "unsupported" verdict: precision (flagged ones that are wrong) and recall (wrong ones flagged)."""
    flagged, wrong = support < threshold, ~supported
    tp = int(np.sum(flagged & wrong))
    precision = tp / int(np.sum(flagged)) if np.any(flagged) else 1.0
    recall = tp / int(np.sum(wrong)) if np.any(wrong) else 1.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "pairs": int(len(support)),
            "wrong": int(np.sum(wrong))}


def _f1(pr: dict[str, float]) -> float:
    p, r = pr["precision"], pr["recall"]
    return 2 * p * r / (p + r) if p + r else 0.0


def calibrate(feats: np.ndarray, supported: np.ndarray, tolerance: float = 0.01) -> tuple[float, float]:
    """The weight and threshold that maximise the F1 of "unsupported". Of the weights within ``tolerance`` of the
    best F1, the largest (the most meaning, the least word matching) is taken: claims built from the documents'
    own sentences reward copied words more than a model's paraphrases do."""
    per_weight: list[tuple[float, float, float]] = []  # (w, best F1, its threshold)
    for w in np.round(np.arange(0.0, 1.0001, 0.05), 2):
        support = np.clip(w * np.maximum(feats[:, 0], 0) + (1 - w) * feats[:, 1], 0, 1)
        f, t = max((_f1(precision_recall(support, supported, float(t))), -float(t))
                   for t in np.round(np.arange(0.05, 0.96, 0.01), 2))
        per_weight.append((float(w), f, -t))
    best = max(f for _, f, _ in per_weight)
    w, _, t = max(x for x in per_weight if x[1] >= best - tolerance)
    return w, t


def run(docs: Path, qa_file: Path | None, settings: Settings) -> dict[str, Any]:
    embedder = get_embedder(settings)
    corpus = load_corpus(docs, settings, embedder)
    pairs = build_pairs(corpus, embedder)
    scorer = SupportScorer(embedder)
    feats = features(pairs, corpus, scorer)
    labels = np.array([p.supported for p in pairs])
    calib = np.array([int(p.group[:8], 16) % 2 == 0 for p in pairs])
    w, t = calibrate(feats[calib], labels[calib])
    fitted = SupportScorer(embedder, weight=w, threshold=t)
    support = np.array([fitted.combine(c, lx) for c, lx in feats])
    held = ~calib
    report: dict[str, Any] = {
        "chunks": len(corpus.chunks), "pairs": len(pairs), "weight": w, "threshold": t,
        "calibration": precision_recall(support[calib], labels[calib], t),
        "measurement": precision_recall(support[held], labels[held], t),
        "measurement_by_kind": {k: precision_recall(support[held & sel], labels[held & sel], t) for k in ("hard", "random")
                                for sel in [np.array([p.kind in (k, "true") for p in pairs])]},
        "cosine_only": precision_recall(np.maximum(feats[held, 0], 0), labels[held], calibrate(
            np.c_[feats[calib, 0], feats[calib, 0]], labels[calib], 0.0)[1]),
        "lexical_only": precision_recall(feats[held, 1], labels[held], calibrate(
            np.c_[feats[calib, 1], feats[calib, 1]], labels[calib], 0.0)[1]),
    }
    if qa_file is not None:
        qp = qa_pairs(corpus, qa_file, embedder)
        qf = features(qp, corpus, scorer)
        report["qa"] = precision_recall(np.array([fitted.combine(c, lx) for c, lx in qf]),
                                        np.array([p.supported for p in qp]), t)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=Path, default=Path("sample_docs"))
    ap.add_argument("--qa", type=Path, default=Path("tests/data/sample_qa.jsonl"))
    args = ap.parse_args()
    print(json.dumps(run(args.docs, args.qa if args.qa.exists() else None, Settings()), indent=2))


if __name__ == "__main__":
    main()
