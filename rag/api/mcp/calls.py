"""The store and the LLM block; an MCP handler runs on the event loop. Every handler runs its library calls
through here, off the loop, and a library failure comes back as what a model can act on: a tool error (``isError``)
for tools, a protocol error for resources, which have no error result. A tool's work is its HTTP request's
(:func:`rag.api.limits.tool_work`): that request keeps its slot until the work has stopped, and ends it if the
request ends first."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR

from rag.api.limits import tool_work
from rag.errors import RagError, StoreLockedError
from rag.generation.chain import Answer, AnswerStream
from rag.llm.endpoints import Cancelled
from rag.llm.failures import EndpointError

T = TypeVar("T")


def tool_error(exc: RagError) -> ToolError:
    if isinstance(exc, EndpointError):
        return ToolError(f"the LLM behind this server is not answering ({exc}); retry in a minute, or use the "
                         "search tool, which needs no LLM")
    if isinstance(exc, StoreLockedError):
        return ToolError(f"the document store is busy ({exc}); retry in a minute")
    return ToolError(str(exc))


def _work(cancel: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
    work = tool_work()
    return contextlib.nullcontext() if work is None else work.running(cancel)


async def for_tool(fn: Callable[[], T], *, abandon_on_cancel: bool = False) -> T:
    with _work():
        try:
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=abandon_on_cancel)
        except RagError as exc:
            raise tool_error(exc) from None


async def for_answer(stream: AnswerStream) -> Answer:
    """The answer, off the loop as :func:`for_tool`. A tool call cancelled meanwhile (the client's
    ``notifications/cancelled``, the end of its session, its request's connection closed) cancels the answer,
    whose LLM request is closed at once; the cancellation goes on, and the request's slot is given back, only
    once the answer's thread has stopped, so no LLM work outlives the call."""
    stopped = threading.Event()

    def run() -> Answer | None:
        try:
            return stream.text()
        except Cancelled:
            return None
        finally:
            stopped.set()

    with _work(cancel=stream.cancel):
        try:
            # Abandoned on cancel, rather than shielded until the whole answer is in: so the cancel is seen at once.
            answer = await for_tool(run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            stream.cancel()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stopped.wait, limiter=anyio.CapacityLimiter(1))
            raise
    if answer is None:  # its request ended first (tool_work): nobody receives this error
        raise ToolError("the call was abandoned: its client disconnected before the answer")
    return answer


async def for_resource(fn: Callable[[], T]) -> T:
    try:
        return await anyio.to_thread.run_sync(fn)
    except RagError as exc:
        raise MCPError(code=INTERNAL_ERROR, message=str(tool_error(exc))) from None
