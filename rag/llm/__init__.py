"""The LLM side: OpenAI-compatible endpoints (discovery, exact token counting), several endpoints as one
pool with failover, and the local demo model's engines."""
