"""`rag serve` (the OpenAI-compatible API), `rag mcp` (the documents as tools for agents) and `rag ui` (the chat
in the browser)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from rag.cli.common import AsUser, Insecure, err, fail, identity_for, load_settings, out, refuse_exposure
from rag.errors import RagError


def serve(
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 serves the network.")] = "127.0.0.1",
    mcp: Annotated[bool, typer.Option("--mcp", help="Also serve the MCP server (rag mcp) at /mcp, with the same "
                                                    "keys.")] = False,
    insecure: Insecure = False,
) -> None:
    """The RAG as an OpenAI-compatible API: /v1/chat/completions (streaming or not; the model names the
    collection), /v1/models, /healthz, /metrics (Prometheus). Keys: rag users key NAME."""
    import uvicorn

    from rag.api.app import create_app

    settings = load_settings()
    refuse_exposure(settings, host, insecure)
    names = settings.api_collections or [settings.collection]
    err.print(Text(f"OpenAI-compatible API on http://{host}:{port}/v1 · models: {', '.join(names)} · "
                   f"auth: {settings.auth}" + (f" · MCP on http://{host}:{port}/mcp" if mcp else ""), style="bold"))
    uvicorn.run(create_app(settings, mcp=mcp, host=host), host=host, port=port, log_level="warning", access_log=False)


def mcp(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP (shared use; each request "
                                                      "identified by its API key) instead of stdio.")] = False,
    port: Annotated[int, typer.Option(help="TCP port (with --http).")] = 8765,
    host: Annotated[str, typer.Option(help="Interface (with --http); 0.0.0.0 serves the network.")] = "127.0.0.1",
    as_user: AsUser = None,
    insecure: Insecure = False,
) -> None:
    """The documents as tools for agents (Model Context Protocol): search, ask, get_source, list_collections,
    and the readable documents as resources. stdio by default (a desktop client or IDE starts `rag mcp`);
    --http for shared use at http://HOST:PORT/mcp with Authorization: Bearer <key> (rag users key NAME)."""
    from rag.api.mcp import create_server, serve_http
    from rag.security.auth import local_identity

    settings = load_settings()
    if http and as_user is not None:
        err.print(Text("error: --as is for stdio; over --http each request is the user of its API key",
                       style="bold red"))
        raise typer.Exit(2)
    if http:
        refuse_exposure(settings, host, insecure)
    # stdio: whoever starts the process owns the store files anyway; --as narrows what the agent sees.
    user = None if http else (identity_for(settings, as_user) or local_identity())
    try:
        server = create_server(settings, user=user)
    except RagError as exc:
        raise fail(exc) from None
    if http:
        names = settings.api_collections or [settings.collection]
        err.print(Text(f"MCP server on http://{host}:{port}/mcp · collections: {', '.join(names)} · "
                       f"auth: {settings.auth}", style="bold"))
        serve_http(server, host=host, port=port)
    else:
        # stdout is the protocol channel: nothing else may be printed there.
        server.run("stdio")


def ui(
    port: Annotated[int, typer.Option(help="Port of the web UI.")] = 8501,
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 lets colleagues connect.")] = "127.0.0.1",
    insecure: Insecure = False,
) -> None:
    """Start the chat UI in the browser (Streamlit) over the configured index and LLM; Ctrl-C stops it."""
    import os

    import ui as ui_pkg

    settings = load_settings()
    refuse_exposure(settings, host, insecure)
    app_path = Path(ui_pkg.__file__).parent / "app.py"
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    llms = ", ".join(e.base_url for e in settings.llm_endpoint_list())
    out.print(f"onprem-rag UI: [bold]http://{shown}:{port}[/] (LLM {llms}, "
              f"index {settings.qdrant_url or settings.store_dir}) — Ctrl-C stops it.")
    sys.stdout.flush()
    # No telemetry, no file watching, no tracebacks in the browser (they go to this terminal).
    args = [sys.executable, "-m", "streamlit", "run", str(app_path),
            "--server.port", str(port), "--server.address", host, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.maxUploadSize", str(max(1, int(settings.max_file_mb))),
            "--client.showErrorDetails", "none", "--client.toolbarMode", "minimal"]
    # exec: Ctrl-C and the demo script's kill reach Streamlit itself.
    os.execv(sys.executable, args)
