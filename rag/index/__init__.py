"""The index: local embeddings, BM25 sparse vectors, and the Qdrant store backends (embedded
qdrant-edge, or a Qdrant server through qdrant-client)."""
