"""What an HTTP server said when it refused a request, in one line: for error messages that quote the server."""

from __future__ import annotations

import httpx


def server_message(resp: httpx.Response) -> str:
    """The server's own error text: TEI ``{"error": str}``, vLLM ``{"error": {"message"}}`` or ``{"message"}``,
    FastAPI ``{"detail"}``, or a plain body."""
    try:
        data = resp.json()
    except ValueError:
        return (resp.text.strip().splitlines() or [resp.reason_phrase])[0][:300]
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict):
            inner = inner.get("message") or inner.get("detail") or inner
        if isinstance(inner, str):
            return inner.splitlines()[0][:300] if inner.strip() else resp.reason_phrase
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])[:300]
    return str(data)[:300]
