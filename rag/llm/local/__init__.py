"""The local demo LLM: the packaged SmolLM2-135M served by a real engine, so the demo and the tests need no
model hub and no GPU.

Two engines, one interface (:class:`Engine`): vLLM's CPU build (:mod:`rag.llm.local.vllm`, the demo's default:
it met the demo's targets, bench/README.md) and llama-cpp-python (:mod:`rag.llm.local.llamacpp`, built
portably). ``rag llm serve --engine vllm|llamacpp`` runs one under :class:`~rag.llm.local.supervisor.Supervisor`.

It is a *demo* model: 135M parameters answer weakly. Production points ``RAG_LLM_BASE_URL`` at vLLM, Ollama
or llama.cpp serving a real model; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Protocol

from rag.llm.local.llamacpp import (
    DEFAULT_CONTEXT,
    MODEL_ALIAS,
    LlamaCppEngine,
    LocalLLMServer,
    packaged_model,
    server_command,
)
from rag.llm.local.process import LocalLLMError, ServerProcess
from rag.llm.local.vllm import VllmEngine

__all__ = ["DEFAULT_CONTEXT", "DEFAULT_ENGINE", "ENGINES", "MODEL_ALIAS", "Engine", "LocalLLMError",
           "LocalLLMServer", "ServerProcess", "get_engine", "packaged_model", "server_command"]


class Engine(Protocol):
    name: str
    title: str
    #: Seconds a start may take before it counts as failed (vLLM loads for ~50 s).
    start_timeout: float

    def installed(self) -> bool: ...

    def fingerprint(self) -> str:
        """What was installed (version, build flags, dtype): a self-check holds for one fingerprint and CPU."""
        ...

    def install(self, say: Callable[[str], None] = print, *, force: bool = False) -> None:
        """Install what the engine needs (a no-op when it is there); ``force``: build or install it again."""
        ...

    def server(self, *, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT,
               threads: int | None = None, log: IO | None = None, die_with_parent: bool = False) -> ServerProcess:
        """The server, not started yet; ``die_with_parent`` see :class:`ServerProcess`."""
        ...


ENGINES: dict[str, Engine] = {"vllm": VllmEngine(), "llamacpp": LlamaCppEngine()}
#: Chosen by figures (bench/engines.py, bench/README.md): vLLM met both demo targets here (first token of a
#: full 2048-token window within 3 s, 4 chats served together); llama-cpp-python serves one chat at a time.
DEFAULT_ENGINE = "vllm"


def get_engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise LocalLLMError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}") from None
