"""llama.cpp's own server (llama-server): ``GET /props`` has ``default_generation_settings.n_ctx``;
``POST /tokenize`` counts (``content``); ``POST /apply-template`` renders the chat template."""

from __future__ import annotations

import httpx

from rag.llm.servers.base import ServerHttp, Window
from rag.llm.tokens import Turns

kind = "llama.cpp"
tokenizer = "server /tokenize"


def identify(http: ServerHttp, entry: dict, model: str | None) -> Window | None:
    try:
        props = http.get(f"{http.root}/props")
    except (httpx.HTTPError, ValueError):
        return None
    n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx") if isinstance(props, dict) else None
    if not n_ctx:
        return None
    return Window(int(n_ctx), "llama.cpp /props n_ctx")


def count(http: ServerHttp, model: str | None, text: str) -> int | None:
    return len(http.post(f"{http.root}/tokenize", {"content": text})["tokens"])


def render(http: ServerHttp, model: str | None, messages: Turns) -> int | None:
    msgs = [{"role": r, "content": c} for r, c in messages]
    prompt = http.post(f"{http.root}/apply-template", {"messages": msgs})["prompt"]
    return len(http.post(f"{http.root}/tokenize", {"content": prompt, "add_special": True,
                                                   "parse_special": True})["tokens"])
