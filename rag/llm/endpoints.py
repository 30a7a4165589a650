"""Self-hosted LLM endpoints behind an OpenAI-compatible API: discovery, token counting, chat models.

Every HTTP call of an endpoint (discovery, token counts, the chat model's) can be ended from another thread by the
:class:`CancelToken` of the request it is made for: a client that disconnects must not leave the LLM working, nor
hold its slot of the API, until the answer is complete.

Which kinds of server are recognised, and what each tells us, is in :mod:`rag.llm.servers` (one module per
kind); how the window is chosen from what they say is in :mod:`rag.llm.discovery`. Where a server cannot count
tokens, a local estimate with a safety margin stands in (:func:`rag.llm.tokens.estimate_tokens`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import cachetools
import httpcore
import httpx

from rag.llm import servers
from rag.llm.discovery import FALLBACK_CONTEXT_WINDOW, EndpointInfo, discover
from rag.llm.failures import EndpointError, describe_failure, parse_overflow, short
from rag.llm.servers import ollama
from rag.llm.servers.base import ServerHttp, root_of
from rag.llm.tokens import ChatOverhead, Turns, estimate_tokens, measure_overhead
from rag.settings import Settings
from rag.urls import secret_url

# Also the endpoint's vocabulary for its callers, wherever it is defined.
__all__ = ["FALLBACK_CONTEXT_WINDOW", "CancelToken", "Cancelled", "ChatOverhead", "EndpointError", "EndpointInfo",
           "OpenAICompatibleEndpoint", "describe_failure", "estimate_tokens", "max_tokens_chat_openai",
           "parse_overflow"]

log = logging.getLogger(__name__)

_COUNT_CACHE_SIZE = 8192
#: After the server tokenizer could not be reached, seconds of local estimates before it is asked again.
_TOKENIZER_BACKOFF_S = 10.0


class _TokenizerDown(Exception):
    """Raised through the count cache so that an estimate made while the server is away is not kept."""


class Cancelled(BaseException):  # noqa: N818 - named for what happened, as KeyboardInterrupt is
    """The LLM calls of a request were ended by its :class:`CancelToken`.

    Not an ``Exception``, on purpose: the openai client turns every ``Exception`` of its transport into an
    ``APIConnectionError``, which counts against the endpoint's circuit breaker and sends the request to another
    endpoint. A client that hangs up is no fault of the endpoint; counted as one, a few hang-ups would take it
    out of service for everyone."""


#: The token of the request whose LLM calls the current context makes (None: calls nobody can cancel).
_current_token: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("rag_llm_cancel", default=None)


class CancelToken:
    """Ends one request's LLM calls from another thread: those made while the token is :meth:`bound` in the
    calling context (LangChain copies the context into each step it runs, so a chain's calls count).

    :meth:`cancel` shuts the socket that a call of this request is blocked on, whether it waits for a connection's
    answer, the server's queue or the next token; the server sees the connection close, and servers that watch
    for it (llama.cpp's, vLLM) drop the request. Every later call raises :class:`Cancelled` at once. Connections are pooled and shared, but a
    socket is registered here only while this request's thread reads or writes on it, and the pool cannot hand it
    to another request before that call returns: another request's connection is never touched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._quiet = False
        self._busy: set[_WatchedStream] = set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def quiet(self) -> bool:
        return self._quiet

    def cancel(self, *, quietly: bool = False) -> None:
        """Thread-safe and idempotent. ``quietly``: a response whose body has begun then just ends, as if
        complete, rather than raise :class:`Cancelled`: for closing a LangChain chain, whose steps read the rest of
        their input when they are closed (the LLM's whole answer), and would raise out of the close."""
        with self._lock:  # held while shutting: the reading thread cannot give the connection back meanwhile
            self._cancelled = True
            self._quiet = self._quiet or quietly
            for stream in self._busy:
                stream.shut()

    @contextlib.contextmanager
    def bound(self) -> Iterator[None]:
        """Calls made in this block (and in the contexts copied from it) are this token's."""
        reset = _current_token.set(self)
        try:
            yield
        finally:
            _current_token.reset(reset)

    @contextlib.contextmanager
    def _io(self, stream: _WatchedStream) -> Iterator[None]:
        with self._lock:
            if self._cancelled:
                raise Cancelled
            self._busy.add(stream)
        try:
            yield
        except Exception as exc:  # the socket shut under the call: the error is the cancellation's
            if self._cancelled:
                raise Cancelled from exc
            raise
        finally:
            with self._lock:
                self._busy.discard(stream)
        if self._cancelled:  # an end of stream from the shut socket, or bytes nobody will read
            raise Cancelled


class _WatchedStream(httpcore.NetworkStream):
    """A connection's socket, whose reads and writes the current request's :class:`CancelToken` can end."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        token = _current_token.get()
        if token is None:
            return self._stream.read(max_bytes, timeout)
        with token._io(self):
            return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        token = _current_token.get()
        if token is None:
            self._stream.write(buffer, timeout)
            return
        with token._io(self):
            self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _WatchedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)

    def shut(self) -> None:
        """Wake the thread blocked on this socket: it reads the end of the stream, and the server sees it."""
        sock = self._stream.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                # The plain socket's shutdown, also under TLS: SSLSocket's own drops its TLS state under the reader.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _QuietBody(httpx.SyncByteStream):
    """A response's body, which ends rather than fails once its request is cancelled quietly (the connection is
    closed all the same: httpcore closes one whose response was not read to its end)."""

    def __init__(self, body: httpx.SyncByteStream, token: CancelToken) -> None:
        self._body, self._token = body, token

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except Cancelled:
            if not self._token.quiet:
                raise

    def close(self) -> None:
        self._body.close()


def _quiet_ends(response: httpx.Response) -> None:
    """httpx's response hook, in the requesting thread: the body of a call made for a token may end quietly."""
    token = _current_token.get()
    if token is not None and isinstance(response.stream, httpx.SyncByteStream):
        response.stream = _QuietBody(response.stream, token)


class _WatchedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every connection a :class:`_WatchedStream`."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:
        token = _current_token.get()
        if token is not None and token.cancelled:
            raise Cancelled
        return _WatchedStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:
        return _WatchedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _watched_client(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose calls a :class:`CancelToken` can end: its connections are opened through
    :class:`_WatchedBackend`. httpcore's pools take a network backend for this, but httpx builds them (its own, and
    those of proxies from the environment) without a way to pass one: so it is set on the pools httpx built,
    before any connection is made."""
    client = httpx.Client(event_hooks={"response": [_quiet_ends]}, **kwargs)
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        if transport is None:  # a NO_PROXY pattern: the default transport serves it
            continue
        pool: httpcore.ConnectionPool = transport._pool  # type: ignore[attr-defined]
        pool._network_backend = _WatchedBackend(pool._network_backend)
    return client


class OpenAICompatibleEndpoint:
    """One LLM server. Discovery runs once (lazily) and is cached; ``refresh()`` runs it again."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        context_window: int | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
    ) -> None:
        # Scrubbed here too, for callers that pass a plain string: base_url is what messages show, _url (no
        # credentials either) is where requests go, with the URL's user info and query added by the clients.
        self.url = secret_url(base_url)
        self.base_url = self.url.rstrip("/")
        self._bare = self.url.bare.rstrip("/")
        self.root = root_of(self._bare)
        self.api_key = api_key
        self.configured_model = model
        self.configured_window = context_window
        self.timeout = timeout
        # Every call of discovery, token counts (here) and chat models (below) can be cancelled (CancelToken).
        self._http = _watched_client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            **self.url.client_kwargs(),
        )
        self._server = ServerHttp(self._http, self._bare, shown=self.base_url)
        self._info: EndpointInfo | None = None
        self._lock = threading.Lock()
        self._learned_window: int | None = None
        self._overhead: ChatOverhead | None = None
        # LRU: the chunks of popular documents stay. Locked: the API counts for several requests at once.
        self._cached_count = cachetools.cached(cachetools.LRUCache(maxsize=_COUNT_CACHE_SIZE),
                                               lock=threading.Lock())(self._server_count)
        self._tokenizer_down_until = 0.0
        self._at = 0.0
        self._suspect = False  # a request failed since discovery: ask again at the next look
        # The chat models' own pool, as the openai client would keep: llama-cpp-python closes a connection after
        # a failed stream, and the overflow probe that follows one must not reuse it. Its connection limits are the
        # openai client's too: the API's caps, not the pool, bound the calls at once.
        self._chat_http = _watched_client(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100), **self.url.client_kwargs())
        self._openai_async: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OpenAICompatibleEndpoint:
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        kwargs: dict[str, Any] = dict(api_key=key, model=settings.llm_model,
                                      context_window=settings.llm_context_window, timeout=settings.llm_timeout)
        return cls(settings.llm_base_url, **{**kwargs, **overrides})

    # --- discovery -----------------------------------------------------------------------------
    @property
    def info(self) -> EndpointInfo:
        with self._lock:
            # An unusable endpoint is asked again (at most every few seconds): servers restart, and a
            # long-running UI must notice when the model is back.
            stale = self._info is not None and not self._info.healthy and time.monotonic() - self._at > 5
            if self._info is None or stale or self._suspect:
                return self._rediscover()
            return self._info

    def suspect(self) -> None:
        """A request found the server gone or failing: the next look at :attr:`info` asks it again. A healthy
        verdict was otherwise kept for the life of the process, so the sidebar, /healthz and check_usable said
        "healthy" while every answer failed."""
        with self._lock:
            self._suspect = True

    @property
    def cached_info(self) -> EndpointInfo | None:
        """What the last discovery found, without asking the server (None before the first one)."""
        return self._info

    def ping(self, timeout: float = 5.0) -> str | None:
        """Cheap health check (``GET /models``): None if the server answers, else why not, in one line."""
        try:
            r = self._http.get(f"{self._bare}/models", timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)))
        except httpx.TimeoutException:
            return f"{self.base_url}/models did not answer within {timeout:g} s"
        except httpx.HTTPError as exc:
            return f"cannot reach {self.base_url} ({short(exc)})"
        if r.status_code != 200:
            return f"{self.base_url}/models answered HTTP {r.status_code}"
        return None

    def refresh(self) -> EndpointInfo:
        with self._lock:
            return self._rediscover()

    def _rediscover(self) -> EndpointInfo:
        """Ask the server now (the lock held): what is known, when, and no suspicion left."""
        self._info = self._discover()
        self._at = time.monotonic()
        self._suspect = False
        return self._info

    def _discover(self) -> EndpointInfo:
        return discover(self._server, configured_model=self.configured_model,
                        configured_window=self.configured_window, learned_window=self._learned_window)

    def learn_window(self, n: int) -> None:
        """Called when the server said "maximum context length is n": trust it from now on, over a larger
        configured value too (the configuration is then simply wrong, and every request would fail)."""
        with self._lock:
            self._learned_window = n
            if self._info is not None and (self._info.context_window or 0) > n:
                if self.configured_window:
                    log.warning("RAG_LLM_CONTEXT_WINDOW=%d but the server's limit is %d tokens; using %d",
                                self.configured_window, n, n)
                self._info.context_window, self._info.context_source = n, "server overflow error"

    # --- tokens --------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the served model's tokenizer, or a conservative local estimate.
        Counts are cached: the same chunks come back question after question."""
        if not text:
            return 0
        try:
            return self._cached_count(text)
        except _TokenizerDown:
            return estimate_tokens(text)

    def _server_count(self, text: str) -> int:
        info = self.info
        if time.monotonic() < self._tokenizer_down_until:
            raise _TokenizerDown
        try:
            n = servers.by_kind(info.kind).count(self._server, info.model, text)
        except httpx.TransportError as exc:
            # Unreachable or hung: estimate without asking for a while (a hung server would cost a timeout per
            # text), and keep none of these estimates: exact counts come back with the server.
            log.warning("server tokenizer at %s unreachable (%s); local estimates for %g s", self.root,
                        short(exc), _TOKENIZER_BACKOFF_S)
            self._tokenizer_down_until = time.monotonic() + _TOKENIZER_BACKOFF_S
            raise _TokenizerDown from exc
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            log.warning("server tokenizer failed (%s); using a local estimate", short(exc))
            n = None
        return estimate_tokens(text) if n is None else n

    def count(self, text: str) -> int:
        """``TokenCounter`` protocol (what the packer calls)."""
        return self.count_tokens(text)

    def chat_overhead(self) -> ChatOverhead:
        """What the chat template adds around message contents, measured once per endpoint.

        Linear model: ``base + per_turn * turns + sum(content tokens)`` (see :class:`ChatOverhead`). Measured by
        rendering the template on the server where it can (vLLM ``/tokenize`` with messages, llama-server
        ``/apply-template``), otherwise from ``usage.prompt_tokens`` of two one-token completions. The model holds
        because every template we know puts special tokens around each content, so contents tokenize on their
        own."""
        with self._lock:
            if self._overhead is not None:
                return self._overhead
        overhead = measure_overhead(self._rendered_tokens, self._usage_prompt_tokens, self.count_tokens,
                                    self.exact_tokenizer)
        with self._lock:
            self._overhead = overhead
            if self._info is not None:
                self._info.template_overhead = overhead.base
        return overhead

    def _rendered_tokens(self, messages: Turns) -> int | None:
        """Exact prompt tokens where the server renders its own chat template for us; None elsewhere."""
        info = self.info
        return servers.by_kind(info.kind).render(self._server, info.model, messages)

    def _one_token_completion(self, messages: Turns) -> httpx.Response:
        body = {"model": self.info.model, "messages": [{"role": r, "content": c} for r, c in messages],
                "max_tokens": 1, "temperature": 0}
        return self._http.post(f"{self._bare}/chat/completions", json=body,
                               timeout=httpx.Timeout(self.timeout, connect=3.0))

    def _usage_prompt_tokens(self, messages: Turns) -> int:
        r = self._one_token_completion(messages)
        r.raise_for_status()
        return int(r.json()["usage"]["prompt_tokens"])

    def overflow_of(self, messages: Turns) -> int | None:
        """The server's context size if these messages overflow it, else None (one 1-token completion).

        Needed because llama-cpp-python answers an overflowing *streamed* request with HTTP 200 and an empty
        stream (the error only reaches its log); the same request unstreamed gets the usual HTTP 400."""
        r = self._one_token_completion(messages)
        if r.status_code == 400:
            return parse_overflow(r.text)
        return None

    def prompt_tokens(self, messages: Turns) -> int:
        """Tokens the server will see for these (role, content) messages, generation prompt included."""
        try:
            exact = self._rendered_tokens(messages)
            if exact is not None:
                return exact
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            log.warning("server could not render the chat template (%s); using the measured overhead", short(exc))
        return self.chat_overhead().total(len(messages)) + sum(self.count_tokens(c) for _, c in messages)

    @property
    def margin(self) -> int:
        """Tokens held back for counting error: none with the server's tokenizer (the final prompt is
        counted exactly), a few percent of the window with the local estimate."""
        if self.exact_tokenizer:
            return 0
        return max(32, (self.info.context_window or FALLBACK_CONTEXT_WINDOW) // 20)

    @property
    def exact_tokenizer(self) -> bool:
        return self.info.tokenizer != "local estimate"

    # --- chat ----------------------------------------------------------------------------------
    def chat_model(self, *, max_tokens: int, temperature: float = 0.1, streaming: bool = True,
                   context_window: int | None = None, top_p: float | None = None, seed: int | None = None):
        """A LangChain chat model bound to this endpoint and its discovered model.

        Ollama gets its native API (langchain-ollama) with ``num_ctx`` set to the window we packed for: its
        OpenAI route cannot set it, and Ollama cuts longer prompts silently."""
        info = self.info
        if not info.healthy:
            raise EndpointError(info.error or f"LLM endpoint {self.base_url} is not usable")
        if info.kind == ollama.kind:
            return ollama.chat_model(root=self.root, model=info.model, num_ctx=context_window or info.context_window,
                                     max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                     timeout=self.timeout, api_key=self.api_key,
                                     client_kwargs=self.url.client_kwargs())
        return max_tokens_chat_openai()(
            base_url=self._bare,
            **self._openai_clients(),
            api_key=self.api_key or "not-needed",
            model=info.model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            timeout=self.timeout,
            max_retries=0,  # failover and retries are ours to decide, not hidden inside the client
            streaming=streaming,
            stream_usage=True,
        )

    def _openai_clients(self) -> dict[str, Any]:
        """The endpoint's clients for the chat models' calls: the sync one's calls can be cancelled
        (:class:`CancelToken`), and both add the URL's user info and query, which, handed to ChatOpenAI as its base
        URL, would show in its repr and in the openai client's errors."""
        extra = self.url.client_kwargs()
        if not extra:
            return {"http_client": self._chat_http}
        with self._lock:  # one per endpoint, not one per chat model (that is, per request)
            if self._openai_async is None:
                self._openai_async = httpx.AsyncClient(**extra)
        return {"http_client": self._chat_http, "http_async_client": self._openai_async}

    def explain(self, exc: BaseException) -> EndpointError:
        """One line a user can act on, for any failure of a chat request to this endpoint."""
        return EndpointError(describe_failure(exc, self.base_url, self.info.model, self.timeout))

    def close(self) -> None:
        self._http.close()
        self._chat_http.close()


@functools.cache
def max_tokens_chat_openai() -> type:
    """The ChatOpenAI subclass below, built on first use (importing langchain_openai costs about a second)."""
    from langchain_openai import ChatOpenAI

    class MaxTokensChatOpenAI(ChatOpenAI):
        """ChatOpenAI that sends ``max_tokens``: langchain-openai renames it to ``max_completion_tokens``,
        which llama.cpp ignores (and older vLLM/TGI versions too), so answers would run to the context end."""

        def _get_request_payload(self, input_, *, stop=None, **kwargs):
            payload = super()._get_request_payload(input_, stop=stop, **kwargs)
            if "max_completion_tokens" in payload:
                payload["max_tokens"] = payload.pop("max_completion_tokens")
            return payload

    return MaxTokensChatOpenAI
