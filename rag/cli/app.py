"""`rag` command line: a thin shell over the library (rag.*, ingest.*), one module per command group.

Exit codes: 0 success; 1 some files failed to ingest (the others were ingested); 2 nothing could be done
(bad settings, store locked or unreachable, usage error); 3 the LLM endpoint failed (down, timeout, HTTP error,
wrong model, prompt too long); 130 interrupted.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from rag import offline
from rag.cli import answers, documents, evaluate, evidence, llm, servers, sizing
from rag.cli.common import state
from rag.cli.feedback import feedback_app
from rag.cli.users import users_app

offline.apply()

app = typer.Typer(
    help="onprem-rag: chat with your company's documents; every byte stays on your machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details (and tracebacks) to stderr.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "filelock"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    state["verbose"] = verbose


# In the order `rag --help` lists them.
for command in (documents.ingest, documents.access, documents.forget, answers.search, documents.status,
                documents.build_index, answers.ask, answers.chat, evidence.preview):
    app.command()(command)
app.add_typer(evaluate.eval_app, name="eval")
app.command()(sizing.sizing)
app.add_typer(users_app, name="users")
app.add_typer(feedback_app, name="feedback")
app.command()(servers.serve)
app.command()(servers.mcp)
app.add_typer(llm.llm_app, name="llm")
app.command()(servers.ui)
