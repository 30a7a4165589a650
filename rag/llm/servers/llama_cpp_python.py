"""llama-cpp-python's server: ``POST /extras/tokenize/count``. It reports no context size anywhere, so the
configured ``RAG_LLM_CONTEXT_WINDOW`` is used, and the first "maximum context length is N tokens" error
teaches us N (``OpenAICompatibleEndpoint.learn_window``)."""

from __future__ import annotations

import httpx

from rag.llm.servers.base import ServerHttp, Window
from rag.llm.tokens import Turns

kind = "llama-cpp-python"
tokenizer = "server /extras/tokenize"


def identify(http: ServerHttp, entry: dict, model: str | None) -> Window | None:
    try:
        http.post(f"{http.root}/extras/tokenize/count", {"input": "ping"})
    except (httpx.HTTPError, ValueError):
        return None
    return Window(None)


def count(http: ServerHttp, model: str | None, text: str) -> int | None:
    return int(http.post(f"{http.root}/extras/tokenize/count", {"input": text})["count"])


def render(http: ServerHttp, model: str | None, messages: Turns) -> int | None:
    return None
