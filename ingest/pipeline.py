"""The ingestion pipeline: walk -> hash -> parse -> chunk -> embed -> store, incremental and crash-safe.

Crash safety rests on one rule: a document's registry record is written only after every one of its chunks
is stored, and it is deleted before any of its old chunks are touched. So after a crash or kill -9 a
half-written document has no record, the next run treats it as new (deleting whatever chunks it left), and
point ids are deterministic (path, content hash, chunk index), so the result equals an uninterrupted run.

Parsing and chunking run in a background thread while the main thread embeds: embedding dominates, and
this keeps the model busy. Chunks from several documents are embedded together (sentence-transformers sorts
each batch by length), so many small files cost little padding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ingest.chunking import Chunk, chunk_document
from ingest.parsers import PARSER_VERSION, ParsedDocument, is_supported, parse
from rag.embeddings import Embedder, get_embedder
from rag.errors import ParseError
from rag.settings import Settings
from rag.sparse import SparseEncoder, get_sparse_encoder
from rag.store import ChunkPoint, DocumentRecord, Store, chunk_id, open_store

log = logging.getLogger(__name__)

#: Chunks gathered before one embedding call: large enough for length-sorted batches, small enough that a
#: crash loses little work.
EMBED_BUFFER = 256


@dataclass
class FileIssue:
    path: str
    reason: str


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    regrouped: int = 0
    chunks: int = 0  # chunks written in this run
    chunks_removed: int = 0
    pages: int = 0
    files_seen: int = 0
    bytes_parsed: int = 0
    failed: list[FileIssue] = field(default_factory=list)
    skipped: list[FileIssue] = field(default_factory=list)
    warnings: list[FileIssue] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@dataclass
class Progress:
    files_total: int
    bytes_total: int
    files_done: int = 0
    bytes_done: int = 0
    chunks_done: int = 0
    current: str | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Work:
    path: str
    size: int
    mtime: float
    sha256: str
    previous: DocumentRecord | None
    doc: ParsedDocument | None = None
    chunks: list[Chunk] = field(default_factory=list)
    error: str | None = None


def config_signature(settings: Settings, embedder: Embedder, sparse: SparseEncoder | None = None) -> str:
    """What, besides the file's bytes, decides its chunks: change any of it and the file is re-ingested."""
    parts = [embedder.model_name, str(embedder.max_tokens), str(settings.chunk_tokens),
             str(settings.chunk_overlap_tokens), settings.pdf_parser, str(settings.ocr), PARSER_VERSION,
             settings.embedding_backend, settings.embedding_passage_prompt]
    if sparse is not None:  # only stores with BM25 vectors: older ones are not re-embedded for nothing
        parts.append(sparse.signature)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path], list[FileIssue], list[FileIssue]]:
    """Expand the given paths into (files, folder roots, skipped, failed).

    Hidden files and folders (.git, .rag, ...) are not walked. An unsupported file inside a folder is
    skipped (reported, not an error); one named explicitly is a failure.
    """
    files: list[Path] = []
    roots: list[Path] = []
    skipped: list[FileIssue] = []
    failed: list[FileIssue] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            files.append(p)

    for raw in paths:
        p = Path(raw).expanduser().absolute()
        if p.is_dir():
            roots.append(p)
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    f = Path(dirpath) / name
                    if not f.is_file():
                        continue
                    if is_supported(f):
                        add(f)
                    else:
                        skipped.append(FileIssue(str(f), f"unsupported file type {f.suffix.lower() or '(none)'}"))
        elif p.is_file():
            if is_supported(p):
                add(p)
            else:
                failed.append(FileIssue(str(p), f"unsupported file type {p.suffix.lower() or '(none)'}"))
        else:
            roots.append(p)  # gone: whatever was ingested from it is removed below
    return files, roots, skipped, failed


def ingest(
    paths: Sequence[str | Path],
    settings: Settings,
    *,
    groups: Sequence[str] | None = None,
    store: Store | None = None,
    embedder: Embedder | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest files and folders into the configured store; the Python twin of ``rag ingest``."""
    started = time.perf_counter()
    report = IngestReport()
    files, roots, report.skipped, report.failed = discover(paths)
    report.files_seen = len(files)
    embedder = embedder or get_embedder(settings)
    own_store = store is None
    store = store or open_store(settings)
    try:
        store.ensure_ready(embedder.dimension, embedder.model_name)
        _run(files, roots, settings, list(groups) if groups else list(settings.default_groups),
             store, embedder, report, progress)
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        store.flush()
        if own_store:
            store.close()
        report.seconds = time.perf_counter() - started
    return report


def _run(files: list[Path], roots: list[Path], settings: Settings, groups: list[str], store: Store,
         embedder: Embedder, report: IngestReport, progress: ProgressCallback | None) -> None:
    registry = store.documents()
    current = {str(f) for f in files}

    # Files that disappeared from an ingested folder (or a folder or file that is gone as a whole).
    removed_under: dict[Path, int] = {r: 0 for r in roots}
    for path, rec in list(registry.items()):
        if path in current or Path(path).exists():
            continue
        root = next((r for r in roots if path == str(r) or path.startswith(str(r) + os.sep)), None)
        if root is None:
            continue
        _remove(store, path, report)
        report.removed += 1
        removed_under[root] += 1
        del registry[path]
    report.failed += [FileIssue(str(r), "no such file or directory")
                      for r, n in removed_under.items() if n == 0 and not r.exists()]

    # Chunks without a registry record were left by an interrupted run; the file, if still here, is redone.
    for path in store.chunk_paths():
        if path not in registry:
            store.delete_chunks(path)

    # Every chunk gets its BM25 vector whatever the retrieval mode, so switching modes needs no re-index.
    sparse = get_sparse_encoder(settings) if store.has_sparse else None
    sig = config_signature(settings, embedder, sparse)
    prog = Progress(files_total=len(files), bytes_total=sum(_size(f) for f in files))
    work_q: queue.Queue[_Work | None] = queue.Queue(maxsize=8)
    stop = threading.Event()

    def produce() -> None:
        try:
            for f in files:
                if stop.is_set():
                    return
                w = _prepare(f, registry.get(str(f)), sig, groups, settings, embedder)
                while not stop.is_set():
                    try:
                        work_q.put(w, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        finally:
            while not stop.is_set():
                try:
                    work_q.put(None, timeout=0.2)
                    return
                except queue.Full:
                    continue

    producer = threading.Thread(target=produce, name="rag-ingest-parse", daemon=True)
    producer.start()
    buffer: list[tuple[_Work, Chunk]] = []
    pending: dict[str, int] = {}
    works: dict[str, _Work] = {}
    try:
        while True:
            w = work_q.get()
            if w is None:
                break
            prog.current = w.path
            if w.error is not None:
                _fail(store, w, report)
            elif w.doc is None:  # unchanged
                report.unchanged += 1
                if w.previous is not None and sorted(w.previous.groups) != sorted(groups):
                    store.set_groups(w.path, groups)
                    report.regrouped += 1
            else:
                # Chunks without a record were swept at the start of the run, so only a recorded document
                # has old chunks to replace.
                if w.previous is not None:
                    # Record first, then chunks: from here until the new record is written the document
                    # counts as not ingested, whatever happens.
                    store.delete_document(w.path)
                    store.delete_chunks(w.path)
                works[w.path] = w
                pending[w.path] = len(w.chunks)
                buffer.extend((w, c) for c in w.chunks)
                for warning in w.doc.warnings:
                    report.warnings.append(FileIssue(w.path, warning))
                report.pages += w.doc.pages or 0
                report.bytes_parsed += w.size
            prog.files_done += 1
            prog.bytes_done += w.size
            if len(buffer) >= EMBED_BUFFER or (buffer and work_q.empty()):
                _flush(buffer, pending, works, groups, sig, store, embedder, sparse, report, prog)
                buffer = []
            if progress:
                progress(prog)
        if buffer:
            _flush(buffer, pending, works, groups, sig, store, embedder, sparse, report, prog)
            if progress:
                progress(prog)
    finally:
        stop.set()
        producer.join(timeout=5)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _prepare(f: Path, previous: DocumentRecord | None, sig: str, groups: list[str], settings: Settings,
             embedder: Embedder) -> _Work:
    """Runs in the parse thread: hash, and parse + chunk only if the file changed."""
    try:
        st = f.stat()
        sha = file_sha256(f)
    except OSError as exc:
        return _Work(str(f), 0, 0.0, "", previous, error=f"cannot read file: {exc.strerror or exc}")
    w = _Work(str(f), st.st_size, st.st_mtime, sha, previous)
    if previous is not None and previous.sha256 == sha and previous.config_sig == sig:
        return w
    try:
        w.doc = parse(f, settings)
        w.chunks = chunk_document(w.doc, embedder, settings.chunk_tokens, settings.chunk_overlap_tokens)
        if not w.chunks:
            w.error = "no text could be extracted"
    except ParseError as exc:
        w.error = str(exc)
    except Exception as exc:  # one bad file must never stop the others
        log.debug("unexpected parser failure on %s", f, exc_info=True)
        w.error = f"unexpected {exc.__class__.__name__} while parsing: {str(exc)[:200]}"
    if w.error:
        w.doc = None
    return w


def _remove(store: Store, path: str, report: IngestReport) -> None:
    """Take a document out of the index: its record first (so a crash here leaves it "not ingested"), then
    its chunks."""
    store.delete_document(path)
    report.chunks_removed += store.count_chunks(path)
    store.delete_chunks(path)


def _fail(store: Store, w: _Work, report: IngestReport) -> None:
    # Its content changed (or it became unreadable): the old chunks describe text that is no longer there.
    if w.previous is not None:
        _remove(store, w.path, report)
    report.failed.append(FileIssue(w.path, w.error or "unknown error"))


def _flush(buffer: list[tuple[_Work, Chunk]], pending: dict[str, int], works: dict[str, _Work],
           groups: list[str], sig: str, store: Store, embedder: Embedder, sparse: SparseEncoder | None,
           report: IngestReport, prog: Progress) -> None:
    texts = [c.text for _, c in buffer]
    vectors = embedder.embed_documents(texts)
    sparse_vectors = sparse.embed_documents(texts) if sparse is not None else [None] * len(texts)
    points = []
    for (w, c), vec, sv in zip(buffer, vectors, sparse_vectors):
        assert w.doc is not None
        points.append(ChunkPoint(chunk_id(w.path, w.sha256, c.index), vec.tolist(), {
            "text": c.text,
            "path": w.path,
            "source": Path(w.path).name,
            "title": w.doc.title,
            "doc_sha256": w.sha256,
            "chunk_index": c.index,
            "chunk_count": len(w.chunks),
            "page_start": c.page_start,
            "page_end": c.page_end,
            "section": c.section,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "token_count": c.token_count,
            "groups": groups,
        }, sv))
    store.upsert_chunks(points)
    report.chunks += len(points)
    prog.chunks_done += len(points)
    for w, _ in buffer:
        pending[w.path] -= 1
    for path in [p for p, left in pending.items() if left == 0]:
        w = works.pop(path)
        del pending[path]
        store.put_document(DocumentRecord(
            path=w.path, sha256=w.sha256, chunks=len(w.chunks), config_sig=sig, size=w.size, mtime=w.mtime,
            pages=w.doc.pages if w.doc else None, title=w.doc.title if w.doc else None, groups=groups,
            ingested_at=time.time(),
        ))
        if w.previous is not None:
            report.updated += 1
        else:
            report.added += 1
        w.doc = None  # free the parsed text early
        w.chunks = []


def forget(paths: Sequence[str | Path], settings: Settings, *, store: Store | None = None) -> IngestReport:
    """Remove documents (files, or everything under folders) from the index; the files are not touched."""
    started = time.perf_counter()
    report = IngestReport()
    own = store is None
    store = store or open_store(settings)
    try:
        registry = store.documents()
        for raw in paths:
            p = str(Path(raw).expanduser().absolute())
            matches = [k for k in registry if k == p or k.startswith(p.rstrip(os.sep) + os.sep)]
            if not matches:
                report.failed.append(FileIssue(p, "not in the index"))
            for k in matches:
                _remove(store, k, report)
                report.removed += 1
    finally:
        store.flush()
        if own:
            store.close()
    report.seconds = time.perf_counter() - started
    return report
