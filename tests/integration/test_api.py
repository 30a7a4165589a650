"""`rag serve`: the OpenAI-compatible API, driven by the official `openai` SDK and LangChain's ChatOpenAI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE_DOCS, _free_port, rag_cmd

QUESTION = "What is the hotel cap for business travel?"


@pytest.fixture(scope="module", params=["llamacpp", "vllm"])
def api(request, sample_index, tmp_path_factory):
    """`rag serve` in front of each real LLM server in turn."""
    from rag.settings import Settings

    llm_server = request.getfixturevalue("llm_server" if request.param == "llamacpp" else "vllm_server")
    from rag.index.store import open_store

    root = tmp_path_factory.mktemp("api")
    data = root / "data"
    shutil.copytree(sample_index.data_dir, data)
    with open_store(Settings(data_dir=data)) as store:
        for path in store.documents():
            store.set_groups(path, ["hr"] if path.endswith("employee-handbook.pdf") else ["everyone"])
    env = {**os.environ, "RAG_DATA_DIR": str(data), "RAG_LLM_BASE_URL": llm_server, "RAG_AUTH": "password",
           "RAG_USERS_FILE": str(root / "users.toml"), "RAG_LLM_CONTEXT_WINDOW": "1024",
           "RAG_LLM_MAX_TOKENS": "32", "RAG_LLM_TEMPERATURE": "0"}
    keys = {}
    for name, groups in (("alice", "it"), ("bob", "hr")):
        assert rag_cmd("users", "add", name, "--groups", groups, "--no-password", env=env).returncode == 0
        r = rag_cmd("users", "key", name, env=env)
        assert r.returncode == 0, r.stderr
        keys[name] = r.stdout.strip()
    port = _free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, (root / "serve.log").read_text()
        try:
            httpx.get(url + "/healthz", timeout=2)
            break
        except httpx.HTTPError:
            assert time.time() < deadline, "rag serve did not come up within 60 s"
            time.sleep(0.3)
    yield url, keys
    proc.terminate()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal (so -15, not a crash).
    assert proc.wait(timeout=30) in (0, -15), (root / "serve.log").read_text()
    log.close()
    assert "Traceback" not in (root / "serve.log").read_text()


def test_openai_sdk_chat_streaming_and_not(api):
    import openai

    url, keys = api
    client = openai.OpenAI(base_url=url + "/v1", api_key=keys["bob"])
    assert [m.id for m in client.models.list().data] == ["documents"]

    r = client.chat.completions.create(model="documents", messages=[{"role": "user", "content": QUESTION}])
    assert r.choices[0].message.content
    # The model's own reason: "length" when RAG_LLM_MAX_TOKENS (32 here) cut the answer off (test_chain checks
    # that it is reported; llama.cpp's usage is counted here, so the two are not compared token for token).
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].finish_reason == "stop" or r.usage.completion_tokens >= 30
    assert r.usage.prompt_tokens > 100 and r.usage.completion_tokens > 0
    sources = r.model_extra["sources"]
    assert sources and any(s["path"].endswith("employee-handbook.pdf") for s in sources)
    # The citation check's result on every source: null where the answer does not cite it.
    assert all(s["verdict"] in ("supported", "unsupported") and 0 <= s["support"] <= 1 if s["cited"]
               else s["verdict"] is None and s["support"] is None for s in sources)
    # Each source names the route that shows it in place: the PDF page with the passage highlighted.
    pdf = next(s for s in sources if s["path"].endswith("employee-handbook.pdf"))
    assert pdf["view"]["kind"] == "page" and pdf["char_end"] > pdf["char_start"]
    page = httpx.get(url + pdf["view"]["url"], headers={"Authorization": f"Bearer {keys['bob']}"})
    assert page.status_code == 200 and page.headers["content-type"] == "image/png"
    assert page.content.startswith(b"\x89PNG") and int(page.headers["x-rag-highlight-boxes"]) > 0
    assert page.headers["x-rag-page"] == str(pdf["page"])

    chunks = list(client.chat.completions.create(
        model="documents", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": QUESTION}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason in ("stop", "length")]
    assert len(final) == 1 and final[0].model_extra["sources"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_clients_max_tokens_is_what_the_model_generates(api):
    import openai

    url, keys = api
    client = openai.OpenAI(base_url=url + "/v1", api_key=keys["bob"])
    r = client.chat.completions.create(model="documents", max_tokens=3, seed=1,
                                       messages=[{"role": "user", "content": QUESTION}])
    # The server's own count: 3 tokens, not the operator's 32, and the client is told the answer was cut.
    assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason == "length", r


def test_permissions_and_errors(api):
    import openai

    url, keys = api
    alice = openai.OpenAI(base_url=url + "/v1", api_key=keys["alice"], max_retries=0)
    r = alice.chat.completions.create(model="documents", messages=[{"role": "user", "content": QUESTION}])
    # The hotel cap lives in the handbook, which only hr may read: alice never gets it as a source.
    assert not any(s["path"].endswith("employee-handbook.pdf") for s in r.model_extra["sources"])
    # Her own sources are shown in place (the text around the passage); the handbook's page is not, by any route.
    mine = r.model_extra["sources"][0]
    assert mine["view"]["kind"] == "text"
    as_alice = {"Authorization": f"Bearer {keys['alice']}"}
    window = httpx.get(url + mine["view"]["url"], headers=as_alice).json()
    assert window["passage"] and set(window) >= {"before", "after", "at_start", "at_end"}
    assert httpx.get(url + mine["view"]["url"]).status_code == 401
    handbook = str(Path(SAMPLE_DOCS / "employee-handbook.pdf").absolute())
    for route in (f"/v1/sources/page?model=documents&page=1&path={handbook}",
                  f"/v1/sources/text?model=documents&start=0&end=400&path={handbook}",
                  f"/v1/sources/text?model=documents&start=0&end=400&path={handbook}.missing"):
        denied = httpx.get(url + route, headers=as_alice)
        assert denied.status_code == 404 and "no such document, or you may not read it" in denied.text

    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        openai.OpenAI(base_url=url + "/v1", api_key="rag_wrong", max_retries=0).models.list()
    assert httpx.get(url + "/v1/models").status_code == 401
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        alice.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message must be"):
        alice.chat.completions.create(model="documents", messages=[{"role": "assistant", "content": "hi"}])

    health = httpx.get(url + "/healthz").json()
    assert health["status"] == "ok" and health["llm"]["model"] == "smollm2-135m-demo"
    # No key is needed here, so nothing about the documents: a user who may read 6 used to learn there are 8.
    assert health["store"] == {"ok": True}
    m = httpx.get(url + "/metrics").text
    assert 'rag_questions_total{endpoint=' in m and 'outcome="answered"' in m
    assert 'rag_http_requests_total{route="/v1/chat/completions",status="200"}' in m
    assert 'status="401"' in m and "rag_time_to_first_token_seconds_bucket" in m
    assert "rag_packing_fill_ratio_count" in m and keys["alice"] not in m
    assert "# TYPE rag_citations_total counter" in m or "# TYPE rag_citations counter" in m


def test_langchain_chat_openai_against_the_api(api):
    from langchain_openai import ChatOpenAI

    url, keys = api
    llm = ChatOpenAI(base_url=url + "/v1", api_key=keys["bob"], model="documents", max_retries=0)
    msg = llm.invoke(QUESTION)
    assert msg.content
    pieces = [c.content for c in llm.stream(QUESTION)]
    assert len([p for p in pieces if p]) >= 2


def test_llm_down_is_a_502_with_the_reason(sample_index, tmp_path):
    from fastapi.testclient import TestClient

    from rag.api.app import create_app
    from rag.settings import Settings

    data = tmp_path / "data"
    shutil.copytree(sample_index.data_dir, data)
    settings = Settings(data_dir=data, llm_base_url=f"http://127.0.0.1:{_free_port()}/v1", RAG_AUDIT_LOG="")
    # TestClient's default Host (testserver) is not a name of this machine: the API on loopback refuses it.
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        r = client.post("/v1/chat/completions", json={"model": "documents",
                                                      "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 502 and "cannot reach the LLM" in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json={"model": "documents", "stream": True,
                                                      "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 502
        assert client.get("/healthz").status_code == 503
