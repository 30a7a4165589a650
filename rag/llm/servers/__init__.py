"""The kinds of server an OpenAI-compatible endpoint can be, one module each (see :class:`base.ServerKind`).

Discovery asks them in the order of :data:`KINDS`, each with short timeouts, and the first that recognises the
server wins: vLLM first (its ``/v1/models`` entry gives it away without a request), the generic kind last (it
recognises anything)."""

from __future__ import annotations

from rag.llm.servers import generic, llama_cpp_python, llama_server, ollama, vllm
from rag.llm.servers.base import ServerHttp, ServerKind, Window

KINDS: tuple[ServerKind, ...] = (vllm, ollama, llama_server, llama_cpp_python, generic)


def identify(http: ServerHttp, entry: dict, model: str | None) -> tuple[ServerKind, Window]:
    """The kind of the server at ``http`` and the window it reports. ``entry``: the model's ``/v1/models`` entry."""
    for server in KINDS:
        window = server.identify(http, entry, model)
        if window is not None:
            return server, window
    raise AssertionError("the generic kind recognises every server")


def by_kind(kind: str) -> ServerKind:
    """The server kind named ``kind`` (``EndpointInfo.kind``); the generic one for a name it does not know."""
    return next((s for s in KINDS if s.kind == kind), generic)
