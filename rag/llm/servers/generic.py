"""Any other OpenAI-compatible server (LM Studio, TGI, a LiteLLM proxy): nothing to ask beyond the OpenAI API,
so the configured window and a local token estimate with a safety margin."""

from __future__ import annotations

from rag.llm.servers.base import ServerHttp, Window
from rag.llm.tokens import Turns

kind = "openai-compatible"
tokenizer = "local estimate"


def identify(http: ServerHttp, entry: dict, model: str | None) -> Window | None:
    return Window(None)


def count(http: ServerHttp, model: str | None, text: str) -> int | None:
    return None


def render(http: ServerHttp, model: str | None, messages: Turns) -> int | None:
    return None
