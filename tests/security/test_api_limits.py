"""Hole 5 of the hardening issue, the API half of "unbounded resources": each test performs the attack against a
real `rag serve` (or `rag mcp --http`) process.

- A huge request body (chunked, or with a Content-Length smaller than the chunked body behind it) was read whole
  into memory and parsed; now 413 once the cap is passed, before any route runs.
- Thousands of messages, or a long history, cost a tokenizer call per message before the LLM was asked; now 413
  before any of it. The LLM URL points where nothing listens: a request that got that far would get a 502.
- One user could open any number of chats at once, and all users together could saturate the LLM and the
  thread pool, so that health probes starved; now 429 with Retry-After over the per-user or overall cap,
  while another user is still served and /healthz and /metrics answer at once.
- The same caps for MCP tool calls over HTTP.

The slow model is tests/data/scripted_llm.py with a delay: every request to it stays in flight for seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import _free_port, running

RAG = str(Path(sys.executable).parent / "rag")
DATA = Path(__file__).resolve().parent.parent / "data"
HR_QUESTION = "How many days of annual leave do employees get?"  # alice (hr) finds the handbook: the LLM is asked
IT_QUESTION = "How do I contact the IT Service Desk?"  # bob (it) finds the IT guidelines
SLOW_S = 8.0  # how long the scripted model keeps each chat in flight


@pytest.fixture(scope="module")
def base_env(group_index, tmp_path_factory):
    """(environment, API keys of alice and bob): a copy of the group index, password auth, no rag.toml. Each
    server gets its own copy (:func:`_own_data`): an embedded store admits one process."""
    from rag.security.users import UserDirectory

    root = tmp_path_factory.mktemp("limits")
    data = root / "data"
    shutil.copytree(group_index.data_dir, data)
    users = UserDirectory(data / "users.toml")
    keys = {name: users.issue_api_key(name) for name in ("alice", "bob")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") or k == "RAG_MODELS_DIR"}
    env.update(RAG_DATA_DIR=str(data), RAG_AUTH="password", RAG_CONFIG="",
               RAG_LLM_CONTEXT_WINDOW="2048", RAG_LLM_MAX_TOKENS="32", RAG_AUDIT_LOG="")
    return env, keys


def _own_data(env: dict[str, str], root: Path, **settings: str) -> dict[str, str]:
    data = root / "data"
    shutil.copytree(env["RAG_DATA_DIR"], data)
    return {**env, "RAG_DATA_DIR": str(data), "RAG_USERS_FILE": str(data / "users.toml"), **settings}


def _chat(messages: list[dict], stream: bool = False) -> dict:
    return {"model": "documents", "messages": messages, "stream": stream}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body  # OpenAI's error shape
    return body["error"]


# --- sizes: an LLM URL where nothing listens ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_no_llm(base_env, tmp_path_factory):
    env, keys = base_env
    root = tmp_path_factory.mktemp("serve")
    env = _own_data(env, root, RAG_LLM_BASE_URL=f"http://127.0.0.1:{_free_port()}/v1", RAG_API_MAX_BODY_KB="256",
                    RAG_API_MAX_MESSAGES="50", RAG_API_MAX_CHARS="20000")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "serve.log"
    # /healthz is 503 without an LLM: /metrics says it listens.
    with running([RAG, "serve", "--port", str(port)], log, f"{url}/metrics", 90, "rag serve", env=env):
        yield url, keys


def _rejected(url: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    m = re.search(rf'^rag_http_rejected_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _big_request(n_bytes: int) -> bytes:
    """A valid chat request of about ``n_bytes``: one long user message."""
    import json

    return json.dumps(_chat([{"role": "user", "content": "How many vacation days? " + "x" * n_bytes}])).encode()


@pytest.mark.attack(5, "a chat request body of megabytes, sent chunked without a Content-Length")
def test_a_huge_chunked_body_is_refused_while_it_arrives(api_no_llm):
    url, keys = api_no_llm
    body = _big_request(8 * 1024 * 1024)
    sent = 0

    def chunks():
        nonlocal sent
        for i in range(0, len(body), 64 * 1024):
            sent += 64 * 1024
            yield body[i:i + 64 * 1024]

    before = _rejected(url, "body_too_large")
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", content=chunks(), timeout=60,
                   headers={**_auth(keys["alice"]), "Content-Type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    error = _error(r)
    assert error["code"] == "request_too_large" and "RAG_API_MAX_BODY_KB=256" in error["message"]
    assert time.monotonic() - t < 10
    assert _rejected(url, "body_too_large") == before + 1


def _raw_post(url: str, head: str, body_chunks, read_timeout: float = 30) -> tuple[int, bytes]:
    """A hand-written HTTP/1.1 request (httpx will not send a lying Content-Length): (status, response bytes).
    Sending stops when the server closes; the response is read either way."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(head.encode())
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except OSError:  # the server answered and closed while we were still sending
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data or not _complete(data):
                part = s.recv(65536)
                if not part:
                    break
                data += part
        except OSError:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: (\d+)", head, re.I)
    return m is not None and len(body) >= int(m.group(1))


@pytest.mark.attack(5, "a chunked body of megabytes behind a false small Content-Length")
def test_a_false_small_content_length_does_not_pass_the_cap(api_no_llm):
    url, keys = api_no_llm
    body = _big_request(4 * 1024 * 1024)

    def chunked():
        for i in range(0, len(body), 64 * 1024):
            piece = body[i:i + 64 * 1024]
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        yield b"0\r\n\r\n"

    # A cap that trusted the header would let this through: Transfer-Encoding decides the framing (RFC 9112).
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {keys['alice']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, data = _raw_post(url, head, chunked())
    # uvicorn's parser accepts the pair and reads the chunked body (before the caps: a 502, the LLM was asked).
    assert status == 413, data[:500]
    assert b"RAG_API_MAX_BODY_KB" in data


@pytest.mark.attack(5, "a chat request with an honest Content-Length of megabytes")
def test_a_huge_declared_body_is_refused_before_it_is_read(api_no_llm):
    url, keys = api_no_llm
    body = _big_request(8 * 1024 * 1024)
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", content=body, timeout=60,
                   headers={**_auth(keys["alice"]), "Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:500]
    assert "RAG_API_MAX_BODY_KB" in _error(r)["message"]
    assert time.monotonic() - t < 10


def _history(turns: int, chars: int) -> list[dict]:
    msgs = []
    for i in range(turns):
        msgs += [{"role": "user", "content": f"question {i} " + "y" * chars},
                 {"role": "assistant", "content": f"answer {i} " + "z" * chars}]
    return msgs + [{"role": "user", "content": "And how many vacation days do I get?"}]


@pytest.mark.attack(5, "a chat whose history would cost thousands of tokenizer calls, or a long one")
@pytest.mark.parametrize(("turns", "chars", "setting"), [(2000, 0, "RAG_API_MAX_MESSAGES=50"),
                                                          (10, 1500, "RAG_API_MAX_CHARS=20000")],
                         ids=["4001-messages", "30000-characters"])
def test_a_long_history_is_refused_before_any_token_is_counted(api_no_llm, turns, chars, setting):
    url, keys = api_no_llm
    before = _rejected(url, "conversation_too_large")
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=_chat(_history(turns, chars)), headers=_auth(keys["alice"]),
                   timeout=60)
    # A 502 would mean the LLM (where nothing listens) was asked: the condense step, the token counts.
    assert r.status_code == 413, r.text[:500]
    error = _error(r)
    assert error["code"] == "conversation_too_large" and setting in error["message"]
    assert time.monotonic() - t < 5
    assert _rejected(url, "conversation_too_large") == before + 1


# --- concurrency: a slow model ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_llm(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow-llm")
    answer = root / "answer.md"
    answer.write_text("Employees get 25 days of annual leave [1].")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with running([sys.executable, str(DATA / "scripted_llm.py"), str(port), str(answer), str(SLOW_S)],
                 root / "llm.log", f"{url}/models", 30, "the scripted model server"):
        yield url


@pytest.fixture(scope="module")
def api_slow(base_env, slow_llm, tmp_path_factory):
    env, keys = base_env
    root = tmp_path_factory.mktemp("serve")
    env = _own_data(env, root, RAG_LLM_BASE_URL=slow_llm, RAG_API_MAX_CONCURRENT="3",
                    RAG_API_MAX_CONCURRENT_PER_USER="2", RAG_API_QUEUE_SECONDS="0", RAG_CONDENSE_QUESTIONS="false")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "serve.log"
    with running([RAG, "serve", "--port", str(port)], log, f"{url}/healthz", 90, "rag serve", env=env):
        # Load the embedding model once, outside the timed part (a refused question does not ask the LLM).
        httpx.post(f"{url}/v1/chat/completions", json=_chat([{"role": "user", "content": "zebra quantum"}]),
                   headers=_auth(keys["bob"]), timeout=120)
        yield url, keys, slow_llm.removesuffix("/v1")


def _busy(url: str) -> float:
    m = re.search(r"^rag_http_busy_slots (\S+)$", httpx.get(f"{url}/metrics", timeout=5).text, re.M)
    return float(m.group(1)) if m else 0.0


def _llm_busy(llm: str, n: int = 1) -> None:
    """Until the slow model has ``n`` requests waiting for it."""
    deadline = time.monotonic() + 60
    while (now := httpx.get(f"{llm}/in_flight", timeout=5).json()["in_flight"]) < n:
        assert time.monotonic() < deadline, f"{now} of {n} requests reached the model"
        time.sleep(0.1)


class _InFlight:
    """Chats sent in background threads; ``results()`` waits for their status codes."""

    def __init__(self, url: str) -> None:
        self.url, self.threads, self.codes = url, [], {}

    def send(self, name: str, key: str, question: str) -> None:
        def run():
            r = httpx.post(f"{self.url}/v1/chat/completions", json=_chat([{"role": "user", "content": question}]),
                           headers=_auth(key), timeout=120)
            self.codes[name] = r.status_code

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)


    def results(self) -> dict[str, int]:
        for t in self.threads:
            t.join(timeout=120)
        return self.codes


def _timed_post(url: str, key: str, question: str) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=_chat([{"role": "user", "content": question}]),
                   headers=_auth(key), timeout=2 * SLOW_S + 30)
    return r, time.monotonic() - t


@pytest.mark.attack(5, "one user opens more chats at once than allowed, to take the LLM from the others")
def test_one_user_over_the_per_user_cap_gets_429_and_others_are_served(api_slow):
    url, keys, llm = api_slow
    flight = _InFlight(url)
    for i in range(2):
        flight.send(f"alice-{i}", keys["alice"], HR_QUESTION)
    _llm_busy(llm, 2)
    r, took = _timed_post(url, keys["alice"], HR_QUESTION)
    assert r.status_code == 429, f"{r.status_code} after {took:.1f} s: a third chat of alice was let in"
    assert took < 2 and r.headers["retry-after"].isdigit()
    error = _error(r)
    assert error["code"] == "rate_limit_exceeded" and "RAG_API_MAX_CONCURRENT_PER_USER=2" in error["message"]
    r, took = _timed_post(url, keys["bob"], IT_QUESTION)  # another user: still a slot for him
    assert r.status_code == 200, r.text[:500]
    assert flight.results() == {"alice-0": 200, "alice-1": 200}


@pytest.mark.attack(5, "every chat slot held at once, so that health probes starve and the next user waits")
def test_over_the_overall_cap_gets_429_and_health_answers_at_once(api_slow):
    url, keys, llm = api_slow
    flight = _InFlight(url)
    flight.send("alice-0", keys["alice"], HR_QUESTION)
    flight.send("alice-1", keys["alice"], HR_QUESTION)
    flight.send("bob-0", keys["bob"], IT_QUESTION)
    _llm_busy(llm, 3)
    r, took = _timed_post(url, keys["bob"], IT_QUESTION)  # bob has one of his two: the overall cap says no
    assert r.status_code == 429, f"{r.status_code} after {took:.1f} s: a fourth chat was let in"
    assert took < 2 and r.headers["retry-after"].isdigit()
    assert "RAG_API_MAX_CONCURRENT=3" in _error(r)["message"]
    for path in ("/healthz", "/metrics"):
        t = time.monotonic()
        assert httpx.get(url + path, timeout=5).status_code == 200
        assert time.monotonic() - t < 1, f"{path} waited behind the chats"
    assert _busy(url) == 3  # still held: the probes above ran while every slot was busy
    assert flight.results() == {"alice-0": 200, "alice-1": 200, "bob-0": 200}


@pytest.fixture(scope="module")
def api_wide(base_env, slow_llm, tmp_path_factory):
    """Caps raised above the 40 worker threads that sync routes share: only the health route's own threads
    keep it answering."""
    env, keys = base_env
    root = tmp_path_factory.mktemp("serve")
    env = _own_data(env, root, RAG_LLM_BASE_URL=slow_llm, RAG_API_MAX_CONCURRENT="100",
                    RAG_API_MAX_CONCURRENT_PER_USER="100", RAG_CONDENSE_QUESTIONS="false")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with running([RAG, "serve", "--port", str(port)], root / "serve.log", f"{url}/healthz", 90, "rag serve",
                 env=env):
        yield url, keys, slow_llm.removesuffix("/v1")


@pytest.mark.attack(5, "chats enough to fill every worker thread of the API, so that health probes starve")
def test_health_answers_while_chats_fill_every_worker_thread(api_wide):
    url, keys, llm = api_wide
    flight = _InFlight(url)
    for i in range(44):
        flight.send(f"alice-{i}", keys["alice"], HR_QUESTION)
    _llm_busy(llm, 40)  # anyio's default pool: 40 threads, each now waiting for the model
    for path in ("/healthz", "/metrics"):
        t = time.monotonic()
        assert httpx.get(url + path, timeout=2 * SLOW_S).status_code == 200
        assert time.monotonic() - t < 1, f"{path} waited {time.monotonic() - t:.1f} s behind the chats"
    assert set(flight.results().values()) == {200}


# --- MCP over HTTP ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["rag mcp --http", "rag serve --mcp"])
def mcp_slow(request, base_env, slow_llm, tmp_path_factory):
    env, keys = base_env
    root = tmp_path_factory.mktemp("mcp")
    env = _own_data(env, root, RAG_LLM_BASE_URL=slow_llm, RAG_API_MAX_CONCURRENT_PER_USER="1",
                    RAG_API_QUEUE_SECONDS="0", RAG_CONDENSE_QUESTIONS="false", RAG_API_MAX_BODY_KB="256",
                    RAG_API_MAX_MESSAGES="50")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    log = root / "mcp.log"
    args = ["mcp", "--http"] if request.param == "rag mcp --http" else ["serve", "--mcp"]
    with running([RAG, *args, "--port", str(port)], log, url, 90, request.param, env=env, any_status=True):
        yield url, keys, slow_llm.removesuffix("/v1")


def _mcp(url: str, key: str) -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=_auth(key), timeout=120)))


@pytest.mark.attack(5, "an agent runs more MCP tool calls at once than allowed, or sends a huge or long one")
def test_mcp_tool_calls_have_the_same_caps(mcp_slow):
    url, keys, llm = mcp_slow

    async def main() -> None:
        async with _mcp(url, keys["alice"]) as slow, _mcp(url, keys["alice"]) as second, \
                _mcp(url, keys["bob"]) as other:
            await second.call_tool("search", {"query": "warm-up"})  # loads the embedding model
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow.call_tool, "ask", {"question": HR_QUESTION})
                await anyio.to_thread.run_sync(_llm_busy, llm)  # the ask holds alice's one slot
                t = time.monotonic()
                with pytest.raises(MCPError, match="RAG_API_MAX_CONCURRENT_PER_USER=1"):
                    await second.call_tool("search", {"query": "annual leave"})
                assert time.monotonic() - t < 2
                # Another user is served meanwhile.
                assert not (await other.call_tool("search", {"query": "IT Service Desk"})).is_error
            history = [{"role": "user", "content": f"q{i}"} for i in range(60)]
            result = await second.call_tool("ask", {"question": "And now?", "history": history})
            assert result.is_error and "RAG_API_MAX_MESSAGES=50" in result.content[0].text
        r = httpx.post(url, content=b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
                       b'"search", "arguments": {"query": "' + b"x" * (1024 * 1024) + b'"}}}',
                       headers={**_auth(keys["alice"]), "Content-Type": "application/json",
                                "Accept": "application/json, text/event-stream"}, timeout=30)
        assert r.status_code == 413 and "RAG_API_MAX_BODY_KB=256" in r.json()["error"]["message"]

    anyio.run(main)
