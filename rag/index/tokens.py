"""Token counts and character offsets from a Hugging Face tokenizer, shared by the embedders that chunk with one.

Chunking cuts at token boundaries (offsets) and checks limits (counts), from the ingest's chunking thread while
another thread embeds or answers: the fast tokenizers are not safe to call from two threads at once ("Already
borrowed"), hence one lock per tokenizer.
"""

from __future__ import annotations

import threading
from typing import Any


class TokenCounter:
    """``token_offsets`` and ``count_tokens`` of the Embedder protocol over one tokenizer, no special tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        if not text:
            return []
        with self._lock:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def token_ids(self, text: str) -> list[int]:
        with self._lock:
            return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.token_ids(text)) if text else 0
