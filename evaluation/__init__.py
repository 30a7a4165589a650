"""Measuring the product: retrieval quality on BEIR datasets (``rag eval retrieval``) and answer quality on a
question file (``rag eval answers``). Sits above ``rag`` and ``ingest``, like the shells: it runs the real
pipeline, retriever and chain."""

from rag import offline as _offline

_offline.apply()
