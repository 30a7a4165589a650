"""vLLM: ``/v1/models`` lists ``max_model_len``; ``POST /tokenize`` counts with the served tokenizer and, given
``messages``, renders the chat template exactly as the chat endpoint does."""

from __future__ import annotations

from rag.llm.servers.base import ServerHttp, Window
from rag.llm.tokens import Turns

kind = "vllm"
tokenizer = "server /tokenize"


def identify(http: ServerHttp, entry: dict, model: str | None) -> Window | None:
    if "max_model_len" not in entry:
        return None
    return Window(int(entry["max_model_len"]), "vLLM /v1/models max_model_len")


def count(http: ServerHttp, model: str | None, text: str) -> int | None:
    return int(http.post(f"{http.root}/tokenize", {"model": model, "prompt": text,
                                                   "add_special_tokens": False})["count"])


def render(http: ServerHttp, model: str | None, messages: Turns) -> int | None:
    msgs = [{"role": r, "content": c} for r, c in messages]
    return int(http.post(f"{http.root}/tokenize", {"model": model, "messages": msgs,
                                                   "add_generation_prompt": True})["count"])
