"""A deleted answer's id is never given to a new one (SQLite: AUTOINCREMENT on turns).

Without it SQLite handed the highest free id out again: a tab still showing an answer of a conversation deleted
in another tab then had two answers with one id, and its page failed (two thumbs buttons with one key), or a
thumbs click on the old answer rated the new one. PostgreSQL's sequences never reuse an id: nothing to do there.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # The table is rebuilt. With foreign keys on, dropping the old one sets every feedback's turn_id to NULL
    # (ON DELETE SET NULL): the links are put back afterwards, to the same ids.
    links = bind.execute(sa.text("SELECT id, turn_id FROM feedback WHERE turn_id IS NOT NULL")).all()
    with op.batch_alter_table("turns", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass
    for feedback_id, turn_id in links:
        bind.execute(sa.text("UPDATE feedback SET turn_id = :t WHERE id = :f"), {"t": turn_id, "f": feedback_id})


def downgrade() -> None:
    pass  # ids that are never reused break nothing that expected them to be
