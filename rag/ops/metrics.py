"""Prometheus metrics of the answer path, recorded by the library so every shell (API, UI, CLI) counts alike.

One process-wide registry. ``rag serve`` exposes it at ``/metrics``; ``rag ui`` serves it on
``RAG_UI_METRICS_PORT`` when set (Streamlit has no route of its own for it). Labels stay low-cardinality:
endpoint base URL, model and outcome — never users or questions (those go to the audit log).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

if TYPE_CHECKING:
    from rag.types import Answer

REGISTRY = CollectorRegistry(auto_describe=True)

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)

QUESTIONS = Counter("rag_questions", "Questions answered, by outcome (answered, refused, error).",
                    ["endpoint", "outcome"], registry=REGISTRY)
ERRORS = Counter("rag_errors", "Failed questions, by error kind.", ["endpoint", "kind"], registry=REGISTRY)
RETRIEVAL = Histogram("rag_retrieval_seconds", "Embedding + store query (+ reranking) per question.",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=REGISTRY)
TTFT = Histogram("rag_time_to_first_token_seconds", "From sending the prompt to the first answer token.",
                 ["endpoint"], buckets=_SECONDS, registry=REGISTRY)
TOTAL = Histogram("rag_answer_seconds", "Whole question: condense, retrieve, pack, generate.", ["endpoint"],
                  buckets=_SECONDS, registry=REGISTRY)
TOKENS_PER_S = Histogram("rag_generation_tokens_per_second", "Answer tokens per second after the first.",
                         ["endpoint"], buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 400), registry=REGISTRY)
PROMPT_TOKENS = Counter("rag_prompt_tokens", "Prompt tokens sent to the LLM.", ["endpoint", "model"],
                        registry=REGISTRY)
COMPLETION_TOKENS = Counter("rag_completion_tokens", "Answer tokens received from the LLM.", ["endpoint", "model"],
                            registry=REGISTRY)
FILL = Histogram("rag_packing_fill_ratio", "Share of the source budget the packed sources use.",
                 buckets=(0.25, 0.5, 0.75, 0.85, 0.9, 0.95, 0.98, 1.0), registry=REGISTRY)
IN_FLIGHT = Gauge("rag_questions_in_flight", "Questions being answered now.", registry=REGISTRY)
CITATIONS = Counter("rag_citations", "Cited sources of answers, by the citation check's verdict (supported, "
                    "unsupported, unchecked: the check is off or had no sentence to score).", ["verdict"],
                    registry=REGISTRY)
CITATION_CHECK = Histogram("rag_citation_check_seconds", "The citation check after an answer.",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=REGISTRY)
FEEDBACK = Counter("rag_feedback", "Answers rated by the users who asked, by rating (up, down).", ["rating"],
                   registry=REGISTRY)
HTTP_REQUESTS = Counter("rag_http_requests", "API requests by route and status code.", ["route", "status"],
                        registry=REGISTRY)
HTTP_REJECTED = Counter("rag_http_rejected", "API and MCP requests refused by a cap, by reason: "
                        "body_too_large, conversation_too_large, busy_user, busy_overall.", ["reason"],
                        registry=REGISTRY)
HTTP_BUSY = Gauge("rag_http_busy_slots", "Chat completions and MCP tool calls in progress (holding a slot).",
                  registry=REGISTRY)


def observe_answer(answer: Answer, endpoint: str) -> None:
    QUESTIONS.labels(endpoint, "refused" if answer.refused else "answered").inc()
    t = answer.timings
    if (retrieve := t.get("retrieve")) is not None:
        RETRIEVAL.observe(retrieve)
    if (total := t.get("total")) is not None:
        TOTAL.labels(endpoint).observe(total)
    if answer.refused and not answer.packing:
        return  # nothing relevant: no LLM call to measure
    if (ttft := t.get("ttft")) is not None:
        TTFT.labels(endpoint).observe(ttft)
    if tokens_per_s := t.get("tokens_per_s"):
        TOKENS_PER_S.labels(endpoint).observe(tokens_per_s)
    model = answer.model or ""
    PROMPT_TOKENS.labels(endpoint, model).inc(answer.usage.get("prompt_tokens") or 0)
    COMPLETION_TOKENS.labels(endpoint, model).inc(answer.usage.get("completion_tokens") or 0)
    if answer.packing is not None:
        FILL.observe(answer.packing.fill)
    for c in answer.cited:
        CITATIONS.labels(c.verdict or "unchecked").inc()
    if (check := t.get("citation_check")) is not None:
        CITATION_CHECK.observe(check)


def observe_error(endpoint: str, exc: BaseException) -> None:
    QUESTIONS.labels(endpoint, "error").inc()
    ERRORS.labels(endpoint, type(exc).__name__).inc()


def exposition() -> bytes:
    return generate_latest(REGISTRY)


_served: set[int] = set()
_served_lock = threading.Lock()


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose the registry on its own port (for processes without an HTTP API: the Streamlit UI). Once per
    port per process: Streamlit reruns its script, and a second bind would fail."""
    with _served_lock:
        if port not in _served:
            start_http_server(port, addr=host, registry=REGISTRY)
            _served.add(port)
