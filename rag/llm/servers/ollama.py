"""Ollama: ``/api/show`` gives the model's trained context and any ``num_ctx`` parameter. Ollama silently cuts a
prompt longer than its ``num_ctx`` (default 2048-4096), so without a ``num_ctx`` parameter we pack to Ollama's
default, and chat goes through its native API, where ``num_ctx`` can be sent with the request (its OpenAI route
does not accept it). It has no tokenizer route: counts are local estimates."""

from __future__ import annotations

import re
from typing import Any

import httpx

from rag.llm.servers.base import ServerHttp, Window
from rag.llm.tokens import Turns

kind = "ollama"
tokenizer = "local estimate"

#: Ollama's context when nothing else is known; it truncates silently beyond what it was given.
OLLAMA_DEFAULT_NUM_CTX = 4096


def identify(http: ServerHttp, entry: dict, model: str | None) -> Window | None:
    try:
        http.get(f"{http.root}/api/version")
        show = http.post(f"{http.root}/api/show", {"model": model})
    except (httpx.HTTPError, ValueError):
        return None
    trained = next((int(v) for k, v in (show.get("model_info") or {}).items()
                    if k.endswith(".context_length") and isinstance(v, (int, float))), None)
    m = re.search(r"^num_ctx\s+(\d+)", show.get("parameters") or "", re.MULTILINE)
    if m:
        return Window(int(m.group(1)), "Ollama /api/show num_ctx parameter")
    return Window(min(trained, OLLAMA_DEFAULT_NUM_CTX) if trained else OLLAMA_DEFAULT_NUM_CTX,
                  f"Ollama default num_ctx {OLLAMA_DEFAULT_NUM_CTX} (model trained for {trained}); "
                  "to use more, give the Ollama model a num_ctx parameter")


def count(http: ServerHttp, model: str | None, text: str) -> int | None:
    return None


def render(http: ServerHttp, model: str | None, messages: Turns) -> int | None:
    return None


def chat_model(*, root: str, model: str | None, num_ctx: int | None, max_tokens: int, temperature: float,
               timeout: float, api_key: str | None, client_kwargs: dict[str, Any] | None = None,
               top_p: float | None = None, seed: int | None = None):
    """langchain-ollama's chat model with ``num_ctx`` set to the window we packed for."""
    from langchain_ollama import ChatOllama

    return ChatOllama(
        base_url=root, model=model, num_ctx=num_ctx, num_predict=max_tokens, temperature=temperature,
        top_p=top_p, seed=seed, client_kwargs={"timeout": timeout, **(client_kwargs or {}),
                       **({"headers": {"Authorization": f"Bearer {api_key}"}} if api_key else {})},
    )
