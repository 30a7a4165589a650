"""``/v1/chat/completions``: the conversation's last user message is the question, earlier user/assistant turns its
history; the answer comes back whole or as server-sent events, with its sources in an extra ``sources`` field."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rag.api.collections import ApiError, Collections, as_api_error, open_rag
from rag.api.limits import conversation_error
from rag.api.routes.sources import view_of
from rag.errors import RagError
from rag.generation.chain import Answer
from rag.security.auth import Identity

log = logging.getLogger(__name__)


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
    # Sampling knobs of the OpenAI API are accepted and ignored: the operator's settings decide.
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


def add_routes(app: FastAPI, pool: Collections, identify: Callable[[Request], Identity]) -> None:
    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest, request: Request):
        user = identify(request)
        # Before any token is counted: each history message would cost the tokenizer a call.
        if (too_large := conversation_error(pool.settings, [_text(m.content) for m in body.messages])) is not None:
            raise ApiError(413, too_large, "invalid_request_error", "conversation_too_large")
        question, history = _question_and_history(body.messages)
        rag = open_rag(pool, body.model)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        stream = rag.stream(question, history, user=user)
        if not body.stream:
            return _completion(stream, cid, created, body.model)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        pieces = iter(stream)
        try:  # the first piece before the 200: failover and errors that happen before any token get a status
            first = next(pieces, None)
        except RagError as exc:
            raise as_api_error(exc) from None
        return StreamingResponse(_sse(stream, pieces, first, cid, created, body.model, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


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


def _completion(stream, cid: str, created: int, model: str) -> dict[str, Any]:
    try:
        answer = stream.text()
    except RagError as exc:
        raise as_api_error(exc) from None
    # The SDK's own response type (extra fields allowed, as its clients keep them): sources and refused.
    return ChatCompletion(
        id=cid, object="chat.completion", created=created, model=model,
        choices=[Choice(index=0, message=ChatCompletionMessage(role="assistant", content=answer.text),
                        finish_reason=_finish(answer), logprobs=None)],
        usage=CompletionUsage(**_usage(answer)), sources=_sources(answer, model), refused=answer.refused,
    ).model_dump(exclude_unset=True)


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
        yield "data: " + json.dumps({"error": {"message": str(as_api_error(exc)), "type": "api_error",
                                               "code": "stream_failed"}}) + "\n\n"
        yield "data: [DONE]\n\n"
        return
    answer: Answer = stream.answer
    yield event(delta(_finish(answer)), sources=_sources(answer, model), refused=answer.refused)
    if include_usage:
        yield event([], usage=CompletionUsage(**_usage(answer)))
    yield "data: [DONE]\n\n"
