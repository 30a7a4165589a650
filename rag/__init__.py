"""onprem-rag: chat with your company's documents; every byte stays on your machines.

The library is the product; ``rag`` (CLI) and ``ui/`` are thin shells over it::

    from rag import RAG
    with RAG.from_settings() as rag:
        answer = rag.ask("How many vacation days do I get?")
        print(answer.text, [(c.n, c.path, c.page) for c in answer.cited])
"""

from typing import TYPE_CHECKING, Any

from rag import offline as _offline

# Before anything imports huggingface_hub, unstructured or onnxruntime: they phone home otherwise.
_offline.apply()

from rag.settings import Settings  # noqa: E402

__all__ = ["RAG", "Answer", "Citation", "Sampling", "Settings"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # type checkers see the real classes; at run time they load on first use (below)
    from rag.generation.chain import RAG
    from rag.types import Answer, Citation, Sampling


def __getattr__(name: str) -> Any:
    # The chain pulls in LangChain (about a second): only when asked for.
    if name in ("RAG", "Answer", "Citation"):
        from rag.generation import chain

        return getattr(chain, name)
    if name == "Sampling":
        from rag.types import Sampling

        return Sampling
    raise AttributeError(f"module 'rag' has no attribute {name!r}")


def __dir__() -> list[str]:
    # dir(rag) and help(rag) list the lazily loaded names too.
    return sorted({*globals(), *__all__})
