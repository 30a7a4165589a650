"""Self-hosted LLM endpoints behind an OpenAI-compatible API: discovery, token counting, chat models.

Which kinds of server are recognised, and what each tells us, is in :mod:`rag.llm.servers` (one module per
kind); how the window is chosen from what they say is in :mod:`rag.llm.discovery`. Where a server cannot count
tokens, a local estimate with a safety margin stands in (:func:`rag.llm.tokens.estimate_tokens`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import cachetools
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
__all__ = ["FALLBACK_CONTEXT_WINDOW", "ChatOverhead", "EndpointError", "EndpointInfo", "OpenAICompatibleEndpoint",
           "describe_failure", "estimate_tokens", "max_tokens_chat_openai", "parse_overflow"]

log = logging.getLogger(__name__)

_COUNT_CACHE_SIZE = 8192
#: After the server tokenizer could not be reached, seconds of local estimates before it is asked again.
_TOKENIZER_BACKOFF_S = 10.0


class _TokenizerDown(Exception):
    """Raised through the count cache so that an estimate made while the server is away is not kept."""


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
        self._http = httpx.Client(
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
        self._openai_http: tuple[httpx.Client, httpx.AsyncClient] | None = None

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
            if self._info is None or stale:
                self._info = self._discover()
                self._at = time.monotonic()
            return self._info

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
            self._info = self._discover()
            self._at = time.monotonic()
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
                   context_window: int | None = None):
        """A LangChain chat model bound to this endpoint and its discovered model.

        Ollama gets its native API (langchain-ollama) with ``num_ctx`` set to the window we packed for: its
        OpenAI route cannot set it, and Ollama cuts longer prompts silently."""
        info = self.info
        if not info.healthy:
            raise EndpointError(info.error or f"LLM endpoint {self.base_url} is not usable")
        if info.kind == ollama.kind:
            return ollama.chat_model(root=self.root, model=info.model, num_ctx=context_window or info.context_window,
                                     max_tokens=max_tokens, temperature=temperature, timeout=self.timeout,
                                     api_key=self.api_key, client_kwargs=self.url.client_kwargs())
        return max_tokens_chat_openai()(
            base_url=self._bare,
            **self._openai_clients(),
            api_key=self.api_key or "not-needed",
            model=info.model,
            max_tokens=max_tokens,
            temperature=temperature,
            timeout=self.timeout,
            max_retries=0,  # failover and retries are ours to decide, not hidden inside the client
            streaming=streaming,
            stream_usage=True,
        )

    def _openai_clients(self) -> dict[str, Any]:
        """Clients that add the URL's user info and query: handed to ChatOpenAI as its base URL, they would
        show in its repr and in the openai client's errors."""
        extra = self.url.client_kwargs()
        if not extra:
            return {}
        with self._lock:  # one pair per endpoint, not one per chat model (that is, per request)
            if self._openai_http is None:
                self._openai_http = (httpx.Client(**extra), httpx.AsyncClient(**extra))
            sync, async_ = self._openai_http
        return {"http_client": sync, "http_async_client": async_}

    def explain(self, exc: BaseException) -> EndpointError:
        """One line a user can act on, for any failure of a chat request to this endpoint."""
        return EndpointError(describe_failure(exc, self.base_url, self.info.model, self.timeout))

    def close(self) -> None:
        self._http.close()
        if self._openai_http is not None:
            self._openai_http[0].close()


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
