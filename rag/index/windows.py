"""Window vectors: a long chunk also embedded in overlapping parts, so it can be found by its best part.

all-MiniLM-L6-v2 was trained on inputs of at most 128 tokens and embeds up to 256, the chunk size. A chunk's
vector averages everything it says; a question about one of its sentences matches that sentence's window better.
Chunks keep their size (BM25 and the LLM's context want whole passages); the windows are extra vectors of the
same point, which Qdrant stores as a multivector and scores by its best member (MAX_SIM). Measured on SciFact
train (bench/windows.py, bench/README.md): ranking by the mean of the chunk's cosine and its best window's
raised dense nDCG@10 by 0.02 and hybrid by 0.005-0.008, for 1.5x the ingest time. Pooling the windows from the
chunk's own forward pass instead (late chunking, no second pass) gained nothing in hybrid: a window that has attended
to the whole chunk stays close to the chunk's vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rag.index.embeddings import Embedder


def stride(window: int) -> int:
    """Windows start 3/4 of a window apart, so a sentence cut by one window is whole in the next."""
    return max(1, window * 3 // 4)


def cut(text: str, offsets: Sequence[tuple[int, int]], window: int) -> list[str]:
    """The windows of ``text`` given its tokens' character ``offsets``: none if it fits in one window, else
    ``window`` tokens each, ``stride(window)`` apart, the last ending at the last token."""
    spans = [o for o in offsets if o[1] > o[0]]
    return [text[spans[s][0]:spans[e - 1][1]] for s, e in positions(len(spans), window, stride(window))]


def positions(tokens: int, window: int, step: int) -> list[tuple[int, int]]:
    """The [start, end) token positions of the windows over ``tokens`` tokens: none if they fit in one window,
    else ``window`` each, ``step`` apart, the last ending at the last token."""
    if window <= 0 or tokens <= window:
        return []
    out, start = [], 0
    while True:
        end = min(start + window, tokens)
        out.append((start, end))
        if end == tokens:
            return out
        start += step


def embed_windows(embedder: Embedder, texts: Sequence[str], window: int) -> list[np.ndarray | None]:
    """Per text, its windows' unit vectors (windows x dimension), or None for a text that fits in one window.
    One embedding call for the windows of all ``texts``."""
    cuts = [cut(t, embedder.token_offsets(t), window) for t in texts]
    flat = [w for c in cuts for w in c]
    if not flat:
        return [None] * len(texts)
    vectors = embedder.embed_documents(flat)
    out: list[np.ndarray | None] = []
    at = 0
    for c in cuts:
        out.append(vectors[at:at + len(c)].copy() if c else None)
        at += len(c)
    return out


def ranking_cosines(whole: dict[str, float], best_window: dict[str, float]) -> dict[str, float]:
    """The cosine a chunk is ranked by: the mean of its own and its best window's; its own where it has no windows
    (a short chunk, or one ingested before windows were on)."""
    return {i: (c + best_window[i]) / 2 if i in best_window else c for i, c in whole.items()}
