"""Vector stores behind one interface: embedded qdrant-edge (default) or a Qdrant server (``RAG_QDRANT_URL``)."""

from __future__ import annotations

from rag.settings import Settings
from rag.index.store.base import (
    ChunkPoint,
    DocumentRecord,
    Hit,
    IndexOptions,
    IndexState,
    SearchFilter,
    Store,
    WriterRecord,
    chunk_id,
    document_id,
)

__all__ = [
    "ChunkPoint",
    "DocumentRecord",
    "Hit",
    "IndexOptions",
    "IndexState",
    "SearchFilter",
    "Store",
    "WriterRecord",
    "chunk_id",
    "document_id",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """Open (not create) the configured store; call ``ensure_ready`` before writing."""
    index = IndexOptions.from_settings(settings)
    if settings.qdrant_url:
        from rag.index.store.server import QdrantServerStore

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantServerStore(settings.collection, url=settings.qdrant_url, api_key=key,
                                 timeout=settings.qdrant_timeout, index=index)
    from rag.index.store.edge import EdgeStore
    from rag.security.files import private_dir

    private_dir(settings.data_dir)  # the store keeps every chunk's text in plain files below it
    return EdgeStore(settings.store_dir, index)
