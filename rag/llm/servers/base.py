"""What every server kind provides (:class:`ServerKind`), and the HTTP access the kinds share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from rag.llm.tokens import Turns

#: Read timeout of probes and tokenizer calls. A healthy server answers them in milliseconds (none queues them
#: behind generation), and a hung one is waited out once per probe before a request fails over: two probes at
#: 15 s made a hung endpoint cost 55 s; at 8 s it costs about 26 s (8 + 8 + the chat timeout of the test's 10 s).
PROBE_TIMEOUT_S = 8.0


def root_of(base_url: str) -> str:
    """Server root for the non-OpenAI routes (/tokenize, /props, /api/show): base URL without /v1."""
    u = base_url.rstrip("/")
    return u[: -len("/v1")] if u.endswith("/v1") else u


class ServerHttp:
    """The endpoint's client with the short timeouts of probes and tokenizer calls: these must not hang for a
    whole answer's timeout. ``base_url``: where requests go (the client adds any credentials); ``root``: where
    the servers' own (non-OpenAI) routes live."""

    def __init__(self, client: httpx.Client, base_url: str, *, shown: str | None = None) -> None:
        self.client = client
        self.base_url = base_url
        self.root = root_of(base_url)
        #: The base URL in messages: ``base_url`` with its credentials as *** (rag/urls.py).
        self.shown = shown or base_url

    def get(self, url: str) -> Any:
        r = self.client.get(url, timeout=httpx.Timeout(PROBE_TIMEOUT_S, connect=3.0))
        r.raise_for_status()
        return r.json()

    def post(self, url: str, body: dict) -> Any:
        r = self.client.post(url, json=body, timeout=httpx.Timeout(PROBE_TIMEOUT_S, connect=3.0))
        r.raise_for_status()
        return r.json()


@dataclass(frozen=True)
class Window:
    """The context window a server reports (``size`` None: it reports none) and where that came from."""

    size: int | None
    source: str = "unknown"


class ServerKind(Protocol):
    """One kind of server behind the OpenAI API. Each module of this package is one (modules satisfy it).

    ``count`` and ``render`` may raise what httpx raises, or KeyError/ValueError/TypeError for an answer of an
    unexpected shape: the endpoint decides what a failure costs (a back-off, a local estimate)."""

    #: ``EndpointInfo.kind``
    kind: str
    #: ``EndpointInfo.tokenizer``: where token counts come from ("local estimate" when the server cannot count)
    tokenizer: str

    def identify(self, http: ServerHttp, entry: dict, model: str | None) -> Window | None:
        """The window if the server at ``http`` is of this kind, else None. ``entry``: the model's
        ``/v1/models`` entry."""
        ...

    def count(self, http: ServerHttp, model: str | None, text: str) -> int | None:
        """Tokens of ``text`` in the served tokenizer, without special tokens; None if this kind cannot count."""
        ...

    def render(self, http: ServerHttp, model: str | None, messages: Turns) -> int | None:
        """Prompt tokens of ``messages`` through the served chat template with the generation prompt; None if
        this kind cannot render it for us."""
        ...
