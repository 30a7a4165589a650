"""The page renderer of the UI, the API and `rag preview`: the highlight lands on the cited passage's own
characters, and nowhere else."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image

from conftest import SAMPLE_DOCS
from rag.evidence.pages import MAX_PIXELS, PreviewError, passage_spans, render_page

HANDBOOK = SAMPLE_DOCS / "employee-handbook.pdf"
RAG = str(Path(sys.executable).parent / "rag")


def _page_text(n: int) -> str:
    pdf = pdfium.PdfDocument(str(HANDBOOK))
    try:
        tp = pdf[n - 1].get_textpage()
        return tp.get_text_range()
    finally:
        pdf.close()


def _as_chunk(page_text: str, start: int, length: int) -> str:
    """A stretch of the page as a chunk may hold it: lines joined, spaces collapsed."""
    return " ".join(page_text[start:start + length].split())


def _highlighted(img: Image.Image, box) -> float:
    """Share of the box's pixels tinted by the highlight (marker yellow over white or over black text)."""
    px = [img.getpixel((x, y)) for x in range(box.left, box.right) for y in range(box.top, box.bottom)]
    return sum(1 for r, g, b in px if r > 120 and g > 100 and b < 190 and r - b > 60) / max(len(px), 1)


def test_the_passage_is_highlighted_on_its_page_and_nothing_else_is():
    text = _page_text(3)
    passage = _as_chunk(text, 200, 400)
    r = render_page(HANDBOOK.read_bytes(), 3, passage)
    assert r.page == 3 and r.pages == 7 and r.found > 0.95 and r.boxes
    img = Image.open(io.BytesIO(r.png)).convert("RGB")
    assert (img.width, img.height) == (r.width, r.height)
    assert all(_highlighted(img, b) > 0.5 for b in r.boxes)
    # Outside the boxes the page has no highlight colour at all.
    inside = {(x, y) for b in r.boxes for x in range(b.left - 1, b.right + 1) for y in range(b.top - 1, b.bottom + 1)}
    stray = sum(1 for x in range(0, img.width, 3) for y in range(0, img.height, 3)
                if (x, y) not in inside and _highlighted(img.crop((x, y, x + 1, y + 1)), _B1) == 1.0)
    assert stray == 0
    plain = Image.open(io.BytesIO(render_page(HANDBOOK.read_bytes(), 3).png)).convert("RGB")
    assert all(_highlighted(plain, b) < 0.05 for b in r.boxes)


class _B1:
    left, top, right, bottom = 0, 0, 1, 1


def test_a_passage_from_another_page_is_not_found():
    r = render_page(HANDBOOK.read_bytes(), 2, _as_chunk(_page_text(5), 100, 300))
    assert not r.boxes and r.found == 0.0


def test_a_chunk_that_runs_into_the_next_page_is_highlighted_where_each_page_holds_it():
    p3, p4 = _page_text(3), _page_text(4)
    passage = " ".join(p3[-300:].split()) + " " + " ".join(p4[:300].split())
    on3 = render_page(HANDBOOK.read_bytes(), 3, passage)
    on4 = render_page(HANDBOOK.read_bytes(), 4, passage)
    assert on3.boxes and on4.boxes
    assert 0.2 < on3.found < 0.8 and 0.2 < on4.found < 0.8


def test_spans_cover_the_sentence_and_its_full_stop():
    page = "Intro.\r\nThe regular working time is 39 hours per week.\r\nNext."
    spans, found = passage_spans(page, "the regular working time is 39 hours per week")
    assert found == 1.0 and [page[a:b] for a, b in spans] == ["The regular working time is 39 hours per week."]
    assert passage_spans(page, "") == ([], 0.0)
    assert passage_spans(page, "39 hours per week")[0] == []  # too short to be told from a coincidence


def test_a_giant_page_is_rendered_within_the_pixel_bound():
    doc = pdfium.PdfDocument.new()
    doc.new_page(20_000, 20_000)
    buf = io.BytesIO()
    doc.save(buf)
    r = render_page(buf.getvalue(), 1)
    assert r.width * r.height <= MAX_PIXELS


def test_errors_say_what_can_be_shown():
    with pytest.raises(PreviewError, match="has 7 pages"):
        render_page(HANDBOOK.read_bytes(), 8)
    with pytest.raises(PreviewError, match="not a readable PDF"):
        render_page(b"hello", 1)


def test_rag_preview_writes_the_page(tmp_path):
    out = tmp_path / "p.png"
    passage = _as_chunk(_page_text(2), 300, 300)
    res = subprocess.run([RAG, "preview", str(HANDBOOK), "--page", "2", "--highlight", passage, "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "page 2 of 7" in res.stdout and "passage found" in res.stdout
    assert Image.open(out).size[0] > 500
    res = subprocess.run([RAG, "preview", str(HANDBOOK), "--page", "9", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "has 7 pages" in res.stderr
