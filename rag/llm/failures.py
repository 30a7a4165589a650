"""What went wrong with an LLM request, in terms a user can act on, and whether another endpoint might do better."""

from __future__ import annotations

import re

import httpx

from rag.errors import RagError
from rag.urls import scrub


class EndpointError(RagError):
    """The LLM endpoint failed in a way the user can fix; the message says how."""


_OVERFLOW_RE = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)


def parse_overflow(message: str) -> int | None:
    """The context size named by a vLLM/llama.cpp/OpenAI-style overflow error, if any."""
    m = _OVERFLOW_RE.search(message or "")
    return int(m.group(1)) if m else None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an OpenAI-client or httpx error (they keep it in different places), if it has one."""
    return getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)


def describe_failure(exc: BaseException, base_url: str, model: str | None, timeout: float) -> str:
    """Turn what the OpenAI/Ollama clients raise into one line saying what failed and what to do."""
    import openai

    name = type(exc).__name__
    msg = api_message(exc)
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)) or name in ("ReadTimeout", "Timeout"):
        return (f"the LLM at {base_url} did not answer within {timeout:g} s; it may be overloaded or the model "
                "too slow: raise RAG_LLM_TIMEOUT or lower RAG_LLM_MAX_TOKENS")
    if isinstance(exc, (openai.APIConnectionError, httpx.ConnectError, ConnectionError)):
        return f"cannot reach the LLM at {base_url}: is the server running? (check RAG_LLM_BASE_URL)"
    status = http_status(exc)
    if status in (401, 403):
        return f"the LLM at {base_url} rejected the request (HTTP {status}): set RAG_LLM_API_KEY"
    if status == 404:
        return (f"model {model!r} was not found at {base_url} (HTTP 404: {msg}); set RAG_LLM_MODEL to a served "
                "model (`rag status` lists them)")
    n = parse_overflow(msg)
    if n is not None:
        return (f"the prompt does not fit the model's context of {n} tokens even after shrinking it; lower "
                "RAG_LLM_MAX_TOKENS or set RAG_LLM_CONTEXT_WINDOW to the server's real limit")
    if status is not None and status >= 500:
        return f"the LLM server at {base_url} failed (HTTP {status}: {msg}); check the server's log"
    if status is not None:
        return f"the LLM at {base_url} refused the request (HTTP {status}: {msg})"
    if "No generation chunks" in str(exc):
        return f"the LLM server at {base_url} ended the stream without an answer; check the server's log"
    return f"the LLM request to {base_url} failed: {name}: {msg}"


def api_message(exc: BaseException) -> str:
    """The server's own error message inside an API exception (first line), else the exception's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return scrub(str(inner["message"]).splitlines()[0][:200])
        if isinstance(inner, str):
            return scrub(inner[:200])
    return short(exc)


def short(exc: BaseException) -> str:
    """An exception as one short line, for logs and messages. Scrubbed: httpx and openai quote the URL they were
    given, credentials included, when one slips through (rag/urls.py)."""
    s = scrub(str(exc)) or exc.__class__.__name__
    return s.splitlines()[0][:160]


def is_timeout(exc: BaseException) -> bool:
    import openai

    return isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError))


def is_failover_error(exc: BaseException) -> bool:
    """A reason to send the request to another endpoint: the server is unreachable, timed out, broke the
    connection or failed (HTTP 5xx). Not 4xx (bad request, overflow, auth): another replica would answer alike."""
    import openai

    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    status = http_status(exc)
    return isinstance(status, int) and status >= 500
