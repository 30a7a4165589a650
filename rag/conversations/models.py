"""The tables (SQLAlchemy 2.0 ORM): conversations, their turns, and feedback on answers.

Times are epoch seconds (floats): the same on SQLite and PostgreSQL, and a test can pass its own clock. The schema
is created and changed only by the migrations in ``migrations/versions`` (applied at open); a change here needs a
new revision there, or an upgraded database and these classes disagree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_updated", "owner", "updated_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # a random UUID: not guessable, not a count
    owner: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    turns: Mapped[list[TurnRow]] = relationship(back_populates="conversation", order_by="TurnRow.position",
                                                cascade="all, delete-orphan", passive_deletes=True)


class TurnRow(Base):
    """One question and its answer (or the error that took its place)."""

    __tablename__ = "turns"
    # AUTOINCREMENT: SQLite would otherwise give a deleted answer's id to the next one (migration 0003).
    __table_args__ = (UniqueConstraint("conversation_id", "position"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # Citation.to_dict() each
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)  # refused, usage, standalone question, error...
    created_at: Mapped[float] = mapped_column(Float)
    conversation: Mapped[Conversation] = relationship(back_populates="turns")


class FeedbackRow(Base):
    """A thumbs up (+1) or down (-1) on one answer, by the user who asked. It copies the question, answer, sources
    and model, so that it still says what was rated after the conversation is renamed, continued or deleted."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_rating_created", "rating", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    turn_id: Mapped[int | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"), nullable=True,
                                                unique=True)
    owner: Mapped[str] = mapped_column(String(255))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
