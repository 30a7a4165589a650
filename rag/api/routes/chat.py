"""``/v1/chat/completions``: the conversation's last user message is the question, earlier user/assistant turns its
history; the answer comes back whole or as server-sent events, with its sources in an extra ``sources`` field.

A client that disconnects cancels its answer: while the answer is prepared (retrieval, the LLM's queue, its
first token; the whole answer when it is not streamed) the route watches for the disconnect, and the event
stream notices it too. The request ends only once the answer's chain is closed, so its slot of
:class:`rag.api.limits.RequestLimits` is free again then, and never while the LLM still works for nobody.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar, cast

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.types import Message, Receive, Scope, Send

from rag.api.collections import ApiError, Collections, as_api_error, open_rag
from rag.api.limits import conversation_error
from rag.api.routes.sources import view_of
from rag.errors import RagError
from rag.generation.chain import Answer, AnswerStream
from rag.llm.endpoints import Cancelled
from rag.security.auth import Identity
from rag.types import Sampling

log = logging.getLogger(__name__)
T = TypeVar("T")
#: The status of a request whose client left before its answer (nginx's "client closed request"): nobody reads
#: it, but the request metrics count it.
CLIENT_GONE = 499


class ContentPart(BaseModel):
    """A part of a message's content. Only text parts count (retrieval and the prompt are text): images, audio and
    files are accepted and left out, as the client's system prompt is."""
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError('a text part needs its text: {"type": "text", "text": "..."}')
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_text_part(cls, content: Any) -> Any:
        # One shape to validate, so that an error names the part at fault (a union would report every branch).
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if content is not None and not isinstance(content, list):
            raise ValueError("content must be a string or a list of content parts")
        return content


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    # The sampling fields below are the client's to set; the other OpenAI fields (stop, penalties, tools, ...) are
    # accepted and ignored: the answer is grounded text with checked citations.
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None

    def sampling(self) -> Sampling:
        """The client's say in generation; what cannot be honoured is a 400 rather than a surprise later."""
        if self.n > 1:  # several choices would each need their own citations checked: not offered, and said so
            raise ApiError(400, f"n={self.n}: this API gives one answer per request; leave n out (or send 1) and "
                           "send the request again for another answer", "invalid_request_error",
                           "unsupported_value", param="n")
        wanted = (self.model_extra or {}).get("response_format")
        kind = wanted.get("type") if isinstance(wanted, dict) else wanted
        if wanted is not None and kind != "text":  # a JSON parser on the client would fail on prose, later
            raise ApiError(400, f"response_format {kind!r}: answers are prose with numbered citations, not JSON; "
                           'leave response_format out (or send {"type": "text"}), and parse the answer and its '
                           "sources field instead", "invalid_request_error", "unsupported_value",
                           param="response_format")
        return Sampling(max_tokens=self.max_completion_tokens or self.max_tokens, temperature=self.temperature,
                        top_p=self.top_p, seed=self.seed)


def add_routes(app: FastAPI, pool: Collections, identify: Callable[[Request], Identity]) -> None:
    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        watch = _Watch()

        def answer() -> Response | dict[str, Any]:  # blocks: retrieval, the LLM (a worker thread)
            user = identify(request)
            sampling = body.sampling()
            # Before any token is counted: each history message would cost the tokenizer a call.
            if (too_large := conversation_error(pool.settings, [_text(m.content) for m in body.messages])) is not None:
                raise ApiError(413, too_large, "invalid_request_error", "conversation_too_large")
            question, history = _question_and_history(body.messages)
            rag = open_rag(pool, body.model)
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            stream = watch.started(rag.stream(question, history, user=user, sampling=sampling))
            if not body.stream:
                return _completion(stream, cid, created, body.model)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            pieces = iter(stream)
            try:  # the first piece before the 200: failover and errors that happen before any token get a status
                first = next(pieces, None)
            except RagError as exc:
                raise as_api_error(exc) from None
            if stream.cancelled:
                stream.close()
                return Response(status_code=CLIENT_GONE)
            return _AnswerEvents(stream, _sse(stream, pieces, first, cid, created, body.model, include_usage))

        return await _while_connected(request, answer, watch.client_gone)


class _Watch:
    """Cancels a request's answer when its client disconnects, whether the answer has started yet or not (the
    disconnect is seen on the event loop, the answer starts in a worker thread: either may come first)."""

    def __init__(self) -> None:
        self.gone = False
        self.stream: AnswerStream | None = None

    def started(self, stream: AnswerStream) -> AnswerStream:
        self.stream = stream
        if self.gone:
            stream.cancel()
        return stream

    def client_gone(self) -> None:
        self.gone = True
        if self.stream is not None:
            self.stream.cancel()


async def _while_connected(request: Request, work: Callable[[], T], client_gone: Callable[[], None]) -> T:
    """``work()`` in a worker thread (anyio's, as FastAPI's sync routes), calling ``client_gone`` as soon as the
    client disconnects meanwhile; ``work`` then ends early, and this returns only once it has."""

    async def watch() -> None:
        # The body has been read: what the client sends now is its disconnect (as Starlette's StreamingResponse
        # listens for it). Waiting on it, rather than polling is_disconnected, sees it at once.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        client_gone()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        result, error = await anyio.to_thread.run_sync(_outcome, work)
        tg.cancel_scope.cancel()
    if error is not None:  # raised here, not inside the task group, which would wrap it in an ExceptionGroup
        raise error
    return cast(T, result)


def _outcome(work: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return work(), None
    except Exception as exc:  # noqa: BLE001 - raised again by the caller
        return None, exc


class _AnswerEvents(StreamingResponse):
    """The answer's server-sent events. A disconnect cancels the answer at once (the next token may be long in
    coming), and whatever ended the response, the answer's chain is closed before it returns (its LLM request,
    its audit record), rather than when the generator is collected."""

    def __init__(self, stream: AnswerStream, events: Iterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._stream, self._events = stream, events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_or_cancel() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._stream.cancel()
            return message

        try:
            await super().__call__(scope, receive_or_cancel, send)
        finally:
            # Starlette waits for a piece being read before it returns, so nobody iterates any more.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()
        self._stream.close()


def _text(content: list[ContentPart] | None) -> str:
    return "".join(part.text or "" for part in content or () if part.type == "text")


def _question_and_history(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    turns = [(m.role, _text(m.content)) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(400, "the last message must be a non-empty user message: it is the question",
                       "invalid_request_error", "invalid_messages")
    return turns[-1][1], turns[:-1]


def _sources(answer: Answer, model: str) -> list[dict[str, Any]]:
    return [{"n": c.n, "path": c.path, "source": c.source, "page": c.page, "page_end": c.page_end,
             "section": c.section, "snippet": c.snippet, "score": round(c.score, 4), "cited": c.cited,
             "char_start": c.char_start, "char_end": c.char_end, "view": view_of(model, c),
             "support": None if c.support is None else round(c.support, 4), "verdict": c.verdict}
            for c in answer.sources]


def _usage(answer: Answer) -> dict[str, int]:
    p, c = answer.usage.get("prompt_tokens") or 0, answer.usage.get("completion_tokens") or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish(answer: Answer) -> Literal["stop", "length", "content_filter"]:
    """The model's own reason, so a client sees an answer cut off by RAG_LLM_MAX_TOKENS ("length")."""
    reason = answer.finish_reason
    return reason if reason in ("length", "content_filter") else "stop"  # type: ignore[return-value]


def _completion(stream: AnswerStream, cid: str, created: int, model: str) -> Response | dict[str, Any]:
    try:
        answer = stream.text()
    except RagError as exc:
        raise as_api_error(exc) from None
    except Cancelled:
        return Response(status_code=CLIENT_GONE)
    # The SDK's own response type (extra fields allowed, as its clients keep them): sources and refused.
    return ChatCompletion(
        id=cid, object="chat.completion", created=created, model=model,
        choices=[Choice(index=0, message=ChatCompletionMessage(role="assistant", content=answer.text),
                        finish_reason=_finish(answer), logprobs=None)],
        usage=CompletionUsage(**_usage(answer)), sources=_sources(answer, model), refused=answer.refused,
    ).model_dump(exclude_unset=True)


def _sse(stream: AnswerStream, pieces: Iterator[str], first: str | None, cid: str, created: int, model: str,
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
        yield "data: " + json.dumps({"error": {"message": str(as_api_error(exc)), "type": "api_error",
                                               "code": "stream_failed"}}) + "\n\n"
        yield "data: [DONE]\n\n"
        return
    answer = stream.answer
    if answer is None:  # cancelled: the client has gone
        return
    yield event(delta(_finish(answer)), sources=_sources(answer, model), refused=answer.refused)
    if include_usage:
        yield event([], usage=CompletionUsage(**_usage(answer)))
    yield "data: [DONE]\n\n"
