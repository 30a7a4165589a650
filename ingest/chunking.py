"""Split a parsed document into chunks measured in the embedding model's own tokens.

A chunk never holds more tokens than the model embeds: beyond its max sequence length the model silently
truncates, and that text would be lost to search. Chunks never cross a section boundary; inside a section
they prefer to end at a block (paragraph, table) boundary, then a sentence end, then a line break, then any
word boundary, and only a break inside a block carries overlap into the next chunk.

Each chunk's text is exactly ``document_text[char_start:char_end]``, where the document text is the blocks
joined by blank lines, so citations can point at a precise span.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ingest.parsers import ParsedDocument
from rag.index.embeddings import Embedder

BLOCK_SEP = "\n\n"

# Break priorities: a higher value is a better place to end a chunk.
_SECTION, _BLOCK, _SENTENCE, _LINE, _WORD, _NONE = 5, 4, 3, 2, 1, 0


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    page_start: int | None
    page_end: int | None
    section: str | None


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    page: int | None
    section: str | None
    section_start: bool  # first block of a new section
    heading: bool


def document_text(doc: ParsedDocument) -> tuple[str, list[_Span]]:
    parts: list[str] = []
    spans: list[_Span] = []
    pos = 0
    prev_section: object = object()
    for b in doc.blocks:
        if parts:
            pos += len(BLOCK_SEP)
        spans.append(_Span(pos, pos + len(b.text), b.page, b.section, b.section != prev_section,
                           b.kind == "heading"))
        parts.append(b.text)
        pos += len(b.text)
        prev_section = b.section
    return BLOCK_SEP.join(parts), spans


def chunk_document(doc: ParsedDocument, embedder: Embedder, chunk_tokens: int, overlap_tokens: int) -> list[Chunk]:
    text, spans = document_text(doc)
    limit = max(8, min(chunk_tokens, embedder.max_tokens))
    overlap = min(overlap_tokens, limit // 4)
    offsets = embedder.token_offsets(text)
    if not offsets:
        return []
    prio, span_of = _break_priorities(text, offsets, spans)
    chunks: list[Chunk] = []
    n = len(offsets)
    s = 0
    while s < n:
        e = _choose_end(prio, s, n, limit, lambda a, b: all(sp.heading for sp in spans[span_of[a]:span_of[b] + 1]))
        while True:
            c_start, c_end = offsets[s][0], offsets[e - 1][1]
            piece = text[c_start:c_end]
            count = embedder.count_tokens(piece)
            # Tokenizers whose pieces depend on context (sentencepiece) can disagree with the sliced count;
            # shrink until the real count fits.
            if count <= limit or e - s <= 1:
                break
            e = max(s + 1, e - max(1, (count - limit)))
        # Blocks are in text order, so the chunk's blocks are a slice: no scan of the whole document.
        inside = spans[span_of[s]:span_of[e - 1] + 1]
        pages = [sp.page for sp in inside if sp.page is not None]
        # The innermost section the chunk is about: the last one that starts inside it, else the one it is in.
        starts = [sp for sp in inside if sp.section_start and sp.start > c_start]
        section = (starts[-1] if starts else inside[0]).section if inside else None
        chunks.append(Chunk(len(chunks), piece, c_start, c_end, count,
                            min(pages) if pages else None, max(pages) if pages else None, section))
        if e >= n:
            break
        if prio[e] >= _BLOCK or overlap == 0:
            s = e
        else:
            # Overlap only when cutting inside a block, and start the overlap at a word boundary.
            t = max(s + 1, e - overlap)
            while t < e and prio[t] < _WORD:
                t += 1
            s = t if t < e else e
    return chunks


def _break_priorities(text: str, offsets: list[tuple[int, int]], spans: list[_Span]) -> tuple[list[int], list[int]]:
    """prio[i] = how good it is to start a new chunk at token i (i.e. end the previous one before it);
    span_of[i] = the block token i belongs to."""
    n = len(offsets)
    prio = [_NONE] * (n + 1)
    prio[n] = _SECTION
    span_of = [0] * n
    j = 0
    for i, (a, _) in enumerate(offsets):
        while j + 1 < len(spans) and spans[j + 1].start <= a:
            j += 1
        span_of[i] = j
    span_i = 0
    for i in range(1, n):
        prev_end, start = offsets[i - 1][1], offsets[i][0]
        if start == prev_end:
            continue  # inside a word (e.g. a "##" continuation piece or punctuation attached to it)
        gap = text[prev_end:start]
        while span_i < len(spans) and spans[span_i].end <= prev_end:
            span_i += 1
        if span_i < len(spans) and spans[span_i].start >= prev_end and spans[span_i].start <= start:
            prio[i] = _SECTION if spans[span_i].section_start else _BLOCK
        elif ("\n" in gap and text[prev_end - 1:prev_end] in ".!?:;") or (
                text[prev_end - 1:prev_end] in ".!?" and text[start:start + 1].isupper()):
            prio[i] = _SENTENCE
        elif "\n" in gap:
            prio[i] = _LINE
        else:
            prio[i] = _WORD
    return prio, span_of


def _choose_end(prio: list[int], s: int, n: int, limit: int, headings_only: Callable[[int, int], bool]) -> int:
    hard = min(n, s + limit)
    # A section boundary inside the window ends the chunk, unless all before it are headings (a section
    # whose text starts in a subsection): those join the next section instead of standing alone.
    for i in range(s + 1, hard + 1):
        if prio[i] == _SECTION and (i == n or not headings_only(s, i - 1)):
            return i
    if hard == n:
        return n
    # Otherwise the best break in the back half of the window (chunks stay reasonably full), latest first.
    lo = s + max(1, limit // 2)
    best, best_p = hard, _NONE
    for i in range(hard, lo - 1, -1):
        if prio[i] > best_p:
            best, best_p = i, prio[i]
            if best_p >= _BLOCK:
                break
    if best_p == _NONE:
        for i in range(lo - 1, s, -1):
            if prio[i] > _NONE:
                return i
        return hard  # one unbroken "word" longer than the window: cut it
    return best
