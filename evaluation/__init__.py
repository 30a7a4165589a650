"""Measuring the product: retrieval quality on BEIR datasets (``rag eval retrieval``). Sits above ``rag`` and
``ingest``, like the shells: it runs the real pipeline and retriever."""

from rag import offline as _offline

_offline.apply()
