"""Each user's conversations and their feedback, kept in a database: SQLite in the data dir by default, or
the PostgreSQL server of RAG_DATABASE_URL that several UI or API replicas share.

Every call names the owner (the signed-in user's name) and reads or changes only that owner's rows: an id alone
is never enough, and someone else's id gets the same "not found" as an id that does not exist. Only the
operator's views (``export``, ``worst_rated``) read across users.

Opening the store upgrades the schema to the newest migration (Alembic; rows are kept) and deletes what is older
than RAG_CHAT_RETENTION_DAYS; a long-lived store repeats that purge once a day, checked on use.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from rag.conversations.models import Conversation, FeedbackRow, TurnRow
from rag.errors import RagError
from rag.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
DAY_S = 86400.0
TITLE_CHARS = 80


class ConversationNotFound(RagError):
    """No such conversation or turn for this user (it may belong to someone else: the message does not say)."""


class ConversationStoreError(RagError):
    """The conversations database cannot be opened or written."""


@dataclass(frozen=True)
class ConversationInfo:
    id: str
    title: str
    created_at: float
    updated_at: float
    turns: int


@dataclass(frozen=True)
class StoredTurn:
    id: int
    position: int
    question: str
    answer: str
    sources: list[dict[str, Any]]
    model: str | None
    timings: dict[str, Any]
    details: dict[str, Any]
    created_at: float
    rating: int | None = None  # the owner's feedback, if any
    comment: str = ""


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    user: str
    rating: int
    comment: str
    question: str
    answer: str
    sources: list[dict[str, Any]]
    model: str | None
    created_at: float
    turn_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "rating": self.rating, "comment": self.comment,
                "question": self.question, "answer": self.answer, "sources": self.sources, "model": self.model,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at)),
                "turn_id": self.turn_id}


@dataclass(frozen=True)
class PurgeReport:
    conversations: int = 0
    feedback: int = 0


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return f"sqlite:///{settings.data_dir.resolve() / 'conversations.sqlite3'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite: without them deleting a conversation would leave its turns.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (other tabs, `rag feedback export`) do not block a writer
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default); existing rows are kept."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


@dataclass
class _Purge:
    retention_s: float
    last: float = field(default=float("-inf"))


class ConversationStore:
    """The typed API over the tables; thread-safe (one session per call, the engine's connection pool)."""

    def __init__(self, engine: Engine, *, retention_days: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._purge = _Purge(retention_days * DAY_S)

    @classmethod
    def open(cls, settings: Settings, *, clock: Callable[[], float] = time.time,
             url: str | None = None) -> ConversationStore:
        """Open (creating or upgrading it) the database of ``settings``; purge what retention says is too old."""
        url = url or database_url(settings)
        try:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = make_engine(url)
            migrate(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise ConversationStoreError(
                f"The conversations database cannot be opened ({type(exc).__name__}: {_short(exc)}). Check "
                "RAG_DATABASE_URL (the server, its user and password) or that the data dir is writable.") from exc
        store = cls(engine, retention_days=settings.chat_retention_days, clock=clock)
        store.purge_if_due()
        return store

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise ConversationStoreError(
                f"The conversations database failed ({type(exc).__name__}: {_short(exc)}); try again, and if it "
                "persists check the database server or the data dir's disk.") from exc

    def _own(self, session: Session, owner: str, conversation_id: str) -> Conversation:
        conv = session.scalar(select(Conversation).where(Conversation.id == conversation_id,
                                                         Conversation.owner == owner))
        if conv is None:
            raise ConversationNotFound("No such conversation: it was deleted, or it is not yours.")
        return conv

    # --- one user's conversations -----------------------------------------------------------------------------

    def conversations(self, owner: str) -> list[ConversationInfo]:
        """The owner's conversations, the most recently used first."""
        self.purge_if_due()
        counts = (select(TurnRow.conversation_id, func.count(TurnRow.id).label("n"))
                  .group_by(TurnRow.conversation_id).subquery())
        query = (select(Conversation, func.coalesce(counts.c.n, 0))
                 .outerjoin(counts, counts.c.conversation_id == Conversation.id)
                 .where(Conversation.owner == owner)
                 .order_by(Conversation.updated_at.desc(), Conversation.created_at.desc()))
        with self._session() as s:
            return [ConversationInfo(c.id, c.title, c.created_at, c.updated_at, n) for c, n in s.execute(query)]

    def create(self, owner: str, title: str) -> ConversationInfo:
        now = self.clock()
        conv = Conversation(id=str(uuid.uuid4()), owner=owner, title=_title(title), created_at=now, updated_at=now)
        with self._session() as s:
            s.add(conv)
        return ConversationInfo(conv.id, conv.title, now, now, 0)

    def rename(self, owner: str, conversation_id: str, title: str) -> None:
        with self._session() as s:
            conv = self._own(s, owner, conversation_id)
            conv.title = _title(title)
            conv.updated_at = self.clock()

    def delete(self, owner: str, conversation_id: str) -> None:
        with self._session() as s:
            s.delete(self._own(s, owner, conversation_id))

    def turns(self, owner: str, conversation_id: str) -> list[StoredTurn]:
        """The conversation's turns in order, each with the owner's rating of it."""
        with self._session() as s:
            conv = self._own(s, owner, conversation_id)
            ratings = {f.turn_id: f for f in s.scalars(select(FeedbackRow).where(
                FeedbackRow.turn_id.in_([t.id for t in conv.turns]), FeedbackRow.owner == owner))}
            return [_stored(t, ratings.get(t.id)) for t in conv.turns]

    def append_turn(self, owner: str, conversation_id: str, *, question: str, answer: str,
                    sources: list[dict[str, Any]] | None = None, model: str | None = None,
                    timings: dict[str, Any] | None = None, details: dict[str, Any] | None = None) -> StoredTurn:
        now = self.clock()
        with self._session() as s:
            conv = self._own(s, owner, conversation_id)
            position = len(conv.turns)
            row = TurnRow(position=position, question=question, answer=answer, sources=sources or [],
                          model=model, timings=_jsonable(timings or {}), details=_jsonable(details or {}),
                          created_at=now)
            conv.turns.append(row)
            conv.updated_at = now
            s.flush()
            return _stored(row, None)

    # --- feedback ---------------------------------------------------------------------------------------------

    def add_feedback(self, owner: str, turn_id: int, rating: int, comment: str = "") -> FeedbackRecord:
        """Rate one of the owner's answers (+1 or -1), with an optional comment; rating it again replaces it."""
        if rating not in (1, -1):
            raise ValueError("rating is +1 (thumbs up) or -1 (thumbs down)")
        from rag.ops import metrics

        now = self.clock()
        with self._session() as s:
            turn = s.scalar(select(TurnRow).join(Conversation).where(TurnRow.id == turn_id,
                                                                     Conversation.owner == owner))
            if turn is None:
                raise ConversationNotFound("No such answer: its conversation was deleted, or it is not yours.")
            row = s.scalar(select(FeedbackRow).where(FeedbackRow.turn_id == turn_id))
            if row is None:
                row = FeedbackRow(turn_id=turn_id, owner=owner)
                s.add(row)
            row.rating, row.comment, row.created_at = rating, comment.strip(), now
            row.question, row.answer, row.sources, row.model = turn.question, turn.answer, turn.sources, turn.model
            s.flush()
            record = _record(row)
        metrics.FEEDBACK.labels("up" if rating > 0 else "down").inc()
        return record

    # --- the operator's views (across users) ------------------------------------------------------------------

    def export(self) -> list[FeedbackRecord]:
        """Every feedback record, oldest first."""
        with self._session() as s:
            return [_record(r) for r in s.scalars(select(FeedbackRow).order_by(FeedbackRow.created_at,
                                                                                 FeedbackRow.id))]

    def worst_rated(self, limit: int = 20) -> list[FeedbackRecord]:
        """Thumbs-down answers, the newest first: what to fix in the documents (or the prompt)."""
        query = (select(FeedbackRow).where(FeedbackRow.rating < 0)
                 .order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc()).limit(limit))
        with self._session() as s:
            return [_record(r) for r in s.scalars(query)]

    # --- retention --------------------------------------------------------------------------------------------

    def purge_older_than(self, cutoff: float) -> PurgeReport:
        """Delete conversations last used before ``cutoff`` (epoch seconds), their turns, and older feedback."""
        with self._session() as s:
            convs = s.execute(delete(Conversation).where(Conversation.updated_at < cutoff))
            fb = s.execute(delete(FeedbackRow).where(FeedbackRow.created_at < cutoff))
            return PurgeReport(getattr(convs, "rowcount", 0) or 0, getattr(fb, "rowcount", 0) or 0)

    def purge_if_due(self) -> PurgeReport | None:
        """Apply the retention period, at most once a day (by this store's clock)."""
        now = self.clock()
        if not self._purge.retention_s or now - self._purge.last < DAY_S:
            return None
        self._purge.last = now
        return self.purge_older_than(now - self._purge.retention_s)


def _title(title: str) -> str:
    title = " ".join(title.split())
    return (title[:TITLE_CHARS - 1] + "…" if len(title) > TITLE_CHARS else title) or "New chat"


def _short(exc: BaseException) -> str:
    """The first line of a driver error, without the URL (it may carry the database password)."""
    msg = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else ""
    return msg[:300]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, default=str))


def _stored(t: TurnRow, fb: FeedbackRow | None) -> StoredTurn:
    return StoredTurn(t.id, t.position, t.question, t.answer, list(t.sources), t.model, dict(t.timings),
                      dict(t.details), t.created_at, fb.rating if fb else None, fb.comment if fb else "")


def _record(r: FeedbackRow) -> FeedbackRecord:
    return FeedbackRecord(r.id, r.owner, r.rating, r.comment, r.question, r.answer, list(r.sources), r.model,
                          r.created_at, r.turn_id)
