"""``/healthz`` (the store and the LLM of the first collection) and ``/metrics`` (Prometheus): no key needed, for
load balancers and scrapers. Neither waits behind the chats: /metrics runs on the event loop, /healthz on
threads of its own."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from rag.api.collections import ApiError, Collections
from rag.errors import RagError
from rag.ops import metrics

log = logging.getLogger(__name__)


def add_routes(app: FastAPI, pool: Collections) -> None:
    # Threads of their own: sync routes and MCP tools share anyio's default pool of 40, which busy chats can fill.
    limiter = anyio.CapacityLimiter(2)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return await anyio.to_thread.run_sync(check, limiter=limiter)

    def check() -> JSONResponse:
        checks: dict[str, Any] = {}
        ok = True
        try:
            rag = pool.get(pool.names[0])
            # Reachable is all a probe needs to know. No counts: this answers without a key, and listing the
            # documents on every probe would also cost a scan of the index's records.
            rag.store.meta()
            checks["store"] = {"ok": True}
            info = rag.endpoint.info
            checks["llm"] = {"ok": info.healthy, "model": info.model, "error": info.error}
            ok = info.healthy
        except (RagError, ApiError) as exc:
            checks["store"] = {"ok": False, "error": str(exc)}
            ok = False
        except Exception as exc:  # a Qdrant server that went away after start: the client's own errors
            log.warning("/healthz: the index does not answer: %r", exc)
            checks["store"] = {"ok": False, "error": f"the index does not answer ({exc.__class__.__name__}); "
                                                     "see the server's log"}
            ok = False
        return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_route() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
