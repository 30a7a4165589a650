"""Passages as packing handles them: near-duplicates found by shingles, adjacent chunks of one document merged
without repeating their overlap, a passage cut at a word boundary to fill the last room."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from rag.types import Passage

#: Ends the text of a passage cut to fit, so the model (and the reader) can tell it goes on.
TRIM_MARK = " [...]"


# --- near-duplicates ----------------------------------------------------------------------------
def shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < k:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def similarity(a: set, b: set) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


# --- merging adjacent passages ------------------------------------------------------------------
def adjacent(a: Passage, b: Passage) -> bool:
    if a.path != b.path or not (a.char_end and b.char_end):
        return False  # another retriever's passage may not say where it stands: merging could lose its text
    if abs(a.chunk_index - b.chunk_index) == 1:
        return True
    return a.char_start < b.char_end and b.char_start < a.char_end  # overlapping spans


def merge_text(passages: list[Passage]) -> str:
    """Text of a run of passages of one document in position order, overlaps written once."""
    ps = sorted(passages, key=lambda p: (p.char_start, p.char_end))
    text, end = ps[0].text, ps[0].char_end
    for p in ps[1:]:
        if p.char_end <= end:
            continue  # contained in what we have
        if p.char_start < end:
            text += p.text[end - p.char_start:]
        else:
            text += "\n" + p.text
        end = p.char_end
    return text


# --- the packer ---------------------------------------------------------------------------------

def trim_to_fit(p: Passage, room: int, cost_of: Callable[[Passage], int]) -> tuple[Passage, int] | None:
    """The longest word-boundary prefix of ``p`` that costs at most ``room`` tokens, and its cost.
    Binary search: about log2(words) counts."""
    cuts = [m.start() for m in re.finditer(r"\s+", p.text)]
    if not cuts:
        return None

    def part(k: int) -> Passage:
        end = cuts[k]
        return replace(p, text=p.text[:end] + TRIM_MARK, char_end=p.char_start + end, trimmed=True)

    def cost(k: int) -> int:
        return cost_of(part(k))

    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        c = cost(mid)
        if c <= room:
            best, lo = (mid, c), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return None
    return part(best[0]), best[1]
