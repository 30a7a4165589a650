"""Endpoint discovery and token counting against a real llama-cpp-python server."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from rag.errors import RagError
from rag.generation.chain import RAG
from rag.llm.endpoints import FALLBACK_CONTEXT_WINDOW, OpenAICompatibleEndpoint, estimate_tokens, parse_overflow
from rag.llm.local import MODEL_ALIAS

from conftest import LLM_CTX, _free_port, running

QUESTION = "What are the office opening hours?"


def test_discovers_llama_cpp_python(llm_server):
    ep = OpenAICompatibleEndpoint(llm_server)
    info = ep.info
    assert info.healthy and info.kind == "llama-cpp-python" and info.model == MODEL_ALIAS
    assert info.tokenizer == "server /extras/tokenize" and ep.exact_tokenizer
    # This server reports no window anywhere: the fallback says so, a configured value wins.
    assert info.context_window == FALLBACK_CONTEXT_WINDOW and "RAG_LLM_CONTEXT_WINDOW" in info.context_source
    ep2 = OpenAICompatibleEndpoint(llm_server, context_window=LLM_CTX)
    assert ep2.info.context_window == LLM_CTX and ep2.info.context_source.startswith("configured")


def test_counts_with_the_servers_tokenizer(llm_server):
    ep = OpenAICompatibleEndpoint(llm_server)
    text = "Per-diem for Lisbon: hotel cap 140 EUR, meals 36 EUR per day."
    tokens = httpx.post(llm_server.removesuffix("/v1") + "/extras/tokenize", json={"input": text}).json()["tokens"]
    assert ep.count_tokens(text) == len(tokens) > 0


def test_learns_window_from_overflow_error(llm_server):
    ep = OpenAICompatibleEndpoint(llm_server)
    words = "word " * (LLM_CTX + 50)
    r = httpx.post(f"{llm_server}/chat/completions", json={"messages": [{"role": "user", "content": words}],
                                                          "max_tokens": 4}, timeout=60)
    assert r.status_code == 400
    n = parse_overflow(r.json()["error"]["message"])
    assert n == LLM_CTX
    ep.learn_window(n)
    assert ep.info.context_window == LLM_CTX and ep.info.context_source == "server overflow error"


def test_wrong_model_name_says_what_is_served(llm_server):
    info = OpenAICompatibleEndpoint(llm_server, model="llama-3-70b").info
    assert not info.healthy and "smollm2-135m" in info.error and "RAG_LLM_MODEL" in info.error


def test_endpoint_down():
    info = OpenAICompatibleEndpoint(f"http://127.0.0.1:{_free_port()}/v1", connect_timeout=1).info
    assert not info.healthy and "cannot reach" in info.error


def test_parse_overflow_messages():
    vllm = ("This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
            "(8800 in the messages, 200 in the completion).")
    assert parse_overflow(vllm) == 8192 and parse_overflow("rate limited") is None


@pytest.mark.parametrize("text", ["hello world " * 50, "日本語のテキスト" * 20, "x = f(y) + 1;\n" * 30,
                                  "Hamburg 130 28\nBerlin 140 28\n" * 30, "Café à 8h00 — résumé, naïve. " * 20])
def test_local_estimate_is_conservative(text, llm_server):
    assert estimate_tokens(text) >= OpenAICompatibleEndpoint(llm_server).count_tokens(text)


def test_local_estimate_on_the_sample_docs(llm_server):
    from conftest import SAMPLE_DOCS

    ep = OpenAICompatibleEndpoint(llm_server)
    for name in ("it-security.md", "office-faq.txt", "onboarding.html"):
        text = (SAMPLE_DOCS / name).read_text()
        real, est = ep.count_tokens(text), estimate_tokens(text)
        assert real <= est <= 1.6 * real, (name, real, est)


def test_chat_model_sends_max_tokens(llm_server):
    """llama.cpp ignores max_completion_tokens (what langchain-openai sends by default): the limit must hold."""
    llm = OpenAICompatibleEndpoint(llm_server).chat_model(max_tokens=5, temperature=0, streaming=False)
    payload = llm._get_request_payload([("user", "hi")])
    assert payload["max_tokens"] == 5 and "max_completion_tokens" not in payload
    msg = llm.invoke([("system", "You are verbose."), ("user", "Write a long story about a sensor.")])
    assert 0 < msg.usage_metadata["output_tokens"] <= 5


def test_chat_model_streams(llm_server):
    llm = OpenAICompatibleEndpoint(llm_server).chat_model(max_tokens=8, temperature=0)
    chunks = [c.content for c in llm.stream([("system", "Be brief."), ("user", "Say hello.")])]
    assert len([c for c in chunks if c]) >= 2  # token by token, not one block


def test_chat_model_on_unhealthy_endpoint_raises_clear_error():
    from rag.llm.endpoints import EndpointError

    ep = OpenAICompatibleEndpoint(f"http://127.0.0.1:{_free_port()}/v1", connect_timeout=1)
    with pytest.raises(EndpointError, match="cannot reach"):
        ep.chat_model(max_tokens=5)


def test_status_prints_the_endpoint(llm_server, tmp_path):
    from conftest import rag_cmd

    env = {"RAG_DATA_DIR": str(tmp_path), "RAG_LLM_BASE_URL": llm_server, "RAG_LLM_CONTEXT_WINDOW": "2048",
           "RAG_LLM_API_KEY": "sk-secret-do-not-print"}
    res = rag_cmd("status", "--json", env=env)
    assert res.returncode == 0, res.stderr
    llm = __import__("json").loads(res.stdout)["llm"]
    assert llm["healthy"] and llm["kind"] == "llama-cpp-python" and llm["model"] == MODEL_ALIAS
    assert llm["context_window"] == 2048 and llm["context_source"].startswith("configured")
    text = rag_cmd("status", env=env)
    assert "smollm2-135m" in text.stdout and "sk-secret" not in text.stdout + res.stdout
    down = rag_cmd("status", env={**env, "RAG_LLM_BASE_URL": f"http://127.0.0.1:{_free_port()}/v1"})
    assert down.returncode == 0 and "unavailable" in down.stdout and "cannot reach" in down.stdout


def test_an_endpoint_that_went_down_is_reported_down_and_back_up(sample_index, tmp_path):
    """The sidebar, /healthz and the pool read the endpoint's discovered state. It was found healthy once and kept
    so: after the server went away, every answer failed with "cannot reach" while they all said healthy."""
    answer = tmp_path / "answer.md"
    answer.write_text("The office opens at 8:30 [1].")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = [sys.executable, str(Path(__file__).parents[1] / "data" / "scripted_llm.py"), str(port), str(answer)]
    settings = sample_index.model_copy(update={"llm_base_url": url, "llm_context_window": LLM_CTX,
                                               "data_dir": tmp_path / "data"})
    shutil.copytree(sample_index.data_dir, settings.data_dir)
    rag = RAG.from_settings(settings)
    try:
        with running(server, tmp_path / "llm.log", f"{url}/models", 30, "the scripted model server"):
            assert rag.ask(QUESTION).text
            assert rag.endpoint.info.healthy
        with pytest.raises(RagError, match="cannot reach"):
            rag.ask(QUESTION)
        info = rag.endpoint.info
        assert not info.healthy and "cannot reach" in info.error
        with running(server, tmp_path / "llm2.log", f"{url}/models", 30, "the scripted model server"):
            time.sleep(5.5)  # an unusable endpoint is asked again at most every 5 s
            assert rag.endpoint.info.healthy
            assert rag.ask(QUESTION).text
    finally:
        rag.close()
