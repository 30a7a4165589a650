"""onprem-rag: chat with your company's documents; every byte stays on your machines.

The library is the product; ``rag`` (CLI) and ``ui/`` are thin shells over it.
"""

from rag import offline as _offline

# Before anything imports huggingface_hub, unstructured or onnxruntime: they phone home otherwise.
_offline.apply()

from rag.settings import Settings  # noqa: E402

__all__ = ["Settings"]
__version__ = "0.1.0"
