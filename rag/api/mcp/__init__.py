"""`rag mcp`: the documents as tools for agents, over the Model Context Protocol (the official ``mcp`` SDK).

Tools (tools.py): ``search`` (passages, no LLM), ``ask`` (a cited answer, or a refusal), ``get_source`` (a passage
and its neighbours by the id ``search``/``ask`` return) and ``list_collections``; every indexed document the caller
may read is also a resource (resources.py: ``rag://document/<path>``, its text as indexed).

Who the caller is decides everything they get back, exactly as in ``rag serve`` (server.py): over streamable HTTP
the API key of a user of ``RAG_USERS_FILE`` (``Authorization: Bearer rag_…``, checked on every request, not once
per session, so a revoked key stops working at once; a session belongs to the user who opened it, and is unknown
to anyone else's key), and their groups filter retrieval inside the store query;
over stdio the identity fixed at start (``rag mcp --as USER``, or the operator, who sees everything).
``RAG_AUTH=none`` serves everything to everyone, as the API does. Every tool call and resource read is in the
audit log with ``"via": "mcp"`` in ``extra``.

Failures a model can do something about (LLM down, nothing found, not allowed, unknown collection) come back as
tool errors (``isError``) with a message saying what to try next (calls.py); a refusal of ``ask`` is a normal
result (``refused: true``), since "the documents do not say" is an answer.
"""

from rag.api.mcp.schemas import parse_passage_id, passage_id, path_of_uri, resource_uri
from rag.api.mcp.server import ApiKeyGuard, Pool, RagMCP, create_server, identify_headers, serve_http

__all__ = ["ApiKeyGuard", "Pool", "RagMCP", "create_server", "identify_headers", "parse_passage_id", "passage_id",
           "path_of_uri", "resource_uri", "serve_http"]
