"""``/v1/sources/page`` and ``/v1/sources/text``: a cited passage where it is, for clients of the chat route,
whose ``sources`` name these routes (``view``). The PDF page comes back as PNG with the passage highlighted, any
other document as the indexed text around the passage. Same key, same permission and integrity checks as the
chat itself (``RAG.source_page``/``source_text``): a document the caller may not read is a 404 in the same words
as one that does not exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from rag.api.collections import ApiError, Collections, open_rag
from rag.errors import AccessDenied, RagError
from rag.evidence.pages import PreviewError
from rag.security.auth import Identity
from rag.types import Citation


def view_of(model: str, c: Citation) -> dict[str, Any]:
    """What a client needs to show a source in place: the route that renders it, and its query."""
    query = {"model": model, "path": c.path, "start": c.char_start, "end": c.char_end}
    if c.page is not None and c.path.lower().endswith(".pdf"):
        return {"kind": "page", "url": "/v1/sources/page?" + urlencode({**query, "page": c.page})}
    return {"kind": "text", "url": "/v1/sources/text?" + urlencode(query)}


def add_routes(app: FastAPI, pool: Collections, identify: Callable[[Request], Identity]) -> None:
    @app.get("/v1/sources/page", responses={200: {"content": {"image/png": {}}}})
    def page(request: Request, model: str, path: str, page: int = Query(ge=1), start: int = Query(0, ge=0),
             end: int = Query(0, ge=0)) -> Response:
        user = identify(request)
        rag = open_rag(pool, model)
        try:
            rendered = rag.source_page(path, page, span=(start, end) if end > start else None, user=user)
        except (AccessDenied, PreviewError) as exc:
            raise _not_shown(exc) from None
        return Response(rendered.png, media_type="image/png", headers={
            "X-Rag-Page": str(rendered.page), "X-Rag-Pages": str(rendered.pages),
            "X-Rag-Highlight-Boxes": str(len(rendered.boxes)), "Cache-Control": "private, no-store"})

    @app.get("/v1/sources/text")
    def text(request: Request, model: str, path: str, start: int = Query(ge=0), end: int = Query(ge=0),
             context: int = Query(800, ge=0, le=20_000)) -> dict[str, Any]:
        user = identify(request)
        rag = open_rag(pool, model)
        try:
            return rag.source_text(path, start, end, user=user, context=context).to_dict()
        except AccessDenied as exc:
            raise _not_shown(exc) from None


def _not_shown(exc: RagError) -> ApiError:
    if isinstance(exc, AccessDenied):
        return ApiError(404, str(exc), "invalid_request_error", "source_not_found")
    return ApiError(400, str(exc), "invalid_request_error", "page_not_shown")
