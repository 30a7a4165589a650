"""The store and the LLM block; an MCP handler runs on the event loop. Every handler runs its library calls
through here, off the loop, and a library failure comes back as what a model can act on: a tool error (``isError``)
for tools, a protocol error for resources, which have no error result."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR

from rag.errors import RagError, StoreLockedError
from rag.llm.failures import EndpointError

T = TypeVar("T")


def tool_error(exc: RagError) -> ToolError:
    if isinstance(exc, EndpointError):
        return ToolError(f"the LLM behind this server is not answering ({exc}); retry in a minute, or use the "
                         "search tool, which needs no LLM")
    if isinstance(exc, StoreLockedError):
        return ToolError(f"the document store is busy ({exc}); retry in a minute")
    return ToolError(str(exc))


async def for_tool(fn: Callable[[], T]) -> T:
    try:
        return await anyio.to_thread.run_sync(fn)
    except RagError as exc:
        raise tool_error(exc) from None


async def for_resource(fn: Callable[[], T]) -> T:
    try:
        return await anyio.to_thread.run_sync(fn)
    except RagError as exc:
        raise MCPError(code=INTERNAL_ERROR, message=str(tool_error(exc))) from None
