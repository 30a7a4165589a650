"""Ingestion: parse files, chunk them in embedding-model tokens, embed locally, store in Qdrant.

    from ingest import ingest
    report = ingest(["./docs"], Settings())
"""

from rag import offline as _offline

_offline.apply()

from ingest.pipeline import FileIssue, IngestReport, Progress, discover, forget, ingest  # noqa: E402

__all__ = ["FileIssue", "IngestReport", "Progress", "discover", "forget", "ingest"]
