"""Each user's saved conversations and the feedback on answers (rag/conversations/store.py), in a database whose
schema is kept by Alembic migrations (migrations/versions; applied when the store opens)."""

from rag.conversations.store import (
    ConversationInfo,
    ConversationNotFound,
    ConversationStore,
    ConversationStoreError,
    FeedbackRecord,
    PurgeReport,
    StoredTurn,
)

__all__ = ["ConversationInfo", "ConversationNotFound", "ConversationStore", "ConversationStoreError",
           "FeedbackRecord", "PurgeReport", "StoredTurn"]
