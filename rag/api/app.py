"""`rag serve`: the RAG as an OpenAI-compatible HTTP API (FastAPI), a shell over :class:`rag.generation.chain.RAG`.

Any OpenAI client works: point it at ``http://host:8000/v1`` with an API key from ``rag users key NAME``.
The *model* of a request names the document collection to answer from (``/v1/models`` lists them). The
conversation's last user message is the question and earlier user/assistant turns are its history; system
messages from the client are ignored (the product's own system prompt keeps answers grounded and cited).
Responses carry the sources as an extra ``sources`` field (the SDKs keep unknown fields), so ``[1]`` in the
answer can be resolved to a file and page.

Auth: with ``RAG_AUTH=none`` no key is needed and every document is visible (single-user local mode); otherwise
``Authorization: Bearer <key>`` must be a key of an enabled user in ``RAG_USERS_FILE`` and that user's groups
filter retrieval. In proxy mode the proxy's headers are accepted as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from openai.types import CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.base import BaseHTTPMiddleware

from rag.api.collections import ApiError, Collections
from rag.ops import metrics
from rag.security.auth import Identity, authenticate_api_key, identity_from_headers, local_identity
from rag.generation.chain import RAG, Answer
from rag.llm.failures import EndpointError
from rag.errors import RagError, StoreLockedError
from rag.settings import Settings
from rag.security.users import UserDirectory

log = logging.getLogger(__name__)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    # Sampling knobs of the OpenAI API are accepted and ignored: the operator's settings decide.
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


def _question_and_history(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    turns = [(m.role, _text(m.content)) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(400, "the last message must be a non-empty user message: it is the question",
                       "invalid_request_error", "invalid_messages")
    return turns[-1][1], turns[:-1]


def _sources(answer: Answer) -> list[dict[str, Any]]:
    return [{"n": c.n, "path": c.path, "source": c.source, "page": c.page, "page_end": c.page_end,
             "section": c.section, "snippet": c.snippet, "score": round(c.score, 4), "cited": c.cited}
            for c in answer.sources]


def _usage(answer: Answer) -> dict[str, int]:
    p, c = answer.usage.get("prompt_tokens") or 0, answer.usage.get("completion_tokens") or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def create_app(settings: Settings, *, collections: list[str] | None = None, mcp: bool = False,
               host: str = "127.0.0.1") -> FastAPI:
    """``mcp``: also serve the MCP server (rag.api.mcp) at /mcp, over the same collections and keys. ``host``:
    the interface served; on loopback the MCP endpoint only accepts loopback Host headers (DNS rebinding)."""
    names = collections or settings.api_collections or [settings.collection]
    pool = Collections(settings, names)
    directory = UserDirectory.from_settings(settings) if settings.auth != "none" else None
    mcp_server = None
    if mcp:
        from rag.security.audit import AuditLog
        from rag.api.mcp import RagMCP

        mcp_server = RagMCP(settings, pool, audit=AuditLog.from_settings(settings))
        mcp_app = mcp_server.http_app(path="/mcp", host=host)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        # A route's app gets no lifespan of its own: the MCP sessions' task group runs in ours.
        async with (mcp_server.session_manager.run() if mcp_server else contextlib.nullcontext()):
            yield
        pool.close()

    app = FastAPI(title="onprem-rag", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    if mcp_server is not None:
        from starlette.routing import Route

        # A Route, not a Mount: the client's URL stays /mcp, with no redirect to /mcp/.
        app.router.routes.append(Route("/mcp", endpoint=mcp_app))
    app.state.collections = pool
    app.add_middleware(_CountRequests)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

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

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        checks: dict[str, Any] = {}
        ok = True
        try:
            rag = pool.get(names[0])
            checks["store"] = {"ok": True, "documents": len(rag.store.documents())}
            info = rag.endpoint.info
            checks["llm"] = {"ok": info.healthy, "model": info.model, "error": info.error}
            ok = info.healthy
        except (RagError, ApiError) as exc:
            checks["store"] = {"ok": False, "error": str(exc)}
            ok = False
        return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics_route() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        identify(request)
        return {"object": "list", "data": [Model(id=n, object="model", created=0, owned_by="onprem-rag").model_dump()
                                           for n in names]}

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest, request: Request):
        user = identify(request)
        question, history = _question_and_history(body.messages)
        rag = _open(pool, body.model)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        stream = rag.stream(question, history, user=user)
        if not body.stream:
            try:
                answer = stream.text()
            except RagError as exc:
                raise _as_api_error(exc) from None
            # The SDK's own response type (extra fields allowed, as its clients keep them): sources and refused.
            return ChatCompletion(
                id=cid, object="chat.completion", created=created, model=body.model,
                choices=[Choice(index=0, message=ChatCompletionMessage(role="assistant", content=answer.text),
                                finish_reason="stop", logprobs=None)],
                usage=CompletionUsage(**_usage(answer)), sources=_sources(answer), refused=answer.refused,
            ).model_dump(exclude_unset=True)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        pieces = iter(stream)
        try:  # the first piece before the 200: failover and errors that happen before any token get a status
            first = next(pieces, None)
        except RagError as exc:
            raise _as_api_error(exc) from None
        return StreamingResponse(_sse(stream, pieces, first, cid, created, body.model, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _open(pool: Collections, name: str) -> RAG:
    try:
        return pool.get(name)
    except RagError as exc:
        raise _as_api_error(exc) from None


def _as_api_error(exc: RagError) -> ApiError:
    if isinstance(exc, EndpointError):
        return ApiError(502, f"the LLM behind this API failed: {exc}", "api_error", "llm_unavailable")
    if isinstance(exc, StoreLockedError):
        return ApiError(503, str(exc), "api_error", "store_unavailable")
    return ApiError(500, str(exc), "api_error", None)


def _sse(stream, pieces: Iterator[str], first: str | None, cid: str, created: int, model: str,
         include_usage: bool) -> Iterator[str]:
    def event(choices: list[ChunkChoice], **extra: Any) -> str:
        chunk = ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created, model=model,
                                    choices=choices, **extra)
        return "data: " + json.dumps(chunk.model_dump(exclude_unset=True), ensure_ascii=False) + "\n\n"

    def delta(finish_reason: str | None = None, **content: str) -> list[ChunkChoice]:
        return [ChunkChoice(index=0, delta=ChoiceDelta(**content), finish_reason=finish_reason)]

    yield event(delta(role="assistant", content=""))
    try:
        piece = first
        while piece is not None:
            yield event(delta(content=piece))
            piece = next(pieces, None)
    except RagError as exc:  # after the first token there is no status code left to change
        log.warning("answer stream failed: %s", exc)
        yield "data: " + json.dumps({"error": {"message": str(_as_api_error(exc)), "type": "api_error",
                                               "code": "stream_failed"}}) + "\n\n"
        yield "data: [DONE]\n\n"
        return
    answer: Answer = stream.answer
    yield event(delta("stop"), sources=_sources(answer), refused=answer.refused)
    if include_usage:
        yield event([], usage=CompletionUsage(**_usage(answer)))
    yield "data: [DONE]\n\n"


class _CountRequests(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.HTTP_REQUESTS.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response
