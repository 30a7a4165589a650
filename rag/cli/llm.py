"""`rag llm install|check|serve`: the local demo model on vLLM or llama.cpp, checked and supervised."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer
from rich.text import Text

from rag.errors import RagError
from rag.cli.common import err, fail, load_settings, out, state


llm_app = typer.Typer(help="The local demo LLM (SmolLM2-135M; production uses vLLM, Ollama, llama.cpp...).",
                      no_args_is_help=True)


EngineOption = Annotated[str, typer.Option(
    "--engine", help="vllm (the default: batches concurrent chats) or llamacpp (small, one chat at a time).")]


def _engine(name: str | None):
    from rag.llm.local import DEFAULT_ENGINE, get_engine

    try:
        return get_engine(name or DEFAULT_ENGINE)
    except RagError as exc:
        raise fail(exc) from None


def _say(line: str) -> None:
    err.print(Text(line, style="dim"))


@llm_app.command("install")
def llm_install(engine: EngineOption = "", rebuild: Annotated[bool, typer.Option(
        help="Build/install again even if present (a broken or non-portable install).")] = False) -> None:
    """Install an engine for the demo model (vLLM: its own venv, ~3 min once; llama.cpp: a portable build,
    ~9 min once), then check it with one tiny completion."""
    from rag.llm.local import selfcheck

    eng = _engine(engine)
    try:
        eng.install(_say, force=rebuild)
        result = selfcheck.run(eng, say=_say) if rebuild else selfcheck.run_once(eng, say=_say)
    except RagError as exc:
        raise fail(exc) from None
    if result is None:
        out.print(f"{eng.title}: installed (checked on this CPU before)")
    else:
        out.print(f"{eng.title}: installed and checked (started in {result.start_s:.1f} s, first completion in "
                  f"{result.completion_s:.2f} s)")


@llm_app.command("check")
def llm_check(engine: EngineOption = "") -> None:
    """Start the engine on a free port, ask for one tiny completion, stop it: exit 1 with the reason if the
    server cannot start or crashes (a build that does not suit this CPU)."""
    from rag.llm.local import selfcheck

    eng = _engine(engine)
    if not eng.installed():
        raise fail(RagError(f"{eng.title} is not installed: rag llm install --engine {eng.name}"))
    try:
        result = selfcheck.run(eng)
    except RagError as exc:
        raise fail(exc) from None
    out.print(f"{eng.title}: ok (started in {result.start_s:.1f} s, first completion in {result.completion_s:.2f} s)")


@llm_app.command("serve")
def llm_serve(
    engine: EngineOption = "",
    port: Annotated[int, typer.Option(help="Port of the OpenAI-compatible API.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 = every interface).")] = "127.0.0.1",
    ctx: Annotated[int, typer.Option("--ctx", help="Context window in tokens (the model is trained on 8192).")] = 2048,
    threads: Annotated[int | None, typer.Option(help="CPU threads (llama.cpp; default: up to 2).")] = None,
    max_restarts: Annotated[int, typer.Option(help="Restarts after a crash within 10 minutes before giving "
                                                   "up (0 = never restart).")] = 5,
) -> None:
    """Serve the packaged tiny demo model (SmolLM2-135M) until Ctrl-C: an OpenAI-compatible API on --port,
    restarted if it crashes. It answers weakly; for real use point RAG_LLM_BASE_URL at vLLM, Ollama or
    llama.cpp with a real model. Installs the engine on first use."""
    from rag.llm.local import MODEL_ALIAS
    from rag.llm.local.supervisor import Supervisor, status_path

    eng = _engine(engine)
    settings = load_settings()
    log = sys.stderr if state["verbose"] else None
    # die_with_parent: started (and restarted) from this main thread, the server gets SIGTERM even if we are
    # SIGKILLed; it runs in a session of its own, so nothing else would stop it.
    supervisor = Supervisor(lambda: eng.server(host=host, port=port, n_ctx=ctx, threads=threads, log=log,
                                               die_with_parent=True),
                            engine=eng.name, start_timeout=eng.start_timeout, max_restarts=max_restarts,
                            status_path=status_path(settings.data_dir), say=_say)
    # A supervisor (scripts/demo.sh, systemd) stops us with SIGTERM, a closed terminal with SIGHUP: stop the
    # server too, never orphan it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        if not eng.installed():
            eng.install(_say)
        _say(f"starting the demo LLM (SmolLM2-135M, a tiny model for demos and tests) with {eng.title} on "
             f"port {port}…")
        server = supervisor.start()
    except RagError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        supervisor.stop()
        raise typer.Exit(130) from None
    out.print(f"demo LLM ready: [bold]{server.base_url}[/] (model {MODEL_ALIAS}, {eng.title}, context {ctx} "
              f"tokens). Use it with RAG_LLM_BASE_URL={server.base_url} — Ctrl-C stops it.")
    sys.stdout.flush()
    try:
        code = supervisor.run()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt
