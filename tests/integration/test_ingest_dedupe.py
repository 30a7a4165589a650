"""A chunk text met twice in one ingest run is embedded once; every chunk is still its own point."""

from __future__ import annotations

import numpy as np

from ingest import ingest
from rag.index.store import open_store

BOILERPLATE = ("This manual is free software; you can redistribute it and/or modify it under the terms of the GNU "
               "General Public License as published by the Free Software Foundation; either version 2 of the "
               "License, or (at your option) any later version.")


class CountingEmbedder:
    """The real embedder, with a record of every text it was asked to embed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_name, self.dimension, self.max_tokens = inner.model_name, inner.dimension, inner.max_tokens
        self.backend, self.onnx_model = getattr(inner, "backend", None), getattr(inner, "onnx_model", None)
        self.embedded: list[str] = []

    def token_offsets(self, text):
        return self.inner.token_offsets(text)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    def embed_documents(self, texts):
        self.embedded.extend(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        return self.inner.embed_query(text)


def _points(settings, path):
    with open_store(settings) as s:
        hits = s.chunks_of(str(path))
        vectors = s.vectors([h.id for h in hits])
    return [(h.id, h.payload["text"], np.asarray(vectors[h.id])) for h in hits]


def test_the_same_text_twice_is_embedded_once(tmp_path, settings, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    # The same manual shipped twice (a copy under another name), and a third file that shares one paragraph.
    manual = f"# Installing\n\nRun the installer and follow the prompts.\n\n# Licence\n\n{BOILERPLATE}\n"
    (docs / "a.md").write_text(manual)
    (docs / "b.md").write_text(manual)
    (docs / "c.md").write_text(f"# Printing\n\nPrinters are on every floor.\n\n# Licence\n\n{BOILERPLATE}\n")
    counting = CountingEmbedder(embedder)

    report = ingest([docs], settings, embedder=counting)

    a, b, c = (_points(settings, docs / n) for n in ("a.md", "b.md", "c.md"))
    stored = [t for pts in (a, b, c) for _, t, _ in pts]
    assert report.added == 3 and report.chunks == len(stored)
    assert len(stored) > len(set(stored))  # there were duplicates to save
    assert sorted(counting.embedded) == sorted(set(stored))  # each distinct text embedded exactly once
    # Every chunk is stored as its own point (own id, own path), duplicates with identical vectors.
    ids = [i for pts in (a, b, c) for i, _, _ in pts]
    assert len(set(ids)) == len(ids)
    assert [t for _, t, _ in a] == [t for _, t, _ in b]
    for (_, _, va), (_, _, vb) in zip(a, b, strict=True):
        assert np.array_equal(va, vb)
    licence = [(t, v) for pts in (a, c) for _, t, v in pts if "GNU General Public License" in t]
    assert len(licence) == 2 and licence[0][0] == licence[1][0]  # the same chunk text in a.md and c.md
    assert np.array_equal(licence[0][1], licence[1][1])
    # And it is that text's vector, not another's: int8 activations are scaled per batch, so embedded alone it
    # comes out close to, not exactly, the vector it got among the run's other texts.
    others = [v for _, t, v in c if t != licence[0][0]]
    alone = embedder.embed_documents([licence[0][0]])[0]
    assert float(np.dot(licence[0][1], alone)) > 0.95 > max(float(np.dot(v, alone)) for v in others)
