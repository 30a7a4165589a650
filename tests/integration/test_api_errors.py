"""`rag serve`: every failure comes back in OpenAI's error shape with the status the README promises, never a bare
500 or FastAPI's ``{"detail": ...}``. Each test sends the request an audit found answered wrongly: a question too
long for the context window, a store that cannot be reached, a text part that is not a string, an audit log that
cannot be written behind a source view, a malformed body, an unknown path; and the OpenAPI schema is not served.

The app runs in-process (Starlette's TestClient, through every middleware, without re-raising server errors, so a
crash is the same bare 500 a live server sends), in front of tests/data/scripted_llm.py: a model that answers at
once, so each request gets as far as its error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import SAMPLE_DOCS, _free_port, running

DATA = Path(__file__).resolve().parent.parent / "data"
QUESTION = "What are the office opening hours?"


@pytest.fixture(scope="module")
def scripted_llm(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("scripted-llm")
    answer = root / "answer.md"
    answer.write_text("The office opens at 8:30 [1].")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with running([sys.executable, str(DATA / "scripted_llm.py"), str(port), str(answer)], root / "llm.log",
                 f"{url}/models", 30, "the scripted model server"):
        yield url


@pytest.fixture(scope="module")
def index(tmp_path_factory, embedder) -> tuple[Path, str]:
    """(data dir with office-faq.txt ingested for everyone, an API key of alice)."""
    from argon2 import PasswordHasher

    from ingest import ingest
    from rag.security.users import UserDirectory
    from rag.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("api-errors") / "data")
    report = ingest([SAMPLE_DOCS / "office-faq.txt"], settings, groups=["everyone"], embedder=embedder)
    assert report.added == 1 and not report.failed, report
    users = UserDirectory(settings.users_file, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    users.add("alice", ["staff"], "alice-secret-1")
    return settings.data_dir, users.issue_api_key("alice")


@contextmanager
def serve(index: tuple[Path, str], llm: str, **settings: Any) -> Iterator[TestClient]:
    """A client of `rag serve`'s app with alice's key; ``settings`` on top of password auth and a 2048-token
    window. The lifespan closes the store again, so the next test can open it."""
    from rag.api.app import create_app
    from rag.settings import Settings

    data, key = index
    app = create_app(Settings(**{"data_dir": data, "auth": "password", "llm_base_url": llm,
                                 "llm_context_window": 2048, "llm_max_tokens": 32, "condense_questions": False,
                                 "RAG_AUDIT_LOG": "", **settings}))
    # localhost: on 127.0.0.1 the app refuses any other Host (TestClient's default is "testserver").
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture
def api(index, scripted_llm) -> Iterator[TestClient]:
    with serve(index, scripted_llm) as client:
        yield client


def chat(client: TestClient, content: Any, stream: bool = False) -> Any:
    return client.post("/v1/chat/completions", json={"model": "documents", "stream": stream,
                                                       "messages": [{"role": "user", "content": content}]})


def error_of(r, status: int) -> dict[str, Any]:
    """The error of an OpenAI-shaped error response with ``status``."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/json", r.text[:500]
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    return body["error"]


# --- 1. client and store errors: not 500 -------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_question_too_long_for_the_context_window_is_a_400(api, stream):
    r = chat(api, (QUESTION + " ") * 400, stream)  # ~3000 tokens: more than a 2048-token window holds
    error = error_of(r, 400)
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    assert "too long for the model's 2048-token context window" in error["message"]
    assert "shorten it" in error["message"]


def test_an_unreachable_store_is_a_503_on_chat_and_source_views(index, scripted_llm):
    dead = f"http://127.0.0.1:{_free_port()}"
    with serve(index, scripted_llm, qdrant_url=dead) as client:
        for r in (chat(client, QUESTION),
                  client.get("/v1/sources/text", params={"model": "documents", "path": "x", "start": 0, "end": 10})):
            error = error_of(r, 503)
            assert error["type"] == "api_error" and error["code"] == "store_unavailable"
            assert f"cannot reach the Qdrant server at {dead}" in error["message"]


# --- 2. content parts are validated ------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [[{"type": "text", "text": 5}], [{"type": "text"}], ["just a string"],
                                     [{"text": "no type"}]],
                         ids=["text-not-a-string", "text-missing", "part-not-an-object", "type-missing"])
def test_a_malformed_content_part_is_a_422_naming_it(api, content):
    error = error_of(chat(api, content), 422)
    assert error["type"] == "invalid_request_error" and error["param"].startswith("messages.[0].content")


def test_text_parts_are_the_question_and_other_parts_are_ignored(api):
    r = chat(api, [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                   {"type": "text", "text": QUESTION}])
    assert r.status_code == 200, r.text[:500]
    assert r.json()["choices"][0]["message"]["content"] == "The office opens at 8:30 [1]."


# --- 3. an audit log that cannot be written, behind a source view -------------------------------------------------

def test_an_unwritable_required_audit_log_on_a_source_view_is_an_openai_error(index, scripted_llm):
    with serve(index, scripted_llm, audit_required=True, RAG_AUDIT_LOG="/proc/nope/audit.jsonl") as client:
        path = str(SAMPLE_DOCS / "office-faq.txt")
        r = client.get("/v1/sources/text", params={"model": "documents", "path": path, "start": 0, "end": 200})
        error = error_of(r, 500)
        assert error["type"] == "api_error"
        assert "cannot write the audit log /proc/nope/audit.jsonl" in error["message"]
        assert "RAG_AUDIT_REQUIRED" in error["message"]  # what to do next


# --- 4. validation errors and unknown paths in OpenAI's shape ------------------------------------------------------

@pytest.mark.parametrize(("body", "param", "says"), [
    ({"model": "documents", "messages": []}, "messages", "at least 1 item"),
    ({"messages": [{"role": "user", "content": QUESTION}]}, "model", "required"),
    (b'{"model": "documents", "messages": [', None, "not valid JSON"),
    (b"[1, 2]", None, "valid dictionary"),
], ids=["no-messages", "no-model", "malformed-json", "not-an-object"])
def test_an_invalid_body_is_a_422_in_openai_shape(api, body, param, says):
    if isinstance(body, bytes):
        r = api.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        r = api.post("/v1/chat/completions", json=body)
    error = error_of(r, 422)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert says in error["message"]


def test_an_unknown_path_or_method_is_an_openai_error(api):
    for method in ("GET", "POST"):
        error = error_of(api.request(method, "/v1/completions"), 404)
        assert error["type"] == "invalid_request_error"
        assert f"{method} /v1/completions" in error["message"] and "/v1/chat/completions" in error["message"]
    r = api.get("/v1/chat/completions")
    assert error_of(r, 405)["type"] == "invalid_request_error" and r.headers["allow"] == "POST"


def test_an_unexpected_failure_is_an_openai_error_without_its_details(api, monkeypatch):
    def broken(name):
        raise RuntimeError("internal detail /srv/secret/path")

    monkeypatch.setattr(api.app.state.collections, "get", broken)
    error = error_of(chat(api, QUESTION), 500)
    assert error["type"] == "api_error" and "/srv/secret" not in error["message"]


# --- 5. no OpenAPI schema without a key ----------------------------------------------------------------------------

def test_the_openapi_schema_and_docs_are_not_served(api):
    for path in ("/openapi.json", "/docs", "/redoc"):
        for headers in ({"Authorization": ""}, {}):  # without a key, and with alice's
            error_of(api.get(path, headers=headers), 404)
