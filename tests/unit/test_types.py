"""The chunk payload: one schema for the writer (ingestion) and the readers (retrieval, the MCP server); a request's
sampling."""

from __future__ import annotations

import re

import pytest

from rag.types import ChunkPayload, Sampling


def test_round_trip_and_the_keys_the_store_filters_on():
    p = ChunkPayload(text="Hotel cap 140 EUR.", path="/docs/travel.pdf", source="travel.pdf", chunk_index=3,
                     page_start=2, page_end=2, section="Travel", char_start=10, char_end=28, groups=["hr"])
    d = p.to_dict()
    # The store's filters and indexes address these keys by name (rag/index/store/).
    assert d["path"] == "/docs/travel.pdf" and d["groups"] == ["hr"] and d["chunk_index"] == 3
    assert ChunkPayload.from_dict(d) == p


def test_an_older_or_newer_payload_still_reads():
    old = {"text": "x", "path": "/a/b/notes.md", "chunk_index": 1}  # no source, no groups
    p = ChunkPayload.from_dict({**old, "some_future_key": True})
    assert p.source == "notes.md" and p.groups == [] and p.page_start is None and p.chunk_index == 1


def test_ingestion_writes_exactly_the_schema(tmp_path, embedder):
    from ingest import ingest
    from rag.index.store import open_store
    from rag.settings import Settings

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Title\n\nSome text about parking.\n")
    settings = Settings(data_dir=tmp_path / "data")
    assert ingest([docs], settings, embedder=embedder).added == 1
    with open_store(settings) as store:
        (hit,) = store.chunks_of(str(docs / "a.md"))
    assert set(hit.payload) == set(ChunkPayload.__dataclass_fields__)
    assert ChunkPayload.from_dict(hit.payload).to_dict() == hit.payload


def test_the_public_names_are_listed_where_developers_look():
    """RAG, Answer and Citation load lazily (LangChain takes a second); dir() and help() did not show them."""
    import pydoc
    from pathlib import Path

    import rag

    assert {"RAG", "Answer", "Citation", "Settings"} <= set(dir(rag))
    text = pydoc.render_doc(rag, renderer=pydoc.plaintext)
    assert "rag.generation.chain.RAG" in text and "rag.types.Answer" in text
    assert (Path(rag.__file__).parent / "py.typed").exists()  # PEP 561: a developer's mypy reads our types


# --- Sampling: a request's say in generation ------------------------------------------------------------------

def test_sampling_accepts_a_dict_and_caps_max_tokens_at_the_budget():
    s = Sampling.of({"max_tokens": 64, "temperature": 0, "seed": 3})
    assert (s.max_tokens, s.temperature, s.top_p, s.seed) == (64, 0, None, 3)
    assert s.answer_tokens(512) == 64 and s.answer_tokens(32) == 32
    assert Sampling.of(None).answer_tokens(512) == 512 and Sampling.of(s) is s


@pytest.mark.parametrize("value, says", [({"temperature": 2.5}, "temperature=2.5 (0 to 2)"),
                                         ({"top_p": 0}, "top_p=0 (above 0, at most 1)"),
                                         ({"max_tokens": 0}, "max_tokens=0 (at least 1)"),
                                         ({"temprature": 1}, "unknown temprature"),
                                         ("hot", "got a str")])
def test_sampling_refuses_what_it_cannot_send(value, says):
    with pytest.raises((TypeError, ValueError), match=re.escape(says)):
        Sampling.of(value)
