"""Is each citation backed by its source? After the answer is complete, every sentence that cites [n] is scored
against source n, and each source gets a support score (0..1) and a verdict.

support(sentence, source) = ``w`` * cosine + (1 - ``w``) * lexical, where

- cosine: the sentence's embedding (the local embedding model, no other model) against the best-matching chunk
  of the source. The chunks' vectors are the ones the index already holds (``Store.vectors``), so only the
  sentences are embedded, all in one batch; a passage without a stored vector (another retriever's, or one cut
  to fit the window) is embedded in that same batch.
- lexical: the share of the sentence's content words (BM25's terms: stopwords removed, Snowball-stemmed, the
  same tokenizer the index uses) that occur in the text of the source the model was given. Numbers are terms,
  so "45 days" against a passage that says 30 days loses the term "45".

``w`` and the threshold were calibrated on data (evaluation/citation_support.py; figures in bench/README.md).

A sentence citing several sources ("... [1][2]") often joins facts from each; it counts as backed when the best
of them backs it, and each of its sources is credited with that best score. A source's support is the weakest
of the sentences citing it: one sentence that its source does not back is enough for "not found in the source".
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from rag.generation.citations import _CITE, _numbers
from rag.index.embeddings import Embedder
from rag.types import Answer

if TYPE_CHECKING:
    from rag.generation.packing import Source

log = logging.getLogger(__name__)

SUPPORTED, UNSUPPORTED = "supported", "unsupported"

# Calibrated on half of the sample_docs pairs (evaluation/citation_support.py): see bench/README.md.
DEFAULT_WEIGHT = 0.3
DEFAULT_THRESHOLD = 0.56

# Words whose period does not end a sentence. Single capitals (initials) are handled apart.
_ABBREV = frozenset(["e.g", "i.e", "etc", "vs", "approx", "ca", "cf", "dr", "mr", "mrs", "ms", "prof", "no", "nr", "fig", "p", "pp", "vol", "sec", "art", "min", "max", "incl", "excl", "dept", "corp", "inc", "ltd", "co", "st", "jr", "sr", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun"])
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n")
_LEADING_CITES = re.compile(r"^(?:\s*\[\d{1,3}(?:\s*[,–-]\s*\d{1,3})*\])+")
_MIN_TERMS = 2  # fewer content words than this ("See [1].") is not a claim of its own


def split_sentences(text: str) -> list[str]:
    """Sentences and list items of ``text``. A period after a known abbreviation or an initial does not end a
    sentence, nor does one inside a number (it needs whitespace after it); a line break always does. Citation
    markers that follow a sentence's end ("... 30 days. [1]") belong to that sentence."""
    parts: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.group() != "\n" and m.group()[0] == ".":
            word = re.search(r"([\w.]+)$", text[start:m.start()])
            w = word.group(1).lower() if word else ""
            if w in _ABBREV or (len(w) == 1 and w.isalpha()) or re.fullmatch(r"(?:\w\.)+\w", w):
                continue
        parts.append(text[start:m.end()])
        start = m.end()
    parts.append(text[start:])
    out: list[str] = []
    for part in parts:
        lead = _LEADING_CITES.match(part)
        if lead and out:  # markers after the previous sentence's period are that sentence's
            out[-1] += lead.group()
            part = part[lead.end():]
        if part.strip():
            out.append(part.strip())
    return out


@dataclass(frozen=True)
class Claim:
    """One sentence of an answer and the source numbers it cites."""

    text: str  # without its citation markers
    cites: tuple[int, ...]


def claims(answer: str) -> list[Claim]:
    """The sentences of ``answer`` that cite something, markers removed."""
    found: list[Claim] = []
    previous = ""
    for sentence in split_sentences(answer):
        nums = [n for m in _CITE.finditer(sentence) for n in _numbers(m.group(1))]
        text = re.sub(r"\s+([.,;:!?])", r"\1", " ".join(_CITE.sub(" ", sentence).split()))
        if nums:
            if len(terms(text)) < _MIN_TERMS and previous:  # "See [1]." points at the sentence before it
                text = f"{previous} {text}"
            found.append(Claim(text, tuple(dict.fromkeys(nums))))
        previous = text
    return found


@lru_cache(maxsize=1)
def _bm25():  # the index's own tokenizer: stopwords and Snowball stemming for English
    import qdrant_edge as qe

    return qe.Bm25(qe.Bm25Config(language="english"))


@lru_cache(maxsize=1024)  # a source's text is scored against every sentence citing it
def terms(text: str) -> frozenset[int]:
    """The content words of ``text`` (hashed BM25 terms)."""
    return frozenset(_bm25().embed_query(text).indices)


def lexical(claim_terms: frozenset[int], passage_terms: frozenset[int]) -> float:
    """Share of the claim's content words that the passage contains."""
    return len(claim_terms & passage_terms) / len(claim_terms) if claim_terms else 0.0


@dataclass(frozen=True)
class SourceText:
    """What the check needs of a cited source: the text the model was given, and the vectors of its chunks
    (empty: embed the text)."""

    n: int
    text: str
    vectors: Sequence[Sequence[float]] = ()


@dataclass
class CheckResult:
    support: dict[int, float]  # per cited source number
    verdict: dict[int, str]
    sentences: list[dict] = field(default_factory=list)  # each checked sentence: text, cites, score per source


@dataclass(frozen=True)
class SupportScorer:
    """Scores sentences against sources with one embedder; ``weight`` is the share of the cosine."""

    embedder: Embedder
    weight: float = DEFAULT_WEIGHT
    threshold: float = DEFAULT_THRESHOLD

    def score_pairs(self, pairs: Sequence[tuple[str, SourceText]]) -> list[tuple[float, float]]:
        """(cosine, lexical) of each (sentence, source), with every embedding of the call in one batch."""
        texts = list(dict.fromkeys([s for s, _ in pairs] + [src.text for _, src in pairs if not src.vectors]))
        index = {t: i for i, t in enumerate(texts)}
        vecs = self.embedder.embed_documents(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        out: list[tuple[float, float]] = []
        for sentence, src in pairs:
            chunks = (np.asarray(src.vectors, dtype=np.float32) if src.vectors
                      else vecs[index[src.text]][None, :])
            chunks = chunks / np.maximum(np.linalg.norm(chunks, axis=1, keepdims=True), 1e-12)
            cos = float(np.max(chunks @ vecs[index[sentence]]))
            out.append((cos, lexical(terms(sentence), terms(src.text))))
        return out

    def combine(self, cos: float, lex: float) -> float:
        return float(np.clip(self.weight * max(cos, 0.0) + (1 - self.weight) * lex, 0.0, 1.0))

    def check(self, answer: str, sources: dict[int, SourceText]) -> CheckResult:
        """Support and verdict of every source the answer cites (sources it does not cite are left out)."""
        cl = claims(answer)  # a marker with no words to check ("[1]" alone) scores low: nothing is backed
        pairs = [(c.text, sources[n]) for c in cl for n in c.cites if n in sources]
        scores = iter(self.score_pairs(pairs))
        per_source: dict[int, list[float]] = {}
        sentences: list[dict] = []
        for c in cl:
            own = {n: self.combine(*next(scores)) for n in c.cites if n in sources}
            if not own:
                continue
            best = max(own.values())  # several sources: backed when the best of them backs it
            for n in own:
                per_source.setdefault(n, []).append(best)
            sentences.append({"text": c.text, "cites": list(own), "support": {n: round(s, 4) for n, s in
                                                                             own.items()}})
        support = {n: min(v) for n, v in per_source.items()}
        verdict = {n: SUPPORTED if s >= self.threshold else UNSUPPORTED for n, s in support.items()}
        return CheckResult(support, verdict, sentences)


#: The stored vectors of chunks by id (``Store.vectors``).
VectorsOf = Callable[[Sequence[str]], dict[str, list[float]]]


def source_texts(sources: Sequence[Source], cited: set[int], vectors_of: VectorsOf | None) -> dict[int, SourceText]:
    """The cited sources with the stored vectors of their chunks; a source none of whose chunks has one (another
    retriever's, or cut to fit: its vector is of text the model did not see) is embedded from its text."""
    ids = [p.id for s in sources if s.n in cited for p in s.passages if not p.trimmed]
    found: dict[str, list[float]] = {}
    if vectors_of is not None and ids:
        try:
            found = vectors_of(ids)
        except Exception as exc:  # noqa: BLE001 - the check then embeds the texts: slower, same verdicts
            log.warning("citation check: cannot read the chunks' vectors (%s); embedding the sources instead", exc)
    return {s.n: SourceText(s.n, s.text, [found[p.id] for p in s.passages if p.id in found])
            for s in sources if s.n in cited}


def check_answer(answer: Answer, sources: Sequence[Source], scorer: SupportScorer,
                 vectors_of: VectorsOf | None = None) -> CheckResult | None:
    """Set ``support`` and ``verdict`` on the answer's cited sources and ``timings["citation_check"]``. A failing
    check is logged and leaves them None: the answer itself is never lost to it."""
    cited = {c.n for c in answer.sources if c.cited}
    if not cited:
        return None
    t = time.perf_counter()
    try:
        result = scorer.check(answer.text, source_texts(sources, cited, vectors_of))
    except Exception:  # noqa: BLE001
        log.exception("citation check failed; the answer's sources are shown unchecked")
        return None
    for c in answer.sources:
        if c.n in result.support:
            c.support, c.verdict = result.support[c.n], result.verdict[c.n]
    answer.timings["citation_check"] = time.perf_counter() - t
    return result
