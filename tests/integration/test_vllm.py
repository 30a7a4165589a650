"""vLLM itself (the CPU build, serving the packaged model): what our client learns from it and relies on.

The chain, packing, API and failover tests run against it too (parametrized); these are the vLLM-only facts.
"""

from __future__ import annotations

import json

import httpx

from rag.llm.endpoints import OpenAICompatibleEndpoint
from rag.llm.local import MODEL_ALIAS

from conftest import LLM_CTX


def test_discovers_vllm_window_and_tokenizer(vllm_server):
    ep = OpenAICompatibleEndpoint(vllm_server)
    info = ep.info
    assert info.healthy and info.kind == "vllm" and info.model == MODEL_ALIAS
    # The window comes from the server itself (max_model_len), not from a setting.
    assert info.context_window == LLM_CTX and "max_model_len" in info.context_source
    assert info.tokenizer == "server /tokenize" and ep.exact_tokenizer
    text = "Per-diem for Lisbon: hotel cap 140 EUR, meals 36 EUR per day."
    served = httpx.post(vllm_server.removesuffix("/v1") + "/tokenize",
                        json={"model": MODEL_ALIAS, "prompt": text, "add_special_tokens": False}).json()
    assert ep.count_tokens(text) == served["count"] > 0


def test_chat_prompt_count_equals_usage(vllm_server):
    """Our count of a whole chat prompt (template included) is what vLLM bills as usage.prompt_tokens."""
    ep = OpenAICompatibleEndpoint(vllm_server)
    msgs = [("system", "Answer from the sources."), ("user", "What is the hotel cap?"),
            ("assistant", "140 EUR [1]."), ("user", "And for meals?")]
    counted = ep.prompt_tokens(msgs)
    r = httpx.post(f"{vllm_server}/chat/completions", timeout=60, json={
        "model": MODEL_ALIAS, "max_tokens": 2, "temperature": 0,
        "messages": [{"role": r, "content": c} for r, c in msgs]})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == counted


def test_streams_end_with_a_usage_chunk(vllm_server):
    chunks = []
    with httpx.stream("POST", f"{vllm_server}/chat/completions", timeout=60, json={
            "model": MODEL_ALIAS, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "Say hello."}]}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 2
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_overlong_prompt_is_a_400_naming_the_window(vllm_server):
    from rag.llm.endpoints import parse_overflow

    r = httpx.post(f"{vllm_server}/chat/completions", timeout=60, json={
        "model": MODEL_ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": "word " * (LLM_CTX + 50)}]})
    assert r.status_code == 400 and parse_overflow(r.json()["error"]["message"]) == LLM_CTX
