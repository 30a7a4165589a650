"""Resource limits a parser checks before it does the expensive thing: count pages before reading them, read a
zip's directory before inflating it, size a bitmap before rendering it.

These run inside the parse worker (ingest/sandbox.py), whose memory limit and timeout catch what slips past
them; checking first turns a likely kill into a reason the user can act on.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

from rag.errors import ParseError
from rag.settings import Settings

#: The resolution pages are rendered at for OCR; tesseract reads best around 300 dpi.
OCR_DPI = 300


def check_pages(pages: int, settings: Settings) -> None:
    if pages > settings.max_pages:
        raise ParseError(f"PDF has {pages:,} pages, over the RAG_MAX_PAGES={settings.max_pages} limit; split it, "
                         "or raise RAG_MAX_PAGES (and RAG_PARSE_TIMEOUT_S) if it is genuine")


def check_zip(path: Path, settings: Settings) -> None:
    """Refuse a zip-based file (DOCX) whose parts would inflate too much, from the sizes its directory declares.

    Python's zipfile (which python-docx uses) stops at the declared size and fails the CRC check if a part holds
    more, so the declared sizes bound what is inflated."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ParseError(f"not a readable DOCX file (not a zip archive: {exc}): it is damaged or not really a DOCX; "
                         "open and save it again in a word processor") from None
    inflated = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    if inflated > settings.max_uncompressed_mb * 2**20:
        raise ParseError(f"its parts inflate to {inflated / 2**20:,.0f} MB uncompressed, over the "
                         f"RAG_MAX_UNCOMPRESSED_MB={settings.max_uncompressed_mb:g} limit (a zip bomb?)")
    if inflated / packed > settings.max_compression_ratio and inflated > 2**20:
        raise ParseError(f"its parts inflate {inflated / packed:,.0f} times when uncompressed, over the "
                         f"RAG_MAX_COMPRESSION_RATIO={settings.max_compression_ratio:g} limit (a zip bomb?)")


def ocr_scale(width_pt: float, height_pt: float, settings: Settings) -> tuple[float, str | None]:
    """The render scale for OCR: 300 dpi, or lower when that bitmap would exceed RAG_OCR_MAX_MEGAPIXELS (a
    20,000 x 20,000 pt page at 300 dpi is 6.9 gigapixels, ~20 GB). Returns (scale, warning or None)."""
    scale = OCR_DPI / 72
    pixels = max(1.0, width_pt * height_pt) * scale * scale
    budget = settings.ocr_max_megapixels * 1e6
    if pixels <= budget:
        return scale, None
    scale *= math.sqrt(budget / pixels)
    return scale, (f"{width_pt:,.0f} x {height_pt:,.0f} pt, OCR'd at {scale * 72:.0f} dpi to stay within "
                   f"RAG_OCR_MAX_MEGAPIXELS={settings.ocr_max_megapixels:g}")
