"""Chunk size limits in embedding-model tokens, exact char spans, sections, overlap."""

from __future__ import annotations

import itertools

import pytest

from ingest.chunking import BLOCK_SEP, chunk_document, document_text
from ingest.parsers import Block, ParsedDocument, parse

from conftest import SAMPLE_DOCS


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLE_DOCS.iterdir()))
@pytest.mark.parametrize("chunk_tokens", [32, 128, 10_000])
def test_chunks_fit_the_model_and_spans_are_exact(name, chunk_tokens, settings, embedder):
    doc = parse(SAMPLE_DOCS / name, settings)
    text, _ = document_text(doc)
    chunks = chunk_document(doc, embedder, chunk_tokens, 16)
    limit = min(chunk_tokens, embedder.max_tokens)
    assert chunks
    for c in chunks:
        assert c.text == text[c.char_start:c.char_end]
        assert c.token_count == embedder.count_tokens(c.text) <= limit
        assert c.text.strip() == c.text
    # Every non-whitespace character of the document is in some chunk: nothing is lost.
    covered = [False] * len(text)
    for c in chunks:
        covered[c.char_start:c.char_end] = [True] * (c.char_end - c.char_start)
    missing = "".join(ch for ch, cov in zip(text, covered, strict=True) if not cov).strip()
    assert missing == ""


def test_model_limit_caps_configured_size(settings, embedder):
    doc = ParsedDocument(SAMPLE_DOCS, [Block("word " * 5000)])
    chunks = chunk_document(doc, embedder, 100_000, 0)
    assert max(c.token_count for c in chunks) <= embedder.max_tokens == 254
    assert len(chunks) >= 5000 // 254


def test_one_unbroken_token_run_is_cut(settings, embedder):
    doc = ParsedDocument(SAMPLE_DOCS, [Block("x" * 20000)])
    chunks = chunk_document(doc, embedder, 64, 8)
    assert all(c.token_count <= 64 for c in chunks)
    assert "".join(c.text for c in chunks) == "x" * 20000


def test_sections_are_not_crossed_and_headings_join_their_text(embedder):
    blocks = [
        Block("1. Leave", section="1. Leave", kind="heading"),
        Block("1.1 Vacation", section="1.1 Vacation", kind="heading"),
        Block("You get thirty days of vacation per year.", section="1.1 Vacation"),
        Block("2. Travel", section="2. Travel", kind="heading"),
        Block("Economy class for flights under six hours.", section="2. Travel"),
    ]
    doc = ParsedDocument(SAMPLE_DOCS, blocks)
    chunks = chunk_document(doc, embedder, 200, 16)
    assert [c.section for c in chunks] == ["1.1 Vacation", "2. Travel"]
    assert chunks[0].text.startswith("1. Leave" + BLOCK_SEP + "1.1 Vacation")
    assert "Travel" not in chunks[0].text


def test_overlap_only_inside_blocks(embedder):
    para = " ".join(f"Sentence number {i} talks about policy item {i}." for i in range(60))
    doc = ParsedDocument(SAMPLE_DOCS, [Block(para), Block("A short closing paragraph.")])
    chunks = chunk_document(doc, embedder, 64, 16)
    inner = [c for c in chunks if c.char_end <= len(para)]
    assert len(inner) >= 3
    for a, b in itertools.pairwise(inner):
        assert b.char_start < a.char_end  # overlapping inside the long paragraph
    last = chunks[-1]
    assert last.text == "A short closing paragraph." or last.text.endswith("A short closing paragraph.")


def test_pages_tracked(settings, embedder):
    doc = parse(SAMPLE_DOCS / "employee-handbook.pdf", settings)
    chunks = chunk_document(doc, embedder, 256, 32)
    table = next(c for c in chunks if "Lisbon 140 36" in c.text)
    assert table.page_start == table.page_end == 5
    assert table.section == "4.3 Per-Diem Rates"
    assert [c.index for c in chunks] == list(range(len(chunks)))
