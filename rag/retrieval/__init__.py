"""Retrieval: the store searched for a question (dense, sparse, hybrid; the permission filter inside the
query), optional reranking, and the LangChain retriever."""
