"""Errors a user can act on. Each message says what failed and what to do next; shells print it as one line."""

from __future__ import annotations


class RagError(Exception):
    """Base class: the CLI prints ``str(exc)`` without a traceback."""


class StoreLockedError(RagError):
    pass


class StoreConfigError(RagError):
    """The store exists but was built with different settings (embedding model, dimension)."""


class StoreUnavailableError(RagError):
    pass


class EmbeddingModelError(RagError):
    pass


class ParseError(RagError):
    """A single file could not be turned into text. Ingestion reports it and goes on with the rest."""


class RerankError(RagError):
    """The reranker (a local cross-encoder or a reranking endpoint) could not be loaded or did not answer."""
