"""A PDF page as the reader sees it, with a cited passage highlighted: the one renderer of the UI, the API and
``rag preview``.

The passage is found in the page's own text layer and highlighted by pdfium's character boxes, not by searching
pixels. A chunk's text is not a verbatim copy of the page: the parser strips running headers and footers,
joins lines and may put a section title in front, and a chunk can run over into the next page. So both sides
are compared on letters and digits alone (case folded), and every stretch of at least
:data:`MIN_MATCH_CHARS` of them that the passage and the page share is highlighted; what the page does not
hold (another page's half, a title added by the chunker) is simply not found there.
"""

from __future__ import annotations

import difflib
import io
import threading
from dataclasses import dataclass, field

import pypdfium2 as pdfium
from PIL import Image, ImageDraw

from rag.errors import RagError

#: Shared stretches shorter than this (letters and digits) are coincidences, not the passage.
MIN_MATCH_CHARS = 20
#: The highlight: a marker yellow over the text, opaque enough to find by its colour in a screenshot.
HIGHLIGHT_RGB = (255, 221, 0)
HIGHLIGHT_ALPHA = 110
#: Rendering is bounded whatever the page claims to be (a 20,000 x 20,000 pt page is a memory bomb).
MAX_PIXELS = 6_000_000
_CLOSING = ".,;:!?)]}\"'\u2019\u201d"
#: pdfium is not thread-safe, not even across documents (pypdfium2's docs): the API and the UI render pages from
#: several threads, and two renders at once crashed the whole server (SIGSEGV). Parsing for ingest needs none:
#: it runs one file at a time in its own process (ingest/sandbox.py).
_PDFIUM = threading.Lock()


class PreviewError(RagError):
    """The page cannot be shown (not a PDF, no such page)."""


@dataclass(frozen=True)
class Box:
    """A highlighted rectangle in image pixels (origin top left)."""

    left: int
    top: int
    right: int
    bottom: int


@dataclass
class RenderedPage:
    png: bytes
    page: int  # 1-based
    pages: int
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    #: Share of the passage's letters and digits found on this page (0 without a highlight).
    found: float = 0.0


def _letters(text: str) -> tuple[str, list[int]]:
    """The text's letters and digits, case folded, with the index in ``text`` of each."""
    # One folded character per original one ("ß" folds to "ss"): indices must map back one to one.
    keep = [(ch.casefold()[0], i) for i, ch in enumerate(text) if ch.isalnum()]
    return "".join(c for c, _ in keep), [i for _, i in keep]


def passage_spans(page_text: str, passage: str) -> tuple[list[tuple[int, int]], float]:
    """Character ranges [start, end) of ``page_text`` that hold ``passage`` (see the module docstring), and the
    share of the passage's letters and digits they cover."""
    page_norm, page_idx = _letters(page_text)
    passage_norm, _ = _letters(passage)
    if not page_norm or not passage_norm:
        return [], 0.0
    matcher = difflib.SequenceMatcher(None, page_norm, passage_norm, autojunk=False)
    spans: list[tuple[int, int]] = []
    covered = 0
    for block in matcher.get_matching_blocks():
        if block.size < MIN_MATCH_CHARS:
            continue
        covered += block.size
        end = page_idx[block.a + block.size - 1] + 1
        while end < len(page_text) and page_text[end] in _CLOSING:  # the sentence's own full stop, too
            end += 1
        spans.append((page_idx[block.a], end))
    return spans, covered / len(passage_norm)


def render_page(pdf_bytes: bytes, page: int, highlight: str | None = None, *, scale: float = 1.5) -> RenderedPage:
    """Page ``page`` (1-based) of the PDF as PNG, ``highlight`` marked where the page holds it."""
    with _PDFIUM:
        image, n, boxes, found = _render(pdf_bytes, page, highlight, scale)
    _paint(image, boxes)  # PIL from here on: other renders need not wait for it
    out = io.BytesIO()
    image.save(out, format="PNG")
    return RenderedPage(out.getvalue(), page, n, image.width, image.height, boxes, found)


def _render(pdf_bytes: bytes, page: int, highlight: str | None,
            scale: float) -> tuple[Image.Image, int, list[Box], float]:
    """The page's pixels (a copy, no longer pdfium's), its document's page count and the highlight's boxes;
    every pdfium object is closed before it returns, so no finalizer touches pdfium later outside the lock."""
    try:
        pdf = pdfium.PdfDocument(pdf_bytes)
    except pdfium.PdfiumError as exc:
        raise PreviewError(f"not a readable PDF ({exc}); only PDF pages can be rendered") from None
    try:
        n = len(pdf)
        if not 1 <= page <= n:
            raise PreviewError(f"no page {page}: the document has {n} page{'s' if n != 1 else ''}")
        pg = pdf[page - 1]
        try:
            width_pt, height_pt = pg.get_size()
            scale = min(scale, 0.999 * (MAX_PIXELS / max(width_pt * height_pt, 1.0)) ** 0.5)
            bitmap = pg.render(scale=scale)
            try:
                image = bitmap.to_pil().convert("RGB")
            finally:
                bitmap.close()
            boxes, found = _boxes(pg, highlight, scale, height_pt) if highlight else ([], 0.0)
            return image, n, boxes, found
        finally:
            pg.close()
    finally:
        pdf.close()


def _boxes(pg: pdfium.PdfPage, passage: str, scale: float, height_pt: float) -> tuple[list[Box], float]:
    textpage = pg.get_textpage()
    try:
        text = textpage.get_text_range()
        # pdfium counts the line breaks it generates as characters, so text index == character index; a page
        # where that does not hold (never seen) gets no highlight rather than a shifted one.
        if len(text) != textpage.count_chars():
            return [], 0.0
        spans, found = passage_spans(text, passage)
        boxes = []
        for start, end in spans:
            for i in range(textpage.count_rects(start, end - start)):
                left, bottom, right, top = textpage.get_rect(i)
                boxes.append(Box(int(left * scale), int((height_pt - top) * scale),
                                 int(right * scale + 0.999), int((height_pt - bottom) * scale + 0.999)))
        return boxes, found
    finally:
        textpage.close()


def _paint(image: Image.Image, boxes: list[Box]) -> None:
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for b in boxes:
        draw.rectangle((b.left, b.top, b.right, b.bottom), fill=(*HIGHLIGHT_RGB, HIGHLIGHT_ALPHA))
    image.paste(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))
