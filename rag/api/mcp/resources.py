"""Every indexed document the caller may read as a resource (``rag://document/<path>``, its text as indexed).

MCPServer's resource manager holds one static list for everyone; the documents a caller sees depend on who they
are, so both of its handlers are replaced here (they receive the request, hence the caller's headers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams
from mcp.types import ReadResourceResult, TextResourceContents
from mcp.types import Resource as MCPResource

from rag.api.mcp.calls import for_resource
from rag.api.mcp.schemas import ECHO_CHARS, NOT_READABLE, path_of_uri, resource_uri, shown, sorted_chunks
from rag.security.auth import Identity

if TYPE_CHECKING:
    from rag.api.mcp.server import Pool


class DocumentResources:
    """Mixed into the server before MCPServer, so that these handlers are the ones it wires up; uses the
    server's ``pool``, ``identify`` and ``record``."""

    pool: Pool

    if TYPE_CHECKING:  # provided by the server class this is mixed into

        def identify(self, headers: Mapping[str, str] | None) -> Identity: ...

        def record(self, event: str, user: Identity, tool: str, **fields: Any) -> None: ...

    def _resource_caller(self, ctx) -> Identity:
        try:
            return self.identify(_headers(ctx))
        except ToolError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None

    async def _handle_list_resources(self, ctx, params: PaginatedRequestParams | None) -> ListResourcesResult:
        user = self._resource_caller(ctx)

        def run() -> list[MCPResource]:
            out = []
            for n in self.pool.names:
                rag = self.pool.get(n)
                for p in sorted(rag.store.documents()):
                    if not rag.readable(p, user=user):
                        continue
                    rec = rag.store.get_document(p)
                    out.append(MCPResource(uri=resource_uri(p), name=p.rsplit("/", 1)[-1], mime_type="text/plain",
                                           title=(rec.title if rec and rec.title else None),
                                           description=f"Indexed text of {p} (collection {n})", size=None))
            return out

        resources = await for_resource(run)
        self.record("mcp_tool", user, "resources/list")
        return ListResourcesResult(resources=resources)

    async def _handle_read_resource(self, ctx, params: ReadResourceRequestParams) -> ReadResourceResult:
        user = self._resource_caller(ctx)
        uri = str(params.uri)
        path = path_of_uri(uri)

        def run() -> str | None:
            if path is None:
                return None
            for n in self.pool.names:
                rag = self.pool.get(n)
                if rag.readable(path, user=user):
                    chunks = sorted_chunks(path, rag.store.chunks_of(path, groups_any=user.groups_any))
                    return "\n\n".join(c.text for c in chunks)
            return None

        text = await for_resource(run)
        self.record("download", user, "resources/read", cited=[path] if text is not None and path else [],
                    extra={"found": text is not None})
        if text is None:
            # The same words whether the document exists or not: no probing for names.
            raise MCPError(code=INVALID_PARAMS, message=f"{shown(uri)}: {NOT_READABLE}; resources/list shows "
                                                        "what you may read", data={"uri": uri[:ECHO_CHARS]})
        return ReadResourceResult(contents=[TextResourceContents(uri=uri, text=text, mime_type="text/plain")])


def _headers(ctx) -> Mapping[str, str] | None:
    return getattr(getattr(ctx, "request", None), "headers", None)
