"""Answer quality of the whole chain on a question file: the configured index, retriever and LLM endpoint.

The file is JSON lines, one question each::

    {"question": "How long is the probation period?", "answers": ["six months"], "source": "employee-handbook.pdf"}
    {"question": "What is the CEO's salary?", "answers": []}

``answers`` (or ``answer``) are reference answers; an empty list (or ``"answerable": false``) means the documents
do not contain the answer and the right response is to say so. ``source`` (optional) is the file that should be
cited: a file name or the end of its path; ``page`` (optional) narrows it to a page.

Exact match and token F1 are SQuAD's definitions (lowercase, no punctuation or articles, max over references).
Chat models answer in sentences, so exact match is low by nature; ``contains`` (a reference appears inside the
answer) and F1 say more. Citation markers are removed before scoring the text.
"""

from __future__ import annotations

import json
import re
import statistics
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.generation.chain import RAG, Answer
from rag.generation.citations import _CITE
from rag.errors import RagError

# What a refusal looks like: our own canned reply, and how models phrase "the sources do not say".
_REFUSAL = re.compile(
    r"\b(documents?|sources?|context|provided (text|information))\b[^.]{0,40}\b(do|does|did)\s*(not|n't)\s+"
    r"(contain|mention|include|say|provide|specify|state|cover)"
    r"|\bno (information|mention|answer)\b[^.]{0,40}\b(in|from) the (documents?|sources?|context)"
    r"|\b(not|never) (mentioned|stated|provided|specified|found) in the (documents?|sources?|context)"
    r"|\bI (cannot|can't|could not|couldn't) find\b",
    re.IGNORECASE,
)


@dataclass
class QAItem:
    question: str
    answers: list[str]
    source: str | None = None
    page: int | None = None

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def load_qa(path: Path) -> list[QAItem]:
    items: list[QAItem] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                question = str(d["question"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object with a \"question\" ({exc})") \
                    from None
            refs = d.get("answers", d.get("answer", []))
            refs = [refs] if isinstance(refs, str) else [str(r) for r in refs or []]
            if d.get("answerable") is False:
                refs = []
            items.append(QAItem(question, [r for r in refs if r.strip()], d.get("source") or None, d.get("page")))
    if not items:
        raise ValueError(f"{path} has no questions")
    return items


# --- SQuAD v1.1 answer normalisation and scores -------------------------------------------------------------

def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Iterable[str]) -> float:
    p = normalize(prediction)
    return float(any(p == normalize(r) for r in references))


def token_f1(prediction: str, references: Iterable[str]) -> float:
    best = 0.0
    p_tokens = normalize(prediction).split()
    for r in references:
        r_tokens = normalize(r).split()
        common = Counter(p_tokens) & Counter(r_tokens)
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(p_tokens), same / len(r_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains(prediction: str, references: Iterable[str]) -> float:
    p = f" {normalize(prediction)} "
    return float(any(f" {normalize(r)} " in p for r in references if normalize(r)))


def is_refusal(answer: Answer) -> bool:
    return answer.refused or bool(_REFUSAL.search(answer.text))


def _strip_citations(text: str) -> str:
    return " ".join(_CITE.sub(" ", text).split())


def _matches(path: str, page: int | None, page_end: int | None, want: str, want_page: int | None) -> bool:
    path, want = path.replace("\\", "/"), want.replace("\\", "/").lstrip("./")
    if not (path == want or path.endswith("/" + want)):
        return False
    if want_page is None:
        return True
    return page is not None and page <= want_page <= (page_end or page)


@dataclass
class ItemResult:
    question: str
    answer: str
    answerable: bool
    refused: bool
    exact_match: float | None
    f1: float | None
    contains: float | None
    citations_valid: int  # cited numbers that name a source the model was given
    citations_invalid: int  # invented numbers (removed from what the user saw)
    citations_unsupported: int  # cited sources the citation check found not to back their sentences
    cited_sources: list[str]
    source_retrieved: bool | None  # the expected source was among those given to the model
    source_cited: bool | None
    latency_s: float | None
    ttft_s: float | None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def score_item(item: QAItem, answer: Answer, seconds: float) -> ItemResult:
    refused = is_refusal(answer)
    text = _strip_citations(answer.text)
    scored = item.answerable
    valid = {c.n for c in answer.sources}
    cited = [c for c in answer.sources if c.cited]
    retrieved = cited_ok = None
    if item.source:
        retrieved = any(_matches(c.path, c.page, c.page_end, item.source, item.page) for c in answer.sources)
        cited_ok = any(_matches(c.path, c.page, c.page_end, item.source, item.page) for c in cited)
    return ItemResult(
        question=item.question, answer=answer.text, answerable=item.answerable, refused=refused,
        exact_match=exact_match(text, item.answers) if scored else None,
        f1=token_f1(text, item.answers) if scored else None,
        contains=contains(text, item.answers) if scored else None,
        citations_valid=sum(1 for c in cited if c.n in valid), citations_invalid=len(answer.removed_citations),
        citations_unsupported=sum(1 for c in cited if c.verdict == "unsupported"),
        cited_sources=[c.path for c in cited], source_retrieved=retrieved, source_cited=cited_ok,
        latency_s=seconds, ttft_s=answer.timings.get("ttft"),
    )


def evaluate_answers(rag: RAG, items: Sequence[QAItem], *,
                     on_item: Callable[[int, ItemResult], None] | None = None) -> tuple[dict[str, Any], list[ItemResult]]:
    """Ask every question (no chat history) and score it. An error on one question is recorded and the run goes
    on; when no question got an answer from the model and some failed, the last error is raised, so a dead
    endpoint is not reported as a score (questions the documents do not answer are refused without it)."""
    results: list[ItemResult] = []
    last_error: RagError | None = None
    for i, item in enumerate(items):
        t = time.perf_counter()
        try:
            answer = rag.ask(item.question)
        except RagError as exc:
            last_error = exc
            r = ItemResult(item.question, "", item.answerable, False, None, None, None, 0, 0, 0, [], None, None,
                           None, None, error=str(exc))
        else:
            r = score_item(item, answer, time.perf_counter() - t)
        results.append(r)
        if on_item:
            on_item(i, r)
    if last_error is not None and not any(r.error is None and not r.refused for r in results):
        raise last_error
    return summarize(results), results


def summarize(results: Sequence[ItemResult]) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    answerable = [r for r in ok if r.answerable]
    unanswerable = [r for r in ok if not r.answerable]
    with_source = [r for r in ok if r.source_retrieved is not None]
    valid = sum(r.citations_valid for r in ok)
    invalid = sum(r.citations_invalid for r in ok)
    answered = [r for r in ok if not r.refused]
    latencies = [r.latency_s for r in ok if r.latency_s is not None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]

    def mean(values: Sequence[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    return {
        "questions": len(results),
        "errors": len(results) - len(ok),
        "answerable": len(answerable),
        "exact_match": mean([r.exact_match for r in answerable]),
        "f1": mean([r.f1 for r in answerable]),
        "contains": mean([r.contains for r in answerable]),
        # Share of cited numbers that point at a source the model was given (invented ones are removed live).
        "citation_validity": round(valid / (valid + invalid), 4) if valid + invalid else None,
        # Share of valid citations the citation check found not backed by their source (RAG_CITATION_CHECK).
        "citations_unsupported": round(sum(r.citations_unsupported for r in ok) / valid, 4) if valid else None,
        "answers_with_citation": round(sum(1 for r in answered if r.citations_valid) / len(answered), 4)
        if answered else None,
        "source_retrieved": mean([float(bool(r.source_retrieved)) for r in with_source]),
        "source_cited": mean([float(bool(r.source_cited)) for r in with_source]),
        "refusal_rate": mean([float(r.refused) for r in ok]),
        # Refusing an answerable question is a miss; answering an unanswerable one is a hallucination risk.
        "false_refusal_rate": mean([float(r.refused) for r in answerable]),
        "unanswerable": len(unanswerable),
        "correct_refusal_rate": mean([float(r.refused) for r in unanswerable]),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
    }


def write_results(path: Path, results: Sequence[ItemResult]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")

