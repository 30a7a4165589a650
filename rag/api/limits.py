"""Caps of the HTTP shells (`rag serve`, `rag mcp --http`), so that one client cannot exhaust memory, the
tokenizer or the LLM for everyone else, and the health checks answer while the LLM is saturated.

- Body size (``RAG_API_MAX_BODY_KB``): counted as the body arrives, so neither a false ``Content-Length`` nor a
  chunked upload gets past it; 413 before any route sees the request.
- Conversation size (``RAG_API_MAX_MESSAGES``, ``RAG_API_MAX_CHARS``): :func:`conversation_error`, checked by the
  chat route and the MCP ``ask`` tool before any token is counted (each history message costs a tokenizer call).
- Concurrency (``RAG_API_MAX_CONCURRENT``, ``RAG_API_MAX_CONCURRENT_PER_USER``): chat completions and MCP tool
  calls hold a slot from the first byte received to the last byte sent (a streamed answer included); one over a
  cap waits ``RAG_API_QUEUE_SECONDS``, then gets 429 with ``Retry-After``. A chat whose client disconnects ends
  its answer and its LLM request at once (rag/api/routes/chat.py), and only then gives the slot back; so does an
  MCP tool call whose request ends before its tool (:class:`ToolWork`). Every other request (``/healthz``,
  ``/metrics``, ``/v1/models``, MCP's handshake) never waits for a slot.

Why not Starlette's ``RequestBodyLimitMiddleware``: it raises inside the app, where FastAPI renders
``{"detail": ...}`` and the MCP SDK, reading the body inside its own ``try``, answers 500; its plain-text 413
cannot name the setting either. And the concurrency gate has to read the JSON-RPC method of an MCP request
before the SDK does. So the body is read here, up to the cap, and handed on whole: both consumers parse the whole
JSON anyway, so this costs no memory they would not spend.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import anyio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.api.identity import identify_headers
from rag.ops import metrics
from rag.security.users import UserDirectory
from rag.settings import Settings

#: Sent with every 429: answers take seconds to a minute on a self-hosted LLM, and the OpenAI SDKs retry after it.
RETRY_AFTER_S = 5
CHAT_PATH = "/v1/chat/completions"


def conversation_error(settings: Settings, texts: Sequence[str]) -> str | None:
    """Why a conversation (every message's text, the question included) is over the caps, for a 413 or a tool
    error (counted as a rejection); None when it is within them."""
    error = _conversation_error(settings, texts)
    if error is not None:
        metrics.HTTP_REJECTED.labels("conversation_too_large").inc()
    return error


def _conversation_error(settings: Settings, texts: Sequence[str]) -> str | None:
    if len(texts) > settings.api_max_messages:
        return (f"{len(texts)} messages is more than this server accepts in one request (RAG_API_MAX_MESSAGES="
                f"{settings.api_max_messages}): send only the latest turns, or ask the operator to raise it")
    chars = sum(len(t) for t in texts)
    if chars > settings.api_max_chars:
        return (f"the messages hold {chars} characters, more than this server accepts in one request "
                f"(RAG_API_MAX_CHARS={settings.api_max_chars}): send only the latest turns, or ask the operator "
                "to raise it")
    return None


class Slots:
    """Concurrency slots, overall and per user. Runs on the event loop alone, so plain counters suffice; waiters
    are woken on every release and check again."""

    def __init__(self, overall: int, per_user: int) -> None:
        self.overall, self.per_user = overall, per_user
        self.busy: Counter[str] = Counter()
        self.total = 0
        self._waiters: list[anyio.Event] = []

    def _full(self, user: str) -> str | None:
        if self.busy[user] >= self.per_user:
            return "busy_user"
        return "busy_overall" if self.total >= self.overall else None

    async def acquire(self, user: str, wait: float) -> str | None:
        """None once a slot is held (give it back with :meth:`release`); else why not, after ``wait`` seconds."""
        deadline = anyio.current_time() + wait
        while (reason := self._full(user)) is not None:
            left = deadline - anyio.current_time()
            if left <= 0:
                return reason
            event = anyio.Event()
            self._waiters.append(event)
            try:
                with anyio.move_on_after(left):
                    await event.wait()
            finally:
                if not event.is_set():
                    self._waiters.remove(event)
        self.busy[user] += 1
        self.total += 1
        metrics.HTTP_BUSY.inc()
        return None

    def release(self, user: str) -> None:
        self.busy[user] -= 1
        if not self.busy[user]:
            del self.busy[user]
        self.total -= 1
        metrics.HTTP_BUSY.dec()
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()


class ToolWork:
    """What an MCP tool call runs off the event loop (a search, an LLM answer), as the HTTP request that carries
    the call sees it: :class:`RequestLimits` gives one to each ``tools/call`` request (:func:`tool_work`, in the
    tool's context), and the tool runs its work inside :meth:`running`.

    The session transport (protocol versions up to 2025-11-25) runs a tool in the session's task, not in the
    request's: a client that drops its connection ends the request and its slot, not the tool, whose LLM request
    went on for nobody (no event store is configured, so no client can resume the stream to fetch the result),
    while the same user's next calls got slots. So when the request ends, whatever its tool still runs is
    abandoned (cancelled: an answer closes its LLM request at once), and the slot is free only once it has
    stopped. The per-request transport of 2026-07-28 already cancels the tool when its client leaves; a call that
    ends normally has nothing left running. Event-loop only, like :class:`Slots`."""

    def __init__(self) -> None:
        self.abandoned = False
        self._running = 0
        self._cancels: list[Callable[[], None]] = []
        self._wake: anyio.Event | None = None

    @contextlib.contextmanager
    def running(self, cancel: Callable[[], None] | None = None) -> Iterator[None]:
        """Around a piece of the tool's work; ``cancel`` (thread-safe) ends it early, at once if the call is
        already abandoned. The request waits for the block to end before it gives its slot back."""
        if cancel is not None:
            self._cancels.append(cancel)
            if self.abandoned:
                cancel()
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            if cancel is not None:
                self._cancels.remove(cancel)
            if self._wake is not None:
                self._wake.set()

    def abandon(self) -> None:
        """The request has ended: nobody will receive what the tool still computes."""
        self.abandoned = True
        for cancel in list(self._cancels):
            cancel()

    async def stopped(self) -> None:
        while self._running:
            self._wake = anyio.Event()
            await self._wake.wait()


_tool_work: ContextVar[ToolWork | None] = ContextVar("rag_mcp_tool_work", default=None)


def tool_work() -> ToolWork | None:
    """The work of the MCP tool call being served (None outside an HTTP request of :class:`RequestLimits`, e.g.
    over stdio). The MCP SDK runs each request's handler in the context of the ASGI task that delivered it."""
    return _tool_work.get()


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    """The client disconnected before its body was complete: nobody to answer."""


class RequestLimits:
    """ASGI middleware: the body cap for every request, the concurrency slots for chat completions (``POST
    /v1/chat/completions``) and MCP tool calls (``POST`` to ``mcp_path`` with JSON-RPC ``tools/call``)."""

    def __init__(self, app: ASGIApp, settings: Settings, *, mcp_path: str | None = "/mcp") -> None:
        self.app, self.settings, self.mcp_path = app, settings, mcp_path
        self.max_body = settings.api_max_body_kb * 1024
        self.slots = Slots(settings.api_max_concurrent, settings.api_max_concurrent_per_user)
        self.directory = UserDirectory.from_settings(settings) if settings.auth != "none" else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mcp = scope["path"] == self.mcp_path
        try:
            body = await self._read_body(scope, receive)
        except _TooLarge:
            metrics.HTTP_REJECTED.labels("body_too_large").inc()
            await _refuse(scope, receive, send, 413, mcp, None, _too_large_message(self.settings))
            return
        except _Gone:
            return
        replay = _replay(body, receive)
        expensive, rpc_id = self._expensive(scope, mcp, body)
        user = await self._user(scope) if expensive else None
        if user is None:  # cheap, or unidentified (the app answers 401 at once)
            await self.app(scope, replay, send)
            return
        reason = await self.slots.acquire(user, self.settings.api_queue_seconds)
        if reason is not None:
            metrics.HTTP_REJECTED.labels(reason).inc()
            await _refuse(scope, receive, send, 429, mcp, rpc_id, self._busy_message(reason))
            return
        work = ToolWork() if mcp else None
        reset = _tool_work.set(work)
        try:
            await self.app(scope, replay, send)
        finally:
            _tool_work.reset(reset)
            if work is not None:  # what its tool still runs is for nobody: ended, and waited for
                work.abandon()
                with anyio.CancelScope(shield=True):
                    await work.stopped()
            self.slots.release(user)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:  # whatever Content-Length said: a chunked body has none
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _expensive(self, scope: Scope, mcp: bool, body: bytes) -> tuple[bool, Any]:
        """Whether the request takes a slot, and its JSON-RPC id (MCP) for the error it may get."""
        if scope["method"] != "POST":
            return False, None
        if scope["path"] == CHAT_PATH:
            return True, None
        if not mcp:
            return False, None
        try:
            msg = json.loads(body)
        except ValueError:
            return False, None  # the SDK answers its parse error
        calls = [m for m in (msg if isinstance(msg, list) else [msg])
                 if isinstance(m, dict) and m.get("method") == "tools/call"]
        return bool(calls), calls[0].get("id") if calls else None

    async def _user(self, scope: Scope) -> str | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        who = await anyio.to_thread.run_sync(lambda: identify_headers(self.settings, self.directory, headers))
        return who.name if who is not None else None

    def _busy_message(self, reason: str) -> str:
        s = self.settings
        if reason == "busy_user":
            what = (f"you already have {s.api_max_concurrent_per_user} requests in progress "
                    f"(RAG_API_MAX_CONCURRENT_PER_USER={s.api_max_concurrent_per_user})")
        else:
            what = (f"the server is answering {s.api_max_concurrent} requests already "
                    f"(RAG_API_MAX_CONCURRENT={s.api_max_concurrent})")
        return (f"too many requests at once: {what}; retry in {RETRY_AFTER_S} s, or ask the operator to raise it "
                "or RAG_API_QUEUE_SECONDS")


def _too_large_message(settings: Settings) -> str:
    return (f"request body larger than this server accepts (RAG_API_MAX_BODY_KB={settings.api_max_body_kb}): "
            "send fewer or shorter messages, or ask the operator to raise it")


def _content_length(scope: Scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the client's own messages (its disconnect, which streaming responses watch)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, mcp: bool, rpc_id: Any,
                  message: str) -> None:
    """OpenAI's error shape for the API; a JSON-RPC error for MCP, which its clients hand to the caller."""
    if mcp:
        # -32600 invalid request (too large), -32000 a server-defined error (busy).
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id,
                                "error": {"code": -32600 if status == 413 else -32000, "message": message}}
    else:
        body = {"error": {"message": message, "type": "invalid_request_error" if status == 413 else
                          "rate_limit_error", "param": None,
                          "code": "request_too_large" if status == 413 else "rate_limit_exceeded"}}
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
