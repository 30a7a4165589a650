"""What outlives one run of the page: per server process, the open RAG and the sign-in machinery (shared by every
browser session, so they hold nothing of any one user); per browser tab, the conversation's turns (saved per user by ui/conversations.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from rag.conversations import ConversationStore
from rag.errors import RagError
from rag.generation.chain import RAG, Answer
from rag.ops.status import index_info
from rag.security.audit import AuditLog
from rag.security.auth import Identity
from rag.security.users import UserDirectory
from rag.settings import Settings
from ui import signin
from ui.remember import SignIns

log = logging.getLogger("rag.ui")

#: How long the sidebar's document counts may be stale (reading them scrolls the registry).
INDEX_INFO_TTL = 30.0


@dataclass
class Shared:
    """One per server process: the RAG (open store, embedder, endpoint) and what guards writes to the store."""

    rag: RAG
    ingest_lock: threading.Lock = field(default_factory=threading.Lock)
    _index: dict[str, Any] | None = None
    _docs: dict[str, tuple[frozenset[str], int]] | None = None  # path -> (groups, chunks): no user's data
    _index_at: float = 0.0

    def index(self, *, fresh: bool = False) -> dict[str, Any]:
        if fresh or self._index is None or time.monotonic() - self._index_at > INDEX_INFO_TTL:
            self._index = index_info(self.rag.store, self.rag.settings)
            self._docs = {p: (frozenset(r.groups), r.chunks) for p, r in self.rag.store.documents().items()}
            self._index_at = time.monotonic()
        return self._index

    def readable_counts(self, identity: Identity, *, fresh: bool = False) -> tuple[int, int]:
        """(documents, chunks) that ``identity`` may read: the whole index only for the local user."""
        idx = self.index(fresh=fresh)
        if identity.groups_any is None:
            return idx["documents"], idx["chunks"]
        mine = set(identity.groups_any)
        readable = [chunks for groups, chunks in (self._docs or {}).values() if groups & mine]
        return len(readable), sum(readable)


@dataclass
class Auth:
    """One per server process: the users file, the audit log and the login throttle (no user's data)."""

    directory: UserDirectory
    audit: AuditLog | None
    throttle: signin.LoginThrottle
    sign_ins: SignIns | None = None  # RAG_AUTH=password with RAG_UI_STAY_SIGNED_IN: what a reload resumes

    def record(self, event: str, user: str | None, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(event, user=user, **fields)
        except RagError as exc:
            log.error("audit log: %s", exc)


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    content: str
    answer: Answer | None = None
    error: str | None = None
    threshold: float | None = None  # the relevance threshold the answer was retrieved with
    turn_id: int | None = None  # its row in the conversations database, once saved
    rating: int | None = None  # the user's thumbs up (1) or down (-1)
    comment: str = ""


def settings_key(settings: Settings) -> str:
    values = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
              for k, v in settings.model_dump().items()}
    return hashlib.sha256(json.dumps(values, default=str, sort_keys=True).encode()).hexdigest()


def _release(shared: Shared) -> None:
    shared.rag.close()


# One entry: the embedded store admits one opener per process, so new settings must release the old store first.
@st.cache_resource(show_spinner="Opening the index and loading the embedding model…", max_entries=1,
                   on_release=_release)
def shared_for(key: str, _settings: Settings) -> Shared:
    return Shared(RAG.from_settings(_settings))


def _close_conversations(store: ConversationStore) -> None:
    store.close()


@st.cache_resource(max_entries=1, on_release=_close_conversations)
def conversations_for(key: str, _settings: Settings) -> ConversationStore:
    """The conversations database (rag.conversations), opened (and migrated, and purged) once per process."""
    return ConversationStore.open(_settings)


@st.cache_resource(max_entries=4)
def auth_for(key: str, _settings: Settings) -> Auth:
    remembered = _settings.auth == "password" and _settings.ui_stay_signed_in
    return Auth(UserDirectory.from_settings(_settings), AuditLog.from_settings(_settings), signin.LoginThrottle(),
                SignIns(_settings.ui_session_idle_minutes * 60) if remembered else None)
