"""`rag feedback …`: the users' ratings of answers, for the operator (a thin shell over rag.conversations).

Reads the conversations database of the settings (RAG_DATABASE_URL, or SQLite in the data dir) across users:
it is the operator's view, like the database files themselves.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rag.errors import RagError

feedback_app = typer.Typer(help="Users' thumbs up/down on answers: export them, list the worst-rated.",
                           no_args_is_help=True)


def _store():
    from rag.cli.common import fail, load_settings
    from rag.conversations import ConversationStore

    try:
        return ConversationStore.open(load_settings())
    except RagError as exc:
        raise fail(exc) from None


@feedback_app.command("export")
def export(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of the records (question, answer, sources, "
                                                         "model, rating, comment, user, time) on stdout.")] = False,
) -> None:
    """Every feedback record, oldest first."""
    from rag.cli.common import out

    store = _store()
    try:
        records = store.export()
    finally:
        store.close()
    if as_json:
        print(json.dumps([r.to_dict() for r in records], ensure_ascii=False, indent=2))
        return
    table = Table("when", "user", "rating", "question", "comment", "model")
    for r in records:
        table.add_row(time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)), r.user,
                      "up" if r.rating > 0 else "down", r.question, r.comment, r.model or "")
    out.print(table)
    out.print(f"{len(records)} records; --json for the full records with their sources")


@feedback_app.command("worst")
def worst(limit: Annotated[int, typer.Option(help="How many answers to list.")] = 20) -> None:
    """The worst-rated answers, newest first, with the sources they were given: what to fix in the documents."""
    from rag.cli.common import out

    store = _store()
    try:
        records = store.worst_rated(limit)
    finally:
        store.close()
    if not records:
        out.print("No answer has been rated down.")
    for r in records:
        out.print(f"[bold]{escape(r.question)}[/bold]  ({time.strftime('%Y-%m-%d', time.localtime(r.created_at))}, "
                  f"{escape(r.model or 'model unknown')})", highlight=False, markup=True)
        if r.comment:
            out.print(f"  comment: {r.comment}", markup=False)
        for s in r.sources:
            page = f", p. {s['page']}" if s.get("page") else ""
            out.print(f"  [{s.get('n', '?')}] {s.get('path', '?')}{page}", markup=False, highlight=False)
