"""Hole 5 of the hardening issue, resources: a client that asks and hangs up. Each test performs the attack against a
real `rag serve` in front of the real llama.cpp server of the fixtures.

The chat route waited in a worker thread for the LLM's first token (streamed) or its whole answer (not streamed)
and never looked at the client meanwhile: one that disconnected kept its concurrency slot, and the LLM kept its
request, until then (85 s streamed, 69 s not, in these tests before the defence: the LLM busy for half a minute
more, then the prompt of a whole window to read). A user who asks and hangs up, again and again, held every slot of
theirs and queued work at the LLM for nobody. One who hung up once the answer streamed left its chain to the
garbage collector, and closing it made LangChain read the rest of the LLM's answer. Now the disconnect cancels the
answer: the request to the LLM is closed at once, and only then is the slot free again.

The LLM is made slow to give a first token by keeping its only slot busy with a long completion of our own, sent
to it directly; the RAG's requests to it pass through a TCP relay that shows which of them are in flight there.
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
from pathlib import Path

import httpx
import pytest

from conftest import _free_port, running
from rag.llm.local import MODEL_ALIAS

RAG = str(Path(sys.executable).parent / "rag")
#: Alice (hr) finds the handbook for these, so the LLM is asked; one question per test, to find its audit record.
WARM_UP = "How many days of annual leave do employees get?"
QUESTIONS = {True: "How much annual leave does an employee get per year?",
             False: "What does the employee handbook say about annual leave?"}
LONG_ANSWER = "Describe in detail everything the employee handbook says about annual leave, sick leave and holidays."
REFUSED = "zebra quantum"  # nothing relevant: answered without the LLM
FREED_WITHIN_S = 5.0
CHAT = "/v1/chat/completions"


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


@pytest.fixture(scope="module")
def api(llm_server, group_index, tmp_path_factory):
    """(API URL, API keys, LLM URL, relay, audit log): `rag serve` whose LLM requests pass through the relay, one
    chat at a time per user, and a second's wait for a slot."""
    from rag.security.users import UserDirectory

    root = tmp_path_factory.mktemp("disconnects")
    data = root / "data"
    shutil.copytree(group_index.data_dir, data)
    users = UserDirectory(data / "users.toml")
    keys = {name: users.issue_api_key(name) for name in ("alice", "bob")}
    relay = _Relay(httpx.URL(llm_server).port)
    audit = root / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") or k == "RAG_MODELS_DIR"}
    env.update(RAG_DATA_DIR=str(data), RAG_USERS_FILE=str(data / "users.toml"), RAG_AUTH="password", RAG_CONFIG="",
               RAG_LLM_BASE_URL=f"http://127.0.0.1:{relay.port}/v1", RAG_LLM_CONTEXT_WINDOW="2048",
               RAG_LLM_MAX_TOKENS="400", RAG_CONDENSE_QUESTIONS="false", RAG_AUDIT_LOG=str(audit),
               RAG_API_MAX_CONCURRENT_PER_USER="1", RAG_API_QUEUE_SECONDS="1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        with running([RAG, "serve", "--port", str(port)], root / "serve.log", f"{url}/healthz", 90, "rag serve",
                     env=env):
            # One whole answer first: the embedding model loads, the LLM's window and chat template are measured.
            r = httpx.post(f"{url}/v1/chat/completions", json=_chat(WARM_UP), headers=_auth(keys["alice"]),
                           timeout=300)
            assert r.status_code == 200 and not r.json()["refused"], r.text[:500]
            yield url, keys, llm_server, relay, audit
    finally:
        relay.close()


def _chat(question: str, stream: bool = False) -> dict:
    return {"model": "documents", "messages": [{"role": "user", "content": question}], "stream": stream}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _send_chat(url: str, key: str, question: str, stream: bool) -> socket.socket:
    """A chat request on a socket of our own, whose closing is the disconnect."""
    body = json.dumps(_chat(question, stream)).encode()
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


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


def _hang_up(api, client: socket.socket) -> tuple[float, float]:
    """Close the client's connection; once the answer's requests to the LLM and the slot have ended (seconds after
    the disconnect, each), check the LLM's response was cut rather than read to its end, and that the same user gets
    a slot again at once."""
    url, keys, llm, relay, audit = api
    cut = relay.cut()
    client.close()  # the attacker hangs up
    abandoned = _until(lambda: not relay.in_flight(), FREED_WITHIN_S)
    freed = _until(lambda: _busy_slots(url) == 0, FREED_WITHIN_S)
    assert abandoned is not None, (f"the RAG's requests {relay.in_flight()} are still at the LLM "
                                   f"{FREED_WITHIN_S:g} s after the client left")
    assert CHAT in [path for link, path in relay.cut() if (link, path) not in cut], \
        "the LLM's answer was read to its end for nobody, not cut"
    assert freed is not None, f"alice's slot is still held {FREED_WITHIN_S:g} s after she left"
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=_chat(REFUSED), headers=_auth(keys["alice"]), timeout=30)
    took = time.monotonic() - t
    assert r.status_code == 200, f"{r.status_code} after {took:.1f} s: {r.text[:300]}"
    assert took < 5
    print(f"\nLLM request closed {abandoned:.2f} s and slot freed {freed:.2f} s after the disconnect")
    return abandoned, freed


def _abandoned(audit: Path, question: str) -> dict:
    """The "extra" of the one audit record of ``question``, which says it was abandoned."""
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [rec for rec in records if rec["event"] == "ask" and rec["question"] == question]
    assert [rec["user"] for rec in mine] == ["alice"] and mine[0]["extra"]["outcome"] == "abandoned", mine
    return mine[0]["extra"]


@pytest.mark.attack(5, "a user asks and hangs up before the answer, again and again, to hold their slots and the LLM")
@pytest.mark.parametrize("stream", [True, False], ids=["streamed-before-first-token", "not-streamed"])
def test_a_client_that_hangs_up_before_the_answer_frees_its_slot_and_the_llm(api, stream):
    url, keys, llm, relay, audit = api
    with _Occupier(llm) as busy:
        client = _send_chat(url, keys["alice"], QUESTIONS[stream], stream)
        try:
            # The chat completion itself waits at the LLM (the token counts before it gave up waiting, PROBE_TIMEOUT_S).
            assert _until(lambda: CHAT in relay.in_flight(), 120) is not None, "the chat never reached the LLM"
            assert _until(lambda: _busy_slots(url) == 1, 5) is not None
        except BaseException:
            client.close()
            raise
        _hang_up(api, client)
        # Still busy: the LLM would not have answered anyone meanwhile, so nothing above ended by itself.
        assert not busy.finished, "the long completion ended during the test: give it more tokens"
    assert _abandoned(audit, QUESTIONS[stream])["chars_shown"] == 0


@pytest.mark.attack(5, "a user hangs up as soon as the answer streams, so that the LLM writes the rest for nobody")
def test_a_client_that_hangs_up_during_the_answer_ends_its_llm_request(api):
    url, keys, llm, relay, audit = api
    client = _send_chat(url, keys["alice"], LONG_ANSWER, True)
    try:
        received = b""
        while not re.search(rb'"delta": \{"content": "[^"]', received):  # the first piece of the answer
            part = client.recv(65536)
            assert part, received.decode(errors="replace")[-500:]
            received += part
    except BaseException:
        client.close()
        raise
    _hang_up(api, client)
    assert _abandoned(audit, LONG_ANSWER)["chars_shown"] > 0
