"""What every `rag` command shares: the consoles, the settings, the user to run as, the one-line error exit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from rag.errors import RagError
from rag.settings import Settings, settings_error, unknown_variables

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
#: Set by the app callback (rag/cli/app.py) from --verbose.
state: dict[str, Any] = {"verbose": False}


def fail(exc: BaseException) -> typer.Exit:
    from rag.llm.failures import EndpointError

    if state["verbose"]:
        err.print_exception()
    err.print(Text(f"error: {exc}", style="bold red"))
    return typer.Exit(3 if isinstance(exc, EndpointError) else 2)


def load_settings() -> Settings:
    for problem in unknown_variables(os.environ):
        err.print(Text(f"warning: {problem}; it is ignored", style="yellow"))
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: name the variable that is wrong
        err.print(Text(f"error: invalid settings (RAG_* environment or rag.toml): {settings_error(exc)}",
                       style="bold red"))
        raise typer.Exit(2) from None


Insecure = Annotated[bool, typer.Option(
    "--insecure", help="Start even where anyone who reaches the port reads every document (RAG_AUTH=none off "
                       "loopback, RAG_AUTH=proxy without RAG_AUTH_PROXY_SECRET); also RAG_ALLOW_INSECURE=true.")]


def refuse_exposure(settings: Settings, host: str, insecure: bool) -> None:
    """Exit 2 with the reason when serving on ``host`` would hand documents to anyone, unless the operator said
    it is meant (--insecure or RAG_ALLOW_INSECURE); then the reason is still printed, as a warning."""
    from rag.security.exposure import exposure_problem

    problem = exposure_problem(settings, host)
    if problem is None:
        return
    if insecure or settings.allow_insecure:
        err.print(Text(f"warning (--insecure): {problem}", style="yellow"))
        return
    err.print(Text(f"error: {problem}", style="bold red"))
    raise typer.Exit(2)


AsUser = Annotated[str | None, typer.Option(
    "--as", metavar="USER", help="Run as this user of RAG_USERS_FILE: only documents their groups may read. "
                                 "Without it the local operator sees everything.")]


def identity_for(settings: Settings, as_user: str | None):
    """The user to run as, or None: the operator at the machine, who owns the store files anyway."""
    if as_user is None:
        return None
    from rag.security.auth import identity_as
    from rag.security.users import UserDirectory

    try:
        return identity_as(UserDirectory.from_settings(settings), as_user)
    except RagError as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None


def rel(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def snippet(text: str, width: int = 240) -> str:
    from rag.generation.citations import snippet

    return snippet(text, width)


def check_rerank_option(rerank: bool | None, settings: Settings) -> None:
    if rerank and not (settings.rerank_url or settings.rerank_model):
        err.print(Text("error: --rerank needs a reranker: set RAG_RERANK_MODEL to a local cross-encoder folder or "
                       "RAG_RERANK_URL to a reranking endpoint", style="bold red"))
        raise typer.Exit(2)
