"""Sources shown where they are: a cited PDF passage on its page image, any other passage in the text around
it; both only for documents the reader may read (the download path's checks)."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from conftest import SAMPLE_DOCS, USERS
from rag.errors import AccessDenied
from rag.generation.chain import RAG
from rag.security.auth import Identity
from rag.types import ChunkPayload


def _user(name: str) -> Identity:
    return Identity(name, tuple(sorted({"everyone", f"user:{name}", *USERS[name][0]})), "cli")


@pytest.fixture(scope="module")
def rag(group_index, tmp_path_factory):
    # A copy: views are audited, and the shared index's audit log must stay as other tests expect it.
    data = tmp_path_factory.mktemp("evidence") / "data"
    shutil.copytree(group_index.data_dir, data)
    r = RAG.from_settings(group_index.model_copy(update={"data_dir": data}))
    yield r
    r.close()


def _chunks(rag: RAG, name: str) -> list[ChunkPayload]:
    return [ChunkPayload.from_dict(h.payload) for h in rag.store.chunks_of(str((SAMPLE_DOCS / name).absolute()))]


def test_a_pdf_passage_is_shown_highlighted_on_its_page(rag):
    chunk = next(c for c in _chunks(rag, "employee-handbook.pdf") if c.page_start == c.page_end == 3)
    page = rag.source_page(chunk.path, 3, highlight=chunk.text, user=_user("alice"))
    assert page.page == 3 and page.pages == 7 and page.found > 0.95 and page.boxes
    assert Image.open(io.BytesIO(page.png)).size == (page.width, page.height)


def test_the_text_around_a_passage_is_the_indexed_text(rag):
    chunks = _chunks(rag, "it-security.md")
    assert len(chunks) >= 3
    mid = chunks[len(chunks) // 2]
    w = rag.source_text(mid.path, mid.char_start, mid.char_end, user=_user("bob"), context=300)
    assert w.passage == mid.text
    assert w.before and w.after and not w.at_start
    # The window is the document's own text: the neighbouring chunks' text continues it.
    before = chunks[len(chunks) // 2 - 1]
    assert w.before.split()[-1] in before.text
    first = rag.source_text(chunks[0].path, chunks[0].char_start, chunks[0].char_end, user=_user("bob"))
    assert first.at_start and first.before == ""


@pytest.mark.attack(1, "open the page image or text window of a document one may not read")
def test_views_are_refused_for_documents_the_reader_may_not_read(rag):
    pdf = next(iter(_chunks(rag, "employee-handbook.pdf")))
    md = next(iter(_chunks(rag, "it-security.md")))
    with pytest.raises(AccessDenied):
        rag.source_page(pdf.path, 1, highlight=pdf.text, user=_user("bob"))
    with pytest.raises(AccessDenied):
        rag.source_text(md.path, md.char_start, md.char_end, user=_user("alice"))
    # The same words for a path that is not indexed at all: no probing for names.
    with pytest.raises(AccessDenied, match="no such document, or you may not read it"):
        rag.source_text(str(SAMPLE_DOCS / "nope.md"), 0, 10, user=_user("alice"))
