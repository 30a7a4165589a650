"""What both API shells (the OpenAI-compatible app and the MCP server) serve: the document collections, one open
RAG each, and the error an HTTP client gets back."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from fastapi.responses import JSONResponse

from rag.errors import QuestionTooLongError, RagError, StoreLockedError, StoreUnavailableError
from rag.generation.chain import RAG
from rag.llm.failures import EndpointError
from rag.settings import Settings


class ApiError(Exception):
    """An error in OpenAI's shape; ``param`` names the request field at fault, as OpenAI's do."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None, *,
                 param: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.headers = param, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


class Collections:
    """One RAG per collection, opened on first use and kept (an embedded store admits one opener per process,
    so every request shares it)."""

    def __init__(self, settings: Settings, names: list[str]) -> None:
        self.settings = settings
        self.names = names
        self._open: dict[str, RAG] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> RAG:
        if name not in self.names:
            raise ApiError(404, f"the model {name!r} does not exist: use one of {', '.join(self.names)} "
                                "(GET /v1/models); each names a document collection", "invalid_request_error",
                           "model_not_found")
        with self._lock:
            if name not in self._open:
                self._open[name] = RAG.from_settings(self.settings.model_copy(update={"collection": name}))
            return self._open[name]

    def close(self) -> None:
        with self._lock:
            for rag in self._open.values():
                rag.close()
            self._open.clear()


def open_rag(pool: Collections, name: str) -> RAG:
    """The collection's RAG for a route; a store that cannot be opened is the client's ApiError."""
    try:
        return pool.get(name)
    except RagError as exc:
        raise as_api_error(exc) from None


def as_api_error(exc: RagError) -> ApiError:
    if isinstance(exc, QuestionTooLongError):
        # OpenAI's code for a prompt over the window: clients that handle it (trim, retry shorter) work unchanged.
        return ApiError(400, str(exc), "invalid_request_error", "context_length_exceeded", param="messages")
    if isinstance(exc, EndpointError):
        return ApiError(502, f"the LLM behind this API failed: {exc}", "api_error", "llm_unavailable")
    if isinstance(exc, StoreLockedError | StoreUnavailableError):
        return ApiError(503, str(exc), "api_error", "store_unavailable")
    return ApiError(500, str(exc), "api_error", None)
