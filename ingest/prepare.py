"""One file's way from bytes to chunks, and where that happens: this process, or a Ray cluster (ingest/distributed.py).

The ingest pipeline (ingest/pipeline.py) checks every file itself (hash, unchanged?) and hands the stale ones to a
``FanOut``, which parses them in the sandbox (ingest/sandbox.py), chunks them and, on a cluster, embeds them too.
Both fan-outs call :func:`parse_and_chunk`, so a file's chunks do not depend on where it was prepared.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ingest.chunking import Chunk, chunk_document
from ingest.parsers import ParsedDocument
from ingest.sandbox import ParseWorker
from rag.errors import ParseError
from rag.index.embeddings import Embedder, ModelFacts
from rag.index.store import DocumentRecord
from rag.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Work:
    """One file in an ingest run, from its check to its record."""

    path: str
    size: int
    mtime: float
    sha256: str
    previous: DocumentRecord | None
    access: dict
    doc: ParsedDocument | None = None
    chunks: list[Chunk] = field(default_factory=list)
    error: str | None = None
    #: Set when the file needs parsing, chunking and embedding (changed, new, or ``redo``).
    stale: bool = False
    #: The chunks' vectors when they were embedded elsewhere (a Ray worker, ingest/distributed.py).
    vectors: np.ndarray | None = None
    #: Their window vectors from there too (RAG_DENSE_WINDOWS, rag/index/windows.py): per chunk, None if short.
    windows: list[np.ndarray | None] | None = None


def parse_and_chunk(f: Path, settings: Settings, embedder: Embedder,
                    parser: ParseWorker) -> tuple[ParsedDocument | None, list[Chunk], str | None]:
    """A file's document and chunks, or the reason it has none; never raises (one bad file must never stop the
    others). Also what a Ray worker runs (ingest/distributed.py), so both runs chunk alike."""
    try:
        doc = parser.parse(f)
        chunks = chunk_document(doc, embedder, settings.chunk_tokens, settings.chunk_overlap_tokens)
        if not chunks:
            return None, [], "no text could be extracted"
        return doc, chunks, None
    except ParseError as exc:
        return None, [], str(exc)
    except Exception as exc:
        log.debug("unexpected parser failure on %s", f, exc_info=True)
        return None, [], f"unexpected {exc.__class__.__name__} while parsing: {str(exc)[:200]}"


class FanOut(Protocol):
    """Where changed files are parsed, chunked (and maybe embedded): in this process, or on a Ray cluster."""

    @property
    def model(self) -> ModelFacts:
        """The embedding model's identity, for the index and the run's config signature."""

    @property
    def embedder(self) -> Embedder | None:
        """What embeds the chunks in this process; None when the fan-out returns every chunk's vectors itself."""

    def produce(self, files: list[Path], check: Callable[[Path], Work], put: Callable[[Work | None], bool],
                stop: threading.Event) -> None:
        """The parse thread: every file checked (hash, unchanged?) here, the stale ones prepared, each put, then
        None; gives up as soon as ``put`` fails or ``stop`` is set."""

    def close(self) -> None: ...


class LocalFanOut:
    """The single-process run: each stale file parsed in the sandbox (ingest/sandbox.py) and chunked, in order;
    the main thread embeds."""

    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.settings, self.embedder = settings, embedder
        self.model = ModelFacts.of(embedder, settings)
        self.parser = ParseWorker(settings)

    def produce(self, files: list[Path], check: Callable[[Path], Work], put: Callable[[Work | None], bool],
                stop: threading.Event) -> None:
        try:
            for f in files:
                if stop.is_set():
                    return
                w = check(f)
                if w.stale:
                    w.doc, w.chunks, w.error = parse_and_chunk(f, self.settings, self.embedder, self.parser)
                if not put(w):
                    return
        finally:
            put(None)

    def close(self) -> None:
        self.parser.close()
