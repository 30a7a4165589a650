"""Parsing of every sample format, with pages and sections; encodings; bad files fail with a reason."""

from __future__ import annotations

import pytest

from ingest.parsers import decode_text, parse
from rag.errors import ParseError

from conftest import SAMPLE_DOCS


def test_pdf_pages_sections_and_table(settings):
    doc = parse(SAMPLE_DOCS / "employee-handbook.pdf", settings)
    assert doc.pages == 7
    assert {b.page for b in doc.blocks} == set(range(1, 8))
    # Sections come from the PDF outline.
    by_section = {b.section: b.page for b in doc.blocks if b.kind == "heading"}
    assert by_section["3. Leave and Vacation"] == 3
    assert by_section["4.3 Per-Diem Rates"] == 5
    # A table row stays on one line with all its cells.
    table_block = next(b for b in doc.blocks if "Lisbon 140 36" in b.text)
    assert table_block.page == 5 and table_block.section == "4.3 Per-Diem Rates"
    # Running headers/footers are gone from the text.
    assert not any("Classification: Internal Page" in b.text for b in doc.blocks)


def test_markdown_headings_lists_table(settings):
    doc = parse(SAMPLE_DOCS / "it-security.md", settings)
    sections = {b.section for b in doc.blocks}
    assert "How to Reset Your VPN Token" in sections
    assert any(b.kind == "list" for b in doc.blocks)
    assert doc.title == "IT Security Guidelines"
    assert any(b.kind == "table" and " | " in b.text for b in doc.blocks)


def test_html(settings):
    doc = parse(SAMPLE_DOCS / "onboarding.html", settings)
    assert "Your Badge" in {b.section for b in doc.blocks}
    assert any("badge" in b.text.lower() for b in doc.blocks)


def test_docx_headings_and_table_rows(settings):
    doc = parse(SAMPLE_DOCS / "benefits.docx", settings)
    assert "4.1 Bike Leasing" in {b.section for b in doc.blocks}
    table = next(b for b in doc.blocks if b.kind == "table")
    assert table.text.count("\n") >= 3 and " | " in table.text


def test_text_paragraphs(settings):
    doc = parse(SAMPLE_DOCS / "office-faq.txt", settings)
    assert len(doc.blocks) >= 5
    assert all(b.page is None for b in doc.blocks)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Caf\u00e9 r\u00e9sum\u00e9s go to HR".encode("latin-1"), "Caf\u00e9 r\u00e9sum\u00e9s"),
        ("Parking on level \u22122".encode("utf-16"), "level \u22122"),
        ("\ufeff# Holidays".encode(), "# Holidays"),
        (b"plain ascii", "plain ascii"),
    ],
)
def test_decode_text(raw, expected):
    assert expected in decode_text(raw)
    assert not decode_text(raw).startswith("\ufeff")


def test_decode_refuses_binary():
    with pytest.raises(ParseError, match="binary"):
        decode_text(bytes(range(256)) * 40)


def test_bad_files_fail_with_reason(bad_files, settings):
    reasons = {}
    for f in sorted((bad_files / "bad").iterdir()):
        with pytest.raises(ParseError) as info:
            parse(f, settings)
        reasons[f.name] = str(info.value)
    assert "encrypted" in reasons["encrypted-user-password.pdf"]
    assert "empty" in reasons["empty.pdf"]
    assert "binary" in reasons["binary-with-nul-bytes.txt"]
    assert all(reasons.values())


def test_tricky_files_parse(bad_files, settings):
    for f in sorted((bad_files / "tricky").iterdir()):
        doc = parse(f, settings)
        assert doc.blocks, f.name


def test_unsupported_extension(tmp_path, settings):
    f = tmp_path / "image.png"
    f.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ParseError, match="unsupported"):
        parse(f, settings)


def test_scanned_page_reported(tmp_path, settings):
    """A PDF page that is only an image has no text layer: it is reported, OCR'd when tesseract exists."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 48)
    except OSError:
        font = ImageFont.load_default(size=48)
    draw.text((100, 200), "Scanned memo: the canteen opens at 11:30.", fill="black", font=font)
    pdf = tmp_path / "scan.pdf"
    img.save(pdf, "PDF", resolution=150)
    import shutil

    if shutil.which("tesseract"):
        doc = parse(pdf, settings)
        assert "canteen" in " ".join(b.text for b in doc.blocks).lower()
        assert any("OCR" in w for w in doc.warnings)
    else:
        with pytest.raises(ParseError, match="scanned"):
            parse(pdf, settings)


def test_opt_in_unstructured_pdf_parser(settings):
    """The opt-in strategy must not silently return nothing offline (unstructured's failure mode)."""
    pytest.importorskip("unstructured_inference", reason="installed by scripts/install.sh")
    doc = parse(SAMPLE_DOCS / "employee-handbook.pdf", settings.model_copy(update={"pdf_parser": "unstructured"}))
    text = " ".join(b.text for b in doc.blocks)
    assert doc.pages == 7 and "Lisbon" in text and "ExpensePoint" in text
    assert {b.page for b in doc.blocks} == set(range(1, 8))
