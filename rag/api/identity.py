"""Who sends a request to the OpenAI-compatible API or the MCP server over HTTP: the bearer key of a user of
``RAG_USERS_FILE``, in proxy mode the proxy's headers, or with ``RAG_AUTH=none`` the local user, who sees
everything. The caps (rag/api/limits.py) count slots per such user."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import Request

from rag.api.collections import ApiError
from rag.security.auth import Identity, authenticate_api_key, identity_from_headers, local_identity
from rag.security.users import UserDirectory
from rag.settings import Settings


def request_identifier(settings: Settings) -> Callable[[Request], Identity]:
    """What every route but the health checks calls first; a request it cannot identify gets a 401."""
    directory = UserDirectory.from_settings(settings) if settings.auth != "none" else None

    def identify(request: Request) -> Identity:
        if settings.auth == "none":
            return local_identity()
        assert directory is not None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and auth[7:].strip():
            who = authenticate_api_key(directory, auth[7:].strip())
            if who is not None:
                return who
            raise ApiError(401, "invalid API key: ask an administrator for one (rag users key NAME)",
                           "invalid_request_error", "invalid_api_key")
        if settings.auth == "proxy":
            who = identity_from_headers(settings, request.headers, directory)
            if who is not None:
                return who
        raise ApiError(401, "missing API key: send Authorization: Bearer <key> (rag users key NAME creates one)",
                       "invalid_request_error", "invalid_api_key")

    return identify


def identify_headers(settings: Settings, directory: UserDirectory | None,
                     headers: Mapping[str, str]) -> Identity | None:
    """As ``rag serve`` identifies a request: a bearer key of the users file, or in proxy mode the proxy's
    headers; None = refuse."""
    h = {k.lower(): v for k, v in headers.items()}
    if settings.auth == "none":
        return local_identity()
    assert directory is not None
    auth = h.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return authenticate_api_key(directory, auth[7:].strip())
    if settings.auth == "proxy":
        return identity_from_headers(settings, headers, directory)
    return None
