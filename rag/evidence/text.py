"""The text around a cited passage, for documents without pages to show (HTML, Markdown, DOCX, text).

Built from the document's own chunks in the index, not from the file: they are what was indexed (a file edited
since would shift every span), and the store hands out only chunks the reader may read. Chunks overlap; each
character is taken once, by its position in the document's extracted text (``char_start``/``char_end``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.types import ChunkPayload

#: Characters shown on each side of the passage by default: a few paragraphs.
CONTEXT_CHARS = 800
#: What the parser puts between a document's blocks (ingest/chunking.py): a chunk starts and ends inside blocks.
BLOCK_SEP = "\n\n"


@dataclass(frozen=True)
class TextWindow:
    before: str
    passage: str
    after: str
    #: Where the window sits in the document's extracted text.
    start: int
    end: int
    #: Whether the window reaches the document's beginning / end.
    at_start: bool
    at_end: bool

    def to_dict(self) -> dict:
        return {"before": self.before, "passage": self.passage, "after": self.after, "start": self.start,
                "end": self.end, "at_start": self.at_start, "at_end": self.at_end}


def document_text(chunks: Sequence[ChunkPayload]) -> dict[int, str]:
    """Runs of the document's text by their start offset: contiguous where the chunks overlap or touch, apart
    where a chunk is missing (never filled with a guess)."""
    runs: dict[int, str] = {}
    start = end = -1
    for c in sorted(chunks, key=lambda c: (c.char_start, c.char_end)):
        if start >= 0 and c.char_start <= end + len(BLOCK_SEP):
            if c.char_start > end:  # chunks that meet at a block boundary: the blank line between is neither's
                runs[start] += BLOCK_SEP[: c.char_start - end]
                end = c.char_start
            if c.char_end > end:
                runs[start] += c.text[end - c.char_start:]
                end = c.char_end
            continue
        start, end = c.char_start, c.char_end
        runs[start] = c.text
    return runs


def text_window(chunks: Sequence[ChunkPayload], char_start: int, char_end: int,
                context: int = CONTEXT_CHARS) -> TextWindow:
    """The passage at [char_start, char_end) with up to ``context`` characters either side, cut at a space."""
    runs = document_text(chunks)
    run_start, text = next(((s, t) for s, t in runs.items() if s <= char_start < s + len(t)), (char_start, ""))
    a, b = char_start - run_start, min(char_end - run_start, len(text))
    lo, hi = max(0, a - context), min(len(text), b + context)
    if lo > 0 and (space := text.find(" ", lo, a)) != -1:
        lo = space + 1
    if hi < len(text) and (space := text.rfind(" ", b, hi)) != -1:
        hi = space
    first, last = min(runs, default=0), max((s + len(t) for s, t in runs.items()), default=0)
    return TextWindow(text[lo:a], text[a:b], text[b:hi], run_start + lo, run_start + hi,
                      at_start=run_start + lo <= first, at_end=run_start + hi >= last)
