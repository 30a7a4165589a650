"""`rag serve`: the OpenAI-compatible HTTP API, a shell over the library."""
