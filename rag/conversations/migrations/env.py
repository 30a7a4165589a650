"""Alembic's environment for the conversations database. Run programmatically by rag/conversations/store.py
(``migrate``), which passes the open connection in ``config.attributes["connection"]``; it is never run from an
alembic.ini, so no URL (and no password) is ever written to a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from rag.conversations.models import Base

#: Any fixed number: the key of PostgreSQL's advisory lock that lets one replica migrate while the others wait.
_MIGRATION_LOCK = 0x7261_6763


def _run() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # replicas starting together: one migrates, the rest wait
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        context.run_migrations()


_run()
