"""What an endpoint serves: its model, which kind of server it is, its context window and tokenizer.

A configured ``RAG_LLM_CONTEXT_WINDOW`` wins over what a server reports; the server's own overflow error
("maximum context length is N") wins over both when it is smaller."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from rag.llm import servers
from rag.llm.failures import short
from rag.llm.servers.base import ServerHttp

#: Used when no server or setting says anything: small enough to be safe on any model served today.
FALLBACK_CONTEXT_WINDOW = 2048


@dataclass
class EndpointInfo:
    base_url: str
    kind: str = "openai-compatible"  # vllm | llama.cpp | llama-cpp-python | ollama | openai-compatible
    model: str | None = None
    models: list[str] = field(default_factory=list)
    context_window: int | None = None
    context_source: str = "unknown"
    tokenizer: str = "local estimate"
    healthy: bool = False
    error: str | None = None
    template_overhead: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def discover(http: ServerHttp, *, configured_model: str | None, configured_window: int | None,
             learned_window: int | None) -> EndpointInfo:
    """Ask the server; an unusable one comes back with ``healthy`` False and ``error`` saying what to fix."""
    info = EndpointInfo(base_url=http.shown)
    entry = _choose_model(http, info, configured_model)
    if entry is None:
        return info
    info.healthy = True
    server, window = servers.identify(http, entry, info.model)
    info.kind, info.tokenizer = server.kind, server.tokenizer
    info.context_window, info.context_source = window.size, window.source
    if configured_window:
        info.context_window, info.context_source = configured_window, "configured (RAG_LLM_CONTEXT_WINDOW)"
    if learned_window and (info.context_window is None or learned_window < info.context_window):
        # The server's own overflow error is a fact; a larger configured value is a mistake.
        info.context_window, info.context_source = learned_window, "server overflow error"
    if info.context_window is None:
        info.context_window, info.context_source = FALLBACK_CONTEXT_WINDOW, (
            f"fallback {FALLBACK_CONTEXT_WINDOW}: the server does not report it; set RAG_LLM_CONTEXT_WINDOW")
    return info


def _choose_model(http: ServerHttp, info: EndpointInfo, configured: str | None) -> dict | None:
    """Fill ``info.models`` and ``info.model`` from ``/v1/models`` and return the model's entry there; None
    (with ``info.error`` set) when the server cannot be reached or does not serve a usable model."""
    base_url = http.shown
    try:
        listing = http.get(f"{http.base_url}/models")
    except httpx.HTTPStatusError as exc:
        info.error = (f"{base_url}/models answered HTTP {exc.response.status_code}"
                      + (": check RAG_LLM_API_KEY" if exc.response.status_code in (401, 403) else ""))
        return None
    except (httpx.HTTPError, ValueError) as exc:
        info.error = (f"cannot reach the LLM endpoint at {base_url} ({short(exc)}): is the server "
                      "running? (check RAG_LLM_BASE_URL)")
        return None
    entries = listing.get("data") or [] if isinstance(listing, dict) else []
    info.models = [str(e.get("id")) for e in entries if isinstance(e, dict) and e.get("id")]
    if configured:
        if info.models and configured not in info.models:
            info.error = (f"model {configured!r} is not served at {base_url}; it serves: "
                          + ", ".join(info.models[:10]) + ". Fix RAG_LLM_MODEL.")
            return None
        info.model = configured
    elif info.models:
        info.model = info.models[0]
    else:
        info.error = f"{base_url}/models lists no model; set RAG_LLM_MODEL"
        return None
    return next((e for e in entries if isinstance(e, dict) and e.get("id") == info.model), {})

