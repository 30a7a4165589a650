"""Hole 3: credentials written into URL settings (``http://user:password@host``, ``?api_key=…``) never reach an
output — error messages, ``/healthz`` and ``/metrics`` (no key needed), API error bodies, the UI, the CLI, logs.

Every URL setting gets its own password and query token, and points at a port where nothing listens, so every
call fails and the error paths (the ones that quote URLs) run; then every channel is searched for the tokens.
A second test checks that the credentials still reach the server: scrubbing must not break the connection."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import streamlit as st
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from conftest import ROOT, _free_port, rag_cmd

QUESTION = "How many vacation days do employees get?"


def _plant(which: str) -> tuple[dict[str, str], list[str]]:
    """The environment with credentials planted in one kind of URL setting, and the secrets to look for."""
    users: list[tuple[str, str]] = []
    tokens: list[str] = []

    def dead(path: str, user: str, password: str, param: str, token: str) -> str:
        users.append((user, password))
        tokens.append(token)
        return f"http://{user}:{password}@127.0.0.1:{_free_port()}{path}?{param}={token}"

    if which == "llm_base_url":
        env = {"RAG_LLM_BASE_URL": dead("/v1", "alice", "pw-llm-base-51c2", "token", "tok-llm-base-9e07")}
    elif which == "llm_endpoints":
        env = {"RAG_LLM_ENDPOINTS": json.dumps([
            {"base_url": dead("/v1", "bob", "pw-endpoint-1-a81f", "api_key", "tok-endpoint-1-3d5b")},
            {"base_url": dead("/v1", "carol", "pw-endpoint-2-77e0", "token", "tok-endpoint-2-c4a9"), "priority": 1}])}
    elif which == "rerank_url":
        env = {"RAG_RERANK_URL": dead("/rerank", "rr", "pw-rerank-0b6d", "api_key", "tok-rerank-f21e")}
    elif which == "embedding_url":
        env = {"RAG_EMBEDDING_URL": dead("/v1", "em", "pw-embed-5a3f", "api_key", "tok-embed-7c21"),
               "RAG_EMBEDDING_URL_RETRIES": "0"}
    else:
        env = {"RAG_QDRANT_URL": dead("/", "qd", "pw-qdrant-6e3c", "api-key", "tok-qdrant-18aa")}
    env.setdefault("RAG_LLM_BASE_URL", f"http://127.0.0.1:{_free_port()}/v1")
    # Also as an HTTP Basic header would carry them, should a header ever be printed.
    basics = [base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in users]
    return env, [p for _, p in users] + tokens + basics


def _library(outputs: dict[str, str]) -> None:
    from rag.generation.chain import RAG
    from rag.settings import Settings

    settings = Settings()
    outputs["repr(settings)"] = f"{settings!r} {settings} {settings.model_dump()} {settings.model_dump_json()}"
    try:
        rag = RAG.from_settings(settings)
    except Exception as exc:
        outputs["library exception (open)"] = f"{exc!r} {exc} {exc.__cause__!r}"
        return
    try:
        outputs["endpoint info"] = repr([m.endpoint.info for m in rag.pool.members])
        rag.ask(QUESTION)
        raise AssertionError("the question was answered without an LLM")
    except AssertionError:
        raise
    except Exception as exc:
        outputs["library exception (ask)"] = f"{exc!r} {exc}"
    finally:
        rag.close()


def _api(outputs: dict[str, str]) -> None:
    from rag.api.app import create_app
    from rag.settings import Settings

    chat = {"model": "documents", "messages": [{"role": "user", "content": QUESTION}]}
    try:
        with TestClient(create_app(Settings()), base_url="http://127.0.0.1:8000") as client:
            outputs["/healthz"] = client.get("/healthz").text
            outputs["API error"] = client.post("/v1/chat/completions", json=chat).text
            outputs["API stream error"] = client.post("/v1/chat/completions", json={**chat, "stream": True}).text
            outputs["/metrics"] = client.get("/metrics").text
    except Exception as exc:
        outputs["API exception"] = f"{exc!r} {exc}"


def _cli(outputs: dict[str, str], env: dict[str, str]) -> None:
    env = {**env, "COLUMNS": "1000"}  # rich would wrap long lines, and a token cut in two would go unseen
    for args in (("status",), ("status", "--json"), ("ask", QUESTION), ("ask", "--json", QUESTION)):
        r = rag_cmd(*args, env=env, timeout=300)
        outputs["rag " + " ".join(args[:-1] if args[0] == "ask" else args)] = r.stdout + r.stderr
    # `rag ui` names the LLM endpoints and the index in its first line, then becomes Streamlit: read, then stop it.
    ui = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "ui", "--port", str(_free_port())],
                          env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [ui.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    outputs["rag ui"] = "".join(lines)


def _ui(outputs: dict[str, str]) -> None:
    at = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=300)
    try:
        at.run()
        if at.chat_input:
            at.chat_input[0].set_value(QUESTION).run()
        shown = []
        for kind in ("markdown", "caption", "error", "warning", "info", "success", "exception", "text", "code",
                     "json", "expander", "title", "header", "subheader"):
            shown += [f"{getattr(e, 'value', '')} {getattr(e, 'label', '')} {getattr(e, 'body', '')}"
                      for e in getattr(at, kind, [])]
        outputs["UI"] = "\n".join(shown)
    finally:
        st.cache_resource.clear()  # closes the RAG the app shares, freeing the store for the next channel


@pytest.mark.attack(3, "an admin puts user:password@ and ?api_key= tokens in the LLM, Qdrant, rerank and embedding "
                       "URLs; an unauthenticated client (or a log reader) reads them back from /healthz, /metrics, "
                       "errors, the UI or the CLI")
@pytest.mark.parametrize("which", ["llm_base_url", "llm_endpoints", "rerank_url", "qdrant_url", "embedding_url"])
def test_no_url_credential_reaches_any_output(which, sample_index, tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    shutil.copytree(sample_index.data_dir, data)
    env, secrets = _plant(which)
    env |= {"RAG_DATA_DIR": str(data), "RAG_LLM_CONTEXT_WINDOW": "1024", "RAG_LLM_TIMEOUT": "10"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    caplog.set_level(logging.DEBUG)

    outputs: dict[str, str] = {}
    _library(outputs)
    _api(outputs)
    _cli(outputs, env)
    _ui(outputs)
    outputs["logs"] = "\n".join(logging.Formatter("%(name)s: %(message)s").format(r) for r in caplog.records)
    audit = data / "audit.jsonl"
    outputs["audit log"] = audit.read_text() if audit.exists() else ""

    # The error paths did run, so the channels had something to leak.
    assert "cannot reach" in outputs["rag ask"] and "cannot reach" in outputs["UI"], outputs
    assert "onprem-rag UI" in outputs["rag ui"], outputs["rag ui"]
    found = {channel: [s for s in secrets if s in "".join(text.split())] for channel, text in outputs.items()}
    leaks = {c: s for c, s in found.items() if s}
    assert not leaks, f"leaked: {leaks}\n" + "\n".join(f"--- {c}: {outputs[c][:1500]}" for c in leaks)


@pytest.mark.attack(3, "a slip in RAG_LLM_ENDPOINTS (one entry, not a list) makes the settings invalid, and the "
                       "error quotes the entry: its URL password and API key go to the terminal and its logs")
def test_an_invalid_setting_is_reported_without_its_value(tmp_path):
    entry = {"base_url": "http://alice:pw-typo-5d1c@gpu1:8000/v1?api_key=tok-typo-0e2f", "api_key": "sk-typo-8a4b"}
    env = {"RAG_DATA_DIR": str(tmp_path), "RAG_LLM_ENDPOINTS": json.dumps(entry), "COLUMNS": "1000"}
    for args in (("status",), ("ask", QUESTION)):
        r = rag_cmd(*args, env=env, timeout=120)
        assert r.returncode == 2 and "llm_endpoints" in r.stderr, r.stderr
        leaked = [s for s in ("pw-typo-5d1c", "tok-typo-0e2f", "sk-typo-8a4b") if s in r.stdout + r.stderr]
        assert not leaked, r.stderr


BASIC = "Basic " + base64.b64encode(b"alice:s3cret").decode()


class _AuthServer:
    """A real HTTP server that answers only requests with HTTP Basic alice:s3cret and the token XYZ (``?api_key=``
    or Qdrant's ``api-key`` header), like an LLM server, a reranker and Qdrant behind an authenticating proxy."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.seen: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server names)
                self._answer(None)

            def do_POST(self):  # noqa: N802
                self._answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def _answer(self, body):
                url = httpx.URL(self.path)
                server.seen.append((self.path, dict(self.headers)))
                token = url.params.get("api_key") or self.headers.get("api-key")
                if self.headers.get("Authorization") != BASIC or token != "XYZ":
                    return self._send(401, {"error": {"message": "who are you?"}})
                if body and body.get("stream"):
                    return self._send(200, None, stream=True)
                self._send(*server.route(url.path, body))

            def _send(self, status, data, stream=False):
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
                self.end_headers()
                if stream:
                    for piece in ("Hello", " there"):
                        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                else:
                    self.wfile.write(json.dumps(data).encode())

            def log_message(self, *args):
                pass

        self.port = _free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def route(path: str, body) -> tuple[int, dict]:
        if path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": "m", "object": "model"}]}
        if path == "/v1/chat/completions":
            return 200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        if path == "/v1/rerank":
            return 200, {"results": [{"index": 0, "relevance_score": 0.9}]}
        if path == "/v1/embeddings":
            return 200, {"data": [{"index": 0, "embedding": [0.6, 0.8]}]}
        if path == "/":  # Qdrant's version
            return 200, {"title": "qdrant - vector search engine", "version": "1.15.0"}
        if path == "/collections/c/exists":
            return 200, {"result": {"exists": False}, "status": "ok", "time": 0.0}
        return 404, {"error": "no such route"}  # no server-specific route: a plain OpenAI-compatible server

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def auth_server():
    server = _AuthServer()
    yield server
    server.close()


def test_credentials_in_the_url_still_authenticate(auth_server, caplog):
    """The LLM (discovery and chat, streamed or not), reranker, embeddings and Qdrant clients still send a URL's user:password
    (HTTP Basic) and its query token, though nothing shows them."""
    from rag.index.store.server import QdrantServerStore
    from rag.llm.endpoints import OpenAICompatibleEndpoint
    from rag.index.remote_embeddings import RemoteEmbedder
    from rag.retrieval.rerank import EndpointReranker

    caplog.set_level(logging.DEBUG)
    host = f"127.0.0.1:{auth_server.port}"
    ep = OpenAICompatibleEndpoint(f"http://alice:s3cret@{host}/v1?api_key=XYZ", context_window=4096)
    assert ep.ping() is None and ep.info.healthy and ep.info.model == "m", ep.info
    assert ep.base_url == f"http://***@{host}/v1?api_key=***" and ep.info.base_url == ep.base_url
    model = ep.chat_model(max_tokens=5, streaming=False)
    assert model.invoke("hi").content == "Hello there"
    assert "".join(c.content for c in ep.chat_model(max_tokens=5).stream("hi")) == "Hello there"
    assert "s3cret" not in repr(model) and "XYZ" not in repr(model)

    rr = EndpointReranker(f"http://alice:s3cret@{host}/v1?api_key=XYZ", api="cohere")
    assert rr.rerank("q", ["t"]) == [0.9]

    emb = RemoteEmbedder(f"http://alice:s3cret@{host}/v1?api_key=XYZ", model="m", tokenizer="all-MiniLM-L6-v2")
    assert emb.embed_query("q").tolist() == pytest.approx([0.6, 0.8])

    store = QdrantServerStore("c", url=f"http://alice:s3cret@{host}/?api-key=XYZ", timeout=5)
    assert store.location == f"http://{host}/collections/c"
    store.close()
    paths = [p for p, _ in auth_server.seen]
    assert {"/v1/models?api_key=XYZ", "/v1/chat/completions?api_key=XYZ", "/v1/rerank?api_key=XYZ",
            "/v1/embeddings?api_key=XYZ", "/collections/c/exists"} <= set(paths), paths

    # A wrong password fails as the server says, without quoting it.
    bad = OpenAICompatibleEndpoint(f"http://alice:wrong-pw-4f1@{host}/v1?api_key=XYZ")
    assert not bad.info.healthy and "401" in (bad.info.error or "") and "wrong-pw-4f1" not in bad.info.error
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret" not in logged and "XYZ" not in logged and "wrong-pw-4f1" not in logged
