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


class ClusterError(RagError):
    """The Ray cluster of a distributed ingest (RAG_INGEST_RAY, ``rag ingest --ray``) is missing or unreachable."""


class ParseError(RagError):
    """A single file could not be turned into text. Ingestion reports it and goes on with the rest."""


class RerankError(RagError):
    """The reranker (a local cross-encoder or a reranking endpoint) could not be loaded or did not answer."""


class AccessPolicyError(RagError):
    """A ``.rag-access.toml`` cannot be read; the message names the file and line. Ingestion stops rather than
    guess: a silent default could publish documents the policy meant to restrict."""


class UsersFileError(RagError):
    """The users file cannot be read or written, or a user operation is not possible (unknown, duplicate)."""


class AuditLogError(RagError):
    """The audit log cannot be written; callers decide whether to refuse the request or go on."""


class AccessDenied(RagError):
    """The asking user may not read this document (or it does not exist: the message does not say which)."""


class QuestionTooLongError(RagError):
    """The question does not fit the model's context window beside the prompt and the answer's reserve: the asker's
    to shorten (the HTTP API answers 400), not a fault of the server."""
