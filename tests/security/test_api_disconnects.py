"""Hole 5 of the hardening issue, resources: a client that asks and hangs up, to the API (a chat completion) or to
the MCP server (an ``ask`` tool call). Each test performs the attack against real `rag serve --mcp` (and `rag mcp
--http`) processes in front of each real LLM server of the fixtures in turn: llama.cpp's, then vLLM's.

The chat route waited in a worker thread for the LLM's first token (streamed) or its whole answer (not streamed)
and never looked at the client meanwhile: one that disconnected kept its concurrency slot, and the LLM kept its
request, until then (85 s streamed, 69 s not, in these tests before the defence: the LLM busy for half a minute
more, then the prompt of a whole window to read). A user who asks and hangs up, again and again, held every slot of
theirs and queued work at the LLM for nobody. One who hung up once the answer streamed left its chain to the
garbage collector, and closing it made LangChain read the rest of the LLM's answer. Now the disconnect cancels the
answer: the request to the LLM is closed at once, and only then is the slot free again.

An MCP client that cancels its ``ask`` (``notifications/cancelled`` on the session transport; closing its request's
stream on the 2026-07-28 one) has its answer ended the same way. One that dropped its connection mid-call on the
session transport, without cancelling or ending its session, left the answer running: the SDK runs a tool in the
session, not in the request, so the request and its slot ended at once while the LLM went on for nobody (the
result has nowhere to go: no event store, so no client can resume the stream), and the same user's next call got
a slot meanwhile: a user could queue any number of answers at the LLM. Before the defence these tests found the
slot free at once and the LLM request still in flight 5 s later, with either LLM (a scripted model answering after
40 s was asked for all 40 s). Now the end of the request ends its tool's work, and the slot is free only once it
has stopped.

How the LLM is kept from answering: llama.cpp serves one request at a time, so a long completion of our own, sent
straight to it, keeps its only slot busy. vLLM batches requests, so that trick would not hold the RAG's back: its
engine core process is stopped (SIGSTOP) instead, while its API server goes on accepting requests, tokenizing and
watching its clients. The RAG's requests to the LLM pass through a TCP relay that shows which of them are in flight
there. After each attack the test measures how long the LLM server itself went on working for nobody (vLLM's own
metrics; for llama.cpp, how long a one-token completion sent straight to it waits), prints it and bounds it: both
servers drop a request whose connection closes, vLLM before computing anything more (0 prompt and 0 answer tokens
after the cut, measured), llama.cpp at once (a completion sent after the cut waits ~0.05 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import _free_port, running
from rag.llm.local import MODEL_ALIAS

RAG = str(Path(sys.executable).parent / "rag")
#: Alice (hr) finds the handbook for these, so the LLM is asked; one question per attack and server, to find its
#: audit record.
WARM_UP = "How many days of annual leave do employees get?"
QUESTIONS = {True: "How much annual leave does an employee get per year?",
             False: "What does the employee handbook say about annual leave?"}
LONG_ANSWER = "Describe in detail everything the employee handbook says about annual leave, sick leave and holidays."
MCP_QUESTIONS = {"notifications/cancelled": "How many vacation days does an employee get each year?",
                 "2026-07-28": "What is the annual leave entitlement in the employee handbook?",
                 "dropped": "How many days of paid annual leave does the handbook give?"}
REFUSED = "zebra quantum"  # nothing relevant: answered without the LLM
FREED_WITHIN_S = 5.0
CHAT = "/v1/chat/completions"
SESSION_VERSION = "2025-11-25"  # the newest protocol version of the session transport (initialize, Mcp-Session-Id)


class _Relay:
    """A TCP relay to the LLM server: the RAG's requests to the LLM pass through it, so the test sees which of them
    are in flight (sent, their response not complete, the connection open). A streamed request waiting in the LLM
    server's queue has its response headers already: only the end of its response says it is done."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._links: list[_Link] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            link = _Link(client, socket.create_connection(("127.0.0.1", self.target_port)))
            self._links.append(link)
            link.start()

    def in_flight(self) -> list[str]:
        """The paths of the requests in flight."""
        return [link.path for link in list(self._links) if link.in_flight]

    def cut(self) -> list[tuple[int, str]]:
        """The connections (an id, the path of their last request) closed before the LLM's response was complete."""
        return [(id(link), link.path) for link in list(self._links) if link.cut]

    def close(self) -> None:
        self._server.close()


class _Link:
    """One connection of the RAG to the LLM server, with the RAG's requests on it (one at a time, HTTP/1.1) and
    whether the LLM's response to the latest one is complete."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.open = True
        self.requests = 0
        self.responses = 0
        self.path = ""  # of the latest request
        self._response = b""

    def start(self) -> None:
        for src, dst, up in ((self.client, self.upstream, True), (self.upstream, self.client, False)):
            threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                if up and (line := re.match(rb"[A-Z]+ (/\S*)", data)):  # a request (a JSON body never starts so)
                    self.path = line.group(1).decode()
                    self.requests += 1
                elif not up:
                    self._answered(data)
                dst.sendall(data)
        except OSError:
            pass
        self.open = False  # either side closing ends the link, as the other side sees at once
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _answered(self, data: bytes) -> None:
        self._response += data
        head, sep, body = self._response.partition(b"\r\n\r\n")
        if not sep:
            return
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        # Chunked (a stream) ends with its empty last chunk; a ping line's "...0\r\n\r\n" is no such end.
        chunked_end = body == b"0\r\n\r\n" or body.endswith(b"\r\n0\r\n\r\n")
        if chunked_end if length is None else len(body) >= int(length.group(1)):
            self.responses += 1
            self._response = b""

    @property
    def in_flight(self) -> bool:
        return self.open and self.requests > self.responses

    @property
    def cut(self) -> bool:
        return not self.open and self.requests > self.responses


class _Occupier:
    """A long streamed completion sent straight to the LLM server, which serves one request at a time: every other
    request waits behind it until :meth:`stop`."""

    def __init__(self, llm_url: str) -> None:
        self.llm_url = llm_url
        self.tokens = 0
        self.finished = False  # it ended by itself: the LLM was not busy for the whole test
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Occupier:
        self._thread.start()
        assert self._started.wait(120), "the LLM server did not start the long completion"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        # End-of-text tokens banned (SmolLM2's ids 0-2), so that it runs to max_tokens: tens of seconds here.
        body = {"model": MODEL_ALIAS, "prompt": "Once upon a time", "max_tokens": 1900, "stream": True,
                "temperature": 1.0, "logit_bias": {"0": -100, "1": -100, "2": -100}}
        with httpx.Client(timeout=300) as client, client.stream("POST", f"{self.llm_url}/completions",
                                                                   json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    self.tokens += 1
                    self._started.set()
                if self._stop.is_set():
                    return  # closing the stream ends the completion at the server
        self.finished = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


class _Paused:
    """vLLM's engine core stopped (SIGSTOP): the process that schedules and computes. The API server in front of it
    still accepts requests (the response headers of a stream come at once), tokenizes and watches its clients, but
    no request gets a token until :meth:`__exit__`."""

    finished = False  # as _Occupier's: nothing here ends by itself

    def __init__(self, server_pid: int) -> None:
        cores = [p for p in psutil.Process(server_pid).children(recursive=True)
                 if "EngineCore" in " ".join(p.cmdline())]
        assert len(cores) == 1, f"vLLM's engine core process: {cores}"
        self.core = cores[0]

    def __enter__(self) -> _Paused:
        self.core.suspend()
        return self

    def __exit__(self, *exc: object) -> None:
        self.core.resume()


@dataclass
class _Engine:
    """One real LLM server: its URL (…/v1), a way to keep it from answering anyone (``busy()``, a context manager
    that yields an object with ``finished``), and a measure of how long it still works for nobody (``idle()``)."""

    name: str
    llm_url: str
    busy: Callable[[], AbstractContextManager[Any]]

    def counters(self) -> dict[str, float]:
        """vLLM's requests running and waiting, and the prompt and generated tokens it has computed so far."""
        text = httpx.get(f"{self.llm_url.removesuffix('/v1')}/metrics", timeout=5).text
        return {name: sum(float(v) for v in re.findall(rf"^vllm:{name}\{{[^}}]*\}} (\S+)$", text, re.M))
                for name in ("num_requests_running", "num_requests_waiting", "prompt_tokens_total",
                             "generation_tokens_total")}

    def idle(self, since: dict[str, float] | None, answering: bool) -> str:
        """Once the RAG cut its request: how long (and for vLLM, how many tokens) the LLM server itself still
        worked on it. vLLM: until it runs nothing and has nothing waiting, the tokens it computed since ``since``
        (its counters when the client left: none of the prompt's unless it was ``answering`` already, whose
        prompt tokens may be counted a step late); llama.cpp, one request at a time: how long a one-token
        completion sent straight to it waits. The LLM server's doing, not the RAG's, but the point of the cut:
        bounded."""
        t = time.monotonic()
        if self.name == "llamacpp":
            r = httpx.post(f"{self.llm_url}/completions", json={"model": MODEL_ALIAS, "prompt": "Hello",
                                                                "max_tokens": 1}, timeout=300)
            took = time.monotonic() - t
            assert r.status_code == 200 and took < FREED_WITHIN_S, f"llama.cpp busy for {took:.1f} s: {r.text[:300]}"
            return f"a one-token completion waited {took:.2f} s"
        assert since is not None
        idle = _until(lambda: (c := self.counters())["num_requests_running"] + c["num_requests_waiting"] == 0, 60)
        assert idle is not None, f"vLLM still works 60 s after the RAG's request was cut: {self.counters()}"
        now, later = None, self.counters()
        while later != now:  # its counters come a step late: until they stay
            time.sleep(0.5)
            now, later = later, self.counters()
        prompt, generated = (now[k] - since[k] for k in ("prompt_tokens_total", "generation_tokens_total"))
        assert (answering or prompt == 0) and generated <= 20, \
            f"vLLM computed {prompt:g} prompt and {generated:g} answer tokens more"
        return f"vLLM idle after {idle:.2f} s, {prompt:g} prompt and {generated:g} answer tokens computed after the cut"


@pytest.fixture(scope="module", params=["llamacpp", "vllm"])
def engine(request) -> _Engine:
    if request.param == "llamacpp":
        url = request.getfixturevalue("llm_server")
        return _Engine("llamacpp", url, lambda: _Occupier(url))
    server = request.getfixturevalue("vllm_process")
    return _Engine("vllm", server.base_url, lambda: _Paused(server.pid))


@dataclass
class _Rag:
    """A RAG server process under attack: its URL, the API keys, the relay its LLM requests pass through, its audit
    log, and whether it serves /metrics (``rag mcp --http`` does not)."""

    url: str
    keys: dict[str, str]
    relay: _Relay
    audit: Path
    metrics: bool


@contextlib.contextmanager
def _rag_server(args: list[str], engine: _Engine, group_index, root: Path, **settings: str):
    """A RAG server (``rag serve --mcp`` or ``rag mcp --http``) whose LLM requests pass through a relay, one
    chat or tool call at a time per user, and a second's wait for a slot. No traceback in its log at the end:
    `rag serve --mcp` logged one ("No response returned") for every MCP call cancelled on the 2026-07-28 wire."""
    from rag.security.users import UserDirectory

    data = root / "data"
    shutil.copytree(group_index.data_dir, data)
    users = UserDirectory(data / "users.toml")
    keys = {name: users.issue_api_key(name) for name in ("alice", "bob")}
    relay = _Relay(httpx.URL(engine.llm_url).port)
    audit = root / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") or k == "RAG_MODELS_DIR"}
    env.update(RAG_DATA_DIR=str(data), RAG_USERS_FILE=str(data / "users.toml"), RAG_AUTH="password", RAG_CONFIG="",
               RAG_LLM_BASE_URL=f"http://127.0.0.1:{relay.port}/v1", RAG_LLM_CONTEXT_WINDOW="2048",
               RAG_LLM_MAX_TOKENS="400", RAG_CONDENSE_QUESTIONS="false", RAG_AUDIT_LOG=str(audit),
               RAG_API_MAX_CONCURRENT_PER_USER="1", RAG_API_QUEUE_SECONDS="1")
    env.update(settings)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    try:
        with running([RAG, *args, "--port", str(port)], log, f"{url}/mcp", 90, " ".join(["rag", *args]), env=env,
                     any_status=True):
            yield _Rag(url, keys, relay, audit, metrics=args[0] == "serve")
    finally:
        relay.close()
    assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


@pytest.fixture(scope="module")
def api(engine, group_index, tmp_path_factory):
    """`rag serve --mcp` in front of the engine, its answers warmed up: chats, and MCP at /mcp."""
    with _rag_server(["serve", "--mcp"], engine, group_index, tmp_path_factory.mktemp("serve")) as rag:
        # One whole answer first: the embedding model loads, the LLM's window and chat template are measured.
        r = httpx.post(f"{rag.url}{CHAT}", json=_chat(WARM_UP), headers=_auth(rag.keys["alice"]), timeout=300)
        assert r.status_code == 200 and not r.json()["refused"], r.text[:500]
        yield rag


@pytest.fixture(scope="module")
def mcp_http(engine, group_index, tmp_path_factory):
    """`rag mcp --http` in front of the engine, its answers warmed up. Its asks are all cut before the first
    token: a shorter window and answer make the warm-up's whole answer quicker (half the prompt to read)."""
    with _rag_server(["mcp", "--http"], engine, group_index, tmp_path_factory.mktemp("mcp"),
                     RAG_LLM_CONTEXT_WINDOW="1024", RAG_LLM_MAX_TOKENS="32") as rag:
        result = anyio.run(_mcp_call, rag, "ask", {"question": WARM_UP})
        assert not result.is_error and not result.structured_content["refused"], result
        yield rag


@pytest.fixture(params=["rag serve --mcp", "rag mcp --http"])
def mcp(request) -> _Rag:
    return request.getfixturevalue("api" if request.param == "rag serve --mcp" else "mcp_http")


def _chat(question: str, stream: bool = False) -> dict:
    return {"model": "documents", "messages": [{"role": "user", "content": question}], "stream": stream}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _send(url: str, path: str, headers: dict[str, str], body: dict) -> socket.socket:
    """A POST on a socket of our own, whose closing is the disconnect."""
    data = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Type": "application/json"}.items())
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _send_chat(url: str, key: str, question: str, stream: bool) -> socket.socket:
    return _send(url, CHAT, _auth(key), _chat(question, stream))


def _busy_slots(url: str) -> float:
    m = re.search(r"^rag_http_busy_slots (\S+)$", httpx.get(f"{url}/metrics", timeout=5).text, re.M)
    return float(m.group(1)) if m else 0.0


def _until(check, timeout: float) -> float | None:
    """Seconds until ``check()`` held, or None if it did not within ``timeout``."""
    t = time.monotonic()
    while not check():
        if time.monotonic() - t > timeout:
            return None
        time.sleep(0.05)
    return time.monotonic() - t


def _at_the_llm(rag: _Rag) -> None:
    """Until the RAG's chat completion waits at the LLM, with its slot held."""
    # The token counts before it may have waited too, up to PROBE_TIMEOUT_S each, before the RAG gave up on them.
    assert _until(lambda: CHAT in rag.relay.in_flight(), 120) is not None, "the question never reached the LLM"
    if rag.metrics:
        assert _until(lambda: _busy_slots(rag.url) == 1, 5) is not None


def _released(rag: _Rag, cut_before: list[tuple[int, str]]) -> tuple[float, float | None]:
    """Once the client has left: seconds until the answer's request to the LLM ended (its response cut, not read
    to its end) and until the slot was free (None without /metrics), watched together, so that a slot given back
    while the LLM still works for nobody fails too."""
    t = time.monotonic()
    abandoned = freed = None
    early: list[float] = []
    while abandoned is None or (rag.metrics and freed is None):
        now = time.monotonic() - t
        assert now < FREED_WITHIN_S, (
            f"{FREED_WITHIN_S:g} s after the client left, the RAG's requests {rag.relay.in_flight()} are still at the "
            "LLM" + (f", the slot free since {freed:.2f} s" if freed is not None else "") if abandoned is None
            else f"the slot is still held {FREED_WITHIN_S:g} s after the client left")
        free = rag.metrics and freed is None and _busy_slots(rag.url) == 0
        gone = CHAT not in rag.relay.in_flight()
        if free:
            freed = time.monotonic() - t
            if not gone:  # the relay sees the close a moment after the RAG made it: a free slot may not stay ahead
                gone = _until(lambda: CHAT not in rag.relay.in_flight(), 0.5) is not None
                if not gone:
                    early.append(freed)
        if gone and abandoned is None:
            abandoned = time.monotonic() - t
        time.sleep(0.02)
    assert not early, f"the slot was free {early[0]:.2f} s after the client left, the LLM still working for nobody"
    assert CHAT in [path for link, path in rag.relay.cut() if (link, path) not in cut_before], \
        "the LLM's answer was read to its end for nobody, not cut"
    return abandoned, freed


def _report(engine: _Engine, rag: _Rag, abandoned: float, freed: float | None, again: float) -> None:
    slot = f"slot freed {freed:.2f} s" if freed is not None else "slot free"
    print(f"\n[{engine.name}] LLM request closed {abandoned:.2f} s and {slot} after the client left; alice's next "
          f"request served in {again:.2f} s")


@dataclass
class _Left:
    """The moment the client left: the connections to the LLM cut before it, and vLLM's counters."""

    cut: list[tuple[int, str]]
    counters: dict[str, float] | None


def _leaving(engine: _Engine, rag: _Rag) -> _Left:
    return _Left(rag.relay.cut(), engine.counters() if engine.name == "vllm" else None)


def _hang_up(engine: _Engine, rag: _Rag, client: socket.socket) -> _Left:
    """Close the client's chat connection; the answer's request to the LLM and then the slot end at once, and the
    same user gets a slot again at once."""
    left = _leaving(engine, rag)
    client.close()  # the attacker hangs up
    abandoned, freed = _released(rag, left.cut)
    t = time.monotonic()
    r = httpx.post(f"{rag.url}{CHAT}", json=_chat(REFUSED), headers=_auth(rag.keys["alice"]), timeout=30)
    took = time.monotonic() - t
    assert r.status_code == 200, f"{r.status_code} after {took:.1f} s: {r.text[:300]}"
    assert took < 5
    _report(engine, rag, abandoned, freed, took)
    return left


def _abandoned(audit: Path, question: str) -> dict:
    """The "extra" of the one audit record of ``question``, which says it was abandoned."""
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [rec for rec in records if rec["event"] == "ask" and rec["question"] == question]
    assert [rec["user"] for rec in mine] == ["alice"] and mine[0]["extra"]["outcome"] == "abandoned", mine
    return mine[0]["extra"]


def _llm_idle(engine: _Engine, left: _Left, when: str, answering: bool = False) -> None:
    print(f"[{engine.name}] {when}: {engine.idle(left.counters, answering)}")


# --- chat completions ---------------------------------------------------------------------------------------------

@pytest.mark.attack(5, "a user asks and hangs up before the answer, again and again, to hold their slots and the LLM")
@pytest.mark.parametrize("stream", [True, False], ids=["streamed-before-first-token", "not-streamed"])
def test_a_client_that_hangs_up_before_the_answer_frees_its_slot_and_the_llm(engine, api, stream):
    with engine.busy() as busy:
        client = _send_chat(api.url, api.keys["alice"], QUESTIONS[stream], stream)
        try:
            _at_the_llm(api)
        except BaseException:
            client.close()
            raise
        left = _hang_up(engine, api, client)
        # Still busy: the LLM would not have answered anyone meanwhile, so nothing above ended by itself.
        assert not busy.finished, "the long completion ended during the test: give it more tokens"
    assert _abandoned(api.audit, QUESTIONS[stream])["chars_shown"] == 0
    _llm_idle(engine, left, "the LLM free again")


@pytest.mark.attack(5, "a user hangs up as soon as the answer streams, so that the LLM writes the rest for nobody")
def test_a_client_that_hangs_up_during_the_answer_ends_its_llm_request(engine, api):
    client = _send_chat(api.url, api.keys["alice"], LONG_ANSWER, True)
    try:
        received = b""
        while not re.search(rb'"delta": \{"content": "[^"]', received):  # the first piece of the answer
            part = client.recv(65536)
            assert part, received.decode(errors="replace")[-500:]
            received += part
    except BaseException:
        client.close()
        raise
    left = _hang_up(engine, api, client)
    assert _abandoned(api.audit, LONG_ANSWER)["chars_shown"] > 0
    _llm_idle(engine, left, "after the cut", answering=True)


# --- MCP ask --------------------------------------------------------------------------------------------------------

def _mcp_client(rag: _Rag, key: str) -> Client:
    """The SDK's own client, which settles on the newest protocol version both sides speak (2026-07-28)."""
    http = httpx2.AsyncClient(headers=_auth(key), timeout=120)
    return Client(streamable_http_client(f"{rag.url}/mcp", http_client=http))


async def _mcp_call(rag: _Rag, tool: str, arguments: dict) -> Any:
    async with _mcp_client(rag, rag.keys["alice"]) as client:
        return await client.call_tool(tool, arguments)


def _session(rag: _Rag, key: str) -> dict[str, str]:
    """The headers of a new session of the key's user on the session transport, by hand (initialize, then
    initialized), so that the test decides what happens to each connection."""
    headers = {**_auth(key), "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": SESSION_VERSION}
    r = httpx.post(f"{rag.url}/mcp", headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": SESSION_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert r.status_code == 200, r.text
    headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
    r = httpx.post(f"{rag.url}/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                   timeout=30)
    assert r.status_code == 202, r.text
    return headers


def _tool_call(rpc_id: int, tool: str, arguments: dict) -> dict:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


def _sse_messages(data: bytes) -> list[dict]:
    return [json.loads(line[5:]) for line in data.decode(errors="replace").splitlines()
            if line.startswith("data:") and line[5:].strip()]


def _search_again(rag: _Rag, headers: dict[str, str]) -> float:
    """Alice searches on her session: a call that needs a slot. Seconds it took; within the second's wait for a
    slot, or fails."""
    t = time.monotonic()
    r = httpx.post(f"{rag.url}/mcp", headers=headers, json=_tool_call(99, "search", {"query": "annual leave"}),
                   timeout=30)
    took = time.monotonic() - t
    messages = _sse_messages(r.content) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
    assert r.status_code == 200 and "result" in messages[-1], f"{r.status_code} after {took:.1f} s: {r.text[:500]}"
    assert not messages[-1]["result"]["isError"] and took < 5, messages[-1]
    return took


def _reading(client: socket.socket, into: list[bytes]) -> threading.Thread:
    """Read what the server sends on ``client`` until it ends the response (or the socket is closed)."""
    def read() -> None:
        with contextlib.suppress(OSError):
            while part := client.recv(65536):
                into.append(part)
                if b"\r\n0\r\n\r\n" in b"".join(into):  # the end of a chunked response
                    return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.attack(5, "an agent cancels its MCP ask before the answer, again and again, to leave the LLM busy")
@pytest.mark.parametrize("how", ["notifications/cancelled", "2026-07-28"],
                         ids=["notifications-cancelled", "2026-07-28-stream-closed"])
def test_an_mcp_client_that_cancels_its_ask_frees_its_slot_and_the_llm(engine, mcp, how):
    question = MCP_QUESTIONS[how]
    if how == "notifications/cancelled":
        # The session transport: the call's stream stays open, the cancel comes on a request of its own.
        headers = _session(mcp, mcp.keys["alice"])
        with engine.busy() as busy:
            call = _send(mcp.url, "/mcp", headers, _tool_call(7, "ask", {"question": question}))
            received: list[bytes] = []
            try:
                reader = _reading(call, received)
                _at_the_llm(mcp)
                left = _leaving(engine, mcp)
                r = httpx.post(f"{mcp.url}/mcp", headers=headers, timeout=30, json={
                    "jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": 7, "reason": "the user changed their mind"}})
                assert r.status_code == 202, r.text
                abandoned, freed = _released(mcp, left.cut)
                again = _search_again(mcp, headers)
                reader.join(5)
            finally:
                call.close()
            assert not busy.finished, "the long completion ended during the test: give it more tokens"
        # The call's stream ends with the SDK's "Request cancelled" (this transport answers every request).
        assert [m.get("error", {}).get("code") for m in _sse_messages(b"".join(received))] == [-32800], received
    else:
        async def attack() -> tuple[_Left, float, float | None, float]:
            async with _mcp_client(mcp, mcp.keys["alice"]) as client:
                assert client.protocol_version == "2026-07-28"
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "ask", {"question": question})
                    await anyio.to_thread.run_sync(_at_the_llm, mcp)
                    left = await anyio.to_thread.run_sync(_leaving, engine, mcp)
                    tg.cancel_scope.cancel()  # the caller gives up: the SDK closes the call's stream
                abandoned, freed = await anyio.to_thread.run_sync(_released, mcp, left.cut)
                t = time.monotonic()
                result = await client.call_tool("search", {"query": "annual leave"})
                took = time.monotonic() - t
                assert not result.is_error and took < 5, result
                return left, abandoned, freed, took

        with engine.busy() as busy:
            left, abandoned, freed, again = anyio.run(attack)
            assert not busy.finished, "the long completion ended during the test: give it more tokens"
    _report(engine, mcp, abandoned, freed, again)
    assert _abandoned(mcp.audit, question)["via"] == "mcp"
    _llm_idle(engine, left, "the LLM free again")


@pytest.mark.attack(5, "an agent drops its connection mid-ask, session left open, so the answer runs on for nobody")
def test_an_mcp_client_that_drops_its_connection_mid_ask_ends_the_answer_and_frees_its_slot(engine, mcp):
    question = MCP_QUESTIONS["dropped"]
    headers = _session(mcp, mcp.keys["alice"])
    with engine.busy() as busy:
        call = _send(mcp.url, "/mcp", headers, _tool_call(7, "ask", {"question": question}))
        try:
            _at_the_llm(mcp)
        except BaseException:
            call.close()
            raise
        left = _leaving(engine, mcp)
        call.close()  # no cancel, no DELETE: the session stays, as a client that lost its network would leave it
        abandoned, freed = _released(mcp, left.cut)
        again = _search_again(mcp, headers)
        assert not busy.finished, "the long completion ended during the test: give it more tokens"
    _report(engine, mcp, abandoned, freed, again)
    assert _abandoned(mcp.audit, question)["via"] == "mcp"
    _llm_idle(engine, left, "the LLM free again")
