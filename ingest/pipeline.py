"""The ingestion pipeline: walk -> hash -> parse -> chunk -> embed -> store, incremental and crash-safe.

Crash safety rests on one rule: a document's registry record is written only after every one of its chunks
is stored, and it is deleted before any of its old chunks are touched. So after a crash or kill -9 a
half-written document has no record, the next run treats it as new (deleting whatever chunks it left), and
point ids are deterministic (path, content hash, chunk index), so the result equals an uninterrupted run.
Runs may overlap on a Qdrant server: only a dead run's unrecorded chunks are swept (ingest/writers.py), and a
document whose chunk count in the store differs from its record's (a race, a deletion) is ingested again.

Parsing and chunking run in a background thread while the main thread embeds: embedding dominates, and
this keeps the model busy. With ``RAG_INGEST_RAY`` that thread hands stale files to a Ray cluster instead, which
parses, chunks and embeds them (ingest/distributed.py); the checks and every write stay here either way. Chunks
from several documents are embedded together (sentence-transformers sorts each batch by length), so many small
files cost little padding, and a chunk text already embedded in this run (boilerplate, the same manual in two
formats) reuses its vector: only distinct texts reach the model, every chunk is still stored as its own point.

Access: every document's groups are resolved (rag/security/access.py) before anything is written, from the
``.rag-access.toml`` files between its folder and the ingest root it was found under: a folder given to
``ingest`` is the root of everything below it; a file given on its own has only its own folder's policy file.
A file reached through several given paths uses the outermost. A broken policy file anywhere in the walked
trees stops the run (AccessPolicyError) rather than guessing. The groups go into every chunk's payload, and
the decision (``AccessPolicy.record``) into the document's registry record. An unchanged document whose groups
changed gets them with ``Store.set_groups``: a payload update, nothing is re-embedded. Symbolic links are never
followed inside a walk (ingest/discovery.py), and a document whose file became one is removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from ingest.chunking import Chunk
from ingest.discovery import Discovered, discover, resolve_access, walk
from ingest.parsers import PARSER_VERSION
from ingest.prepare import FanOut, LocalFanOut, Work
from ingest.report import FileIssue, IngestReport, Progress, ProgressCallback
from ingest.sweep import forget, remove_document, sweep
from ingest.writers import WriterLease
from rag.security.access import AccessPolicy
from rag.index.embeddings import Embedder, ModelFacts, get_embedder
from rag.errors import AccessPolicyError, ClusterError, StoreConfigError
from rag.settings import Settings
from rag.types import ChunkPayload
from rag.index.sparse import SparseEncoder, get_sparse_encoder
from rag.index.store import ChunkPoint, DocumentRecord, Store, chunk_id, open_store
from rag.index.windows import embed_windows

# The walk and the report live in their own modules; callers keep importing them from here, the ingest API.
__all__ = ["Discovered", "EMBED_BUFFER", "FileIssue", "IngestReport", "Progress", "ProgressCallback",
           "config_signature", "discover", "file_sha256", "forget", "ingest", "resolve_access", "walk"]

log = logging.getLogger(__name__)

#: Chunks gathered before one embedding call: large enough for length-sorted batches, small enough that a
#: crash loses little work.
EMBED_BUFFER = 256
#: Distinct chunk texts whose vectors a run remembers, so a text met again is not embedded again (a 384-d vector
#: is 1.5 KB: about 25 MB at most).
SEEN_VECTORS = 16384


def config_signature(settings: Settings, model: ModelFacts, sparse: SparseEncoder | None = None) -> str:
    """What, besides the file's bytes, decides its chunks: change any of it and the file is re-ingested."""
    parts = [model.model_name, str(model.max_tokens), str(settings.chunk_tokens),
             str(settings.chunk_overlap_tokens), settings.pdf_parser, str(settings.ocr), PARSER_VERSION,
             # An embeddings server's vectors differ from the local model's by rounding: re-embedded like a
             # change from torch to onnx-int8.
             model.backend, settings.embedding_passage_prompt]
    if sparse is not None:  # only stores with BM25 vectors: older ones are not re-embedded for nothing
        parts.append(sparse.signature)
    if settings.dense_windows:  # only when on: turning it on (or off again) re-embeds, nothing else does
        parts.append(f"windows={settings.dense_windows}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """The hash of the file's own bytes: a path that became a symbolic link fails (OSError) instead of hashing
    the link's target under this path's name."""
    h = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ingest(
    paths: Sequence[str | Path],
    settings: Settings,
    *,
    groups: Sequence[str] | None = None,
    policy_files: bool = True,
    store: Store | None = None,
    embedder: Embedder | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest files and folders into the configured store; the Python twin of ``rag ingest``.

    ``groups`` may read documents that no ``.rag-access.toml`` rule covers (default ``settings.default_groups``);
    with ``policy_files=False`` policy files are not read and every document gets exactly ``groups`` (uploads).
    Raises AccessPolicyError, before anything is written, if a policy file is broken.
    """
    started = time.perf_counter()
    report = IngestReport()
    found = walk(paths)
    files, roots, report.skipped, report.failed = found.files, found.roots, found.skipped, found.failed
    report.files_seen = len(files)
    try:
        policy = AccessPolicy.for_run(settings, groups) if policy_files else AccessPolicy.fixed(settings, groups)
    except ValueError as exc:
        raise AccessPolicyError(f"invalid groups: {exc}") from None
    access, report.warnings = resolve_access(found, policy)
    fan_out = _fan_out(settings, embedder)
    own_store = store is None
    try:
        store = store or open_store(settings)
    except BaseException:
        fan_out.close()
        raise
    try:
        store.ensure_ready(fan_out.model.dimension, fan_out.model.model_name)
        if settings.dense_windows and not store.has_windows:
            raise StoreConfigError(
                f"RAG_DENSE_WINDOWS={settings.dense_windows} needs a store that can hold window vectors, and the one "
                f"at {store.location} was created before them. Ingest into a new store (another RAG_DATA_DIR, or "
                "RAG_COLLECTION on a Qdrant server), or unset RAG_DENSE_WINDOWS.")
        with WriterLease(store, settings.ingest_writer_ttl_s) as lease:
            _run(files, roots, settings, access, store, lease, fan_out, report, progress, found.unreadable)
        # The index kind follows the chunk count: (re)build what it needs now rather than in the first query's
        # path (a no-op for exact search and for an index already built).
        report.index = store.build_index().to_dict()
    except KeyboardInterrupt as exc:
        report.interrupted = True
        exc.report = report  # type: ignore[attr-defined]  # what was done so far, for `rag ingest --json`
        raise
    finally:
        fan_out.close()
        store.flush()
        if own_store:
            store.close()
        report.seconds = time.perf_counter() - started
    return report


def _fan_out(settings: Settings, embedder: Embedder | None) -> FanOut:
    """This process, or the Ray cluster of RAG_INGEST_RAY; there the workers hold the model, not this process
    (unless an ``embedder`` was passed in)."""
    if not settings.ingest_ray:
        return LocalFanOut(settings, embedder or get_embedder(settings, batch=True))
    try:
        from ingest.distributed import RayFanOut  # Ray is an optional extra: imported only when asked for
    except ImportError as exc:
        raise ClusterError(f"RAG_INGEST_RAY / --ray needs Ray ({exc}): pip install 'onprem-rag[ray]'") from None
    return RayFanOut(settings, embedder)


def _run(files: list[Path], roots: list[Path], settings: Settings, access: dict[str, dict], store: Store,
         lease: WriterLease, fan_out: FanOut, report: IngestReport, progress: ProgressCallback | None,
         unreadable: list[Path]) -> None:
    registry = store.documents()
    damaged = sweep(store, registry, files, roots, report, unreadable, limit=settings.ingest_removal_limit)
    # Every chunk gets its BM25 vector whatever the retrieval mode, so switching modes needs no re-index.
    sparse = get_sparse_encoder(settings) if store.has_sparse else None
    sig = config_signature(settings, fan_out.model, sparse)
    prog = Progress(files_total=len(files), bytes_total=sum(_size(f) for f in files))
    batch = _Batch(store, lease, fan_out.embedder, sparse, sig, report, prog, settings.dense_windows)
    work_q: queue.Queue[Work | None] = queue.Queue(maxsize=8)
    stop = threading.Event()

    def check(f: Path) -> Work:
        return _check(f, registry.get(str(f)), sig, access[str(f)], settings, redo=str(f) in damaged)

    failure: list[BaseException] = []

    def produce() -> None:
        try:
            fan_out.produce(files, check, lambda w: _put(work_q, w, stop), stop)
        except BaseException as exc:  # a cluster lost mid-run: the run must not end as if every file was seen
            failure.append(exc)

    producer = threading.Thread(target=produce, name="rag-ingest-parse", daemon=True)
    producer.start()
    try:
        while (w := work_q.get()) is not None:
            prog.current = w.path
            _accept(w, batch, store, report)
            prog.files_done += 1
            prog.bytes_done += w.size
            if len(batch) >= EMBED_BUFFER or (batch and work_q.empty()):
                batch.flush()
            if progress:
                progress(prog)
        if batch:
            batch.flush()
            if progress:
                progress(prog)
        producer.join(timeout=5)  # it put None before its exception reached ``failure``
        if failure:
            raise ClusterError(f"preparing files failed, {prog.files_total - prog.files_done} not ingested: "
                               f"{failure[0]}; run the same command again to continue") from failure[0]
    finally:
        stop.set()
        fan_out.close()  # kills a parse still running, so the thread below can finish
        producer.join(timeout=5)


def _put(work_q: queue.Queue[Work | None], item: Work | None, stop: threading.Event) -> bool:
    # A blocking put would hang the parse thread forever once the main thread stopped reading.
    while not stop.is_set():
        try:
            work_q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _accept(w: Work, batch: _Batch, store: Store, report: IngestReport) -> None:
    """One prepared file in the main thread: a failure, an unchanged document, or chunks to embed."""
    if w.error is not None:
        _fail(store, w, report)
    elif w.doc is None:  # unchanged
        report.unchanged += 1
        _update_access(store, w, report)
    else:
        # Chunks without a record were swept at the start of the run, so only a recorded document
        # has old chunks to replace.
        if w.previous is not None:
            # Record first, then chunks: from here until the new record is written the document
            # counts as not ingested, whatever happens.
            store.delete_document(w.path)
            store.delete_chunks(w.path)
        batch.add(w)
        for warning in w.doc.warnings:
            report.warnings.append(FileIssue(w.path, warning))
        report.pages += w.doc.pages or 0
        report.bytes_parsed += w.size


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _check(f: Path, previous: DocumentRecord | None, sig: str, access: dict, settings: Settings, *,
           redo: bool = False) -> Work:
    """Runs in the parse thread, always on this machine: hash, and whether the file needs parsing (``stale``)."""
    try:
        st = f.lstat()
        if stat.S_ISLNK(st.st_mode):
            return Work(str(f), 0, 0.0, "", previous, access, error="became a symbolic link after the folder was "
                         "walked: not followed; ingest again")
        if st.st_size > settings.max_file_mb * 2**20:  # refused before hashing: a 2 GB file is not read at all
            return Work(str(f), st.st_size, st.st_mtime, "", previous, access, error=(
                f"file is {st.st_size / 2**20:,.0f} MB, over the {settings.max_file_mb:g} MB limit (RAG_MAX_FILE_MB)"))
        sha = file_sha256(f)
    except OSError as exc:
        return Work(str(f), 0, 0.0, "", previous, access, error=f"cannot read file: {exc.strerror or exc}; "
                                                                           "give the account running rag read access")
    w = Work(str(f), st.st_size, st.st_mtime, sha, previous, access)
    w.stale = previous is None or previous.sha256 != sha or previous.config_sig != sig or redo
    return w


def _update_access(store: Store, w: Work, report: IngestReport) -> None:
    """An unchanged document: if its groups changed, rewrite them in its chunks' payload and record (no
    re-embedding); if only the explanation changed (a rule moved, another file decides the same groups), refresh
    the record alone."""
    prev = w.previous
    if prev is None:
        return
    groups = list(w.access["groups"])
    if sorted(set(prev.groups)) != groups:
        store.set_groups(w.path, groups, access=w.access)
        report.access_updated += 1
    elif prev.access != w.access:
        prev.access = w.access
        store.put_document(prev)


def _fail(store: Store, w: Work, report: IngestReport) -> None:
    # Its content changed (or it became unreadable): the old chunks describe text that is no longer there.
    reason = w.error or "unknown error"
    if w.previous is not None:
        remove_document(store, w.path, report)
        report.removed += 1
        reason += "; its earlier version is taken out of the index"
    report.failed.append(FileIssue(w.path, reason))


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


#: A chunk's vector, and its window vectors (windows x dimension) or None.
_Embedded = tuple[np.ndarray, np.ndarray | None]


class _Batch:
    """Chunks of several documents gathered for one embedding call; a document's record is written once its
    last chunk is stored (the crash-safety rule of the module docstring)."""

    def __init__(self, store: Store, lease: WriterLease, embedder: Embedder | None, sparse: SparseEncoder | None, sig: str,
                 report: IngestReport, prog: Progress, windows: int = 0) -> None:
        self.store, self.lease, self.embedder, self.sparse, self.sig = store, lease, embedder, sparse, sig
        self.report, self.prog, self.windows = report, prog, windows
        #: (document, chunk, its vector and window vectors if embedded elsewhere)
        self.buffer: list[tuple[Work, Chunk, _Embedded | None]] = []
        self.pending: dict[str, int] = {}  # chunks of each document not stored yet
        self.works: dict[str, Work] = {}
        self.seen: LRUCache[bytes, _Embedded] = LRUCache(maxsize=SEEN_VECTORS)

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, w: Work) -> None:
        self.works[w.path] = w
        self.pending[w.path] = len(w.chunks)
        done: list[_Embedded | None] = [None] * len(w.chunks)
        if w.vectors is not None:
            windows = w.windows if w.windows is not None else [None] * len(w.chunks)
            done = [(v, win) for v, win in zip(w.vectors, windows, strict=True)]
        self.buffer.extend((w, c, e) for c, e in zip(w.chunks, done, strict=True))
        w.vectors = w.windows = None

    def flush(self) -> None:
        texts = [c.text for _, c, _ in self.buffer]
        keys = [_text_key(t) for t in texts]
        vectors = [e if e is not None else self.seen.get(k) for (_, _, e), k in zip(self.buffer, keys, strict=True)]
        # Each distinct text is embedded once, whichever documents and batches it appears in (documentation
        # repeats boilerplate, the same document often ships in several formats); every chunk is still stored
        # as its own point.
        todo: dict[bytes, list[int]] = {}
        for i, v in enumerate(vectors):
            if v is None:
                todo.setdefault(keys[i], []).append(i)
        if todo:
            if self.embedder is None:  # a fan-out without an embedder here returns every chunk's vector
                raise RuntimeError(f"{len(todo)} chunks came back without vectors from the fan-out")
            distinct = [texts[at[0]] for at in todo.values()]
            embedded = self.embedder.embed_documents(distinct)
            windows = (embed_windows(self.embedder, distinct, self.windows) if self.windows
                       else [None] * len(distinct))
            for (key, at), vec, win in zip(todo.items(), embedded, windows, strict=True):
                entry = self.seen[key] = (vec.copy(), win)  # a row alone, not a view keeping the whole batch
                for i in at:
                    vectors[i] = entry
        sparse_vectors = self.sparse.embed_documents(texts) if self.sparse is not None else [None] * len(texts)
        points = [_point(w, c, e, sv, self.lease.id)
                  for (w, c, _), e, sv in zip(self.buffer, vectors, sparse_vectors, strict=True)]
        self.lease.refresh()  # embedding took a while: the chunks must not land under a lapsed heartbeat
        self.store.upsert_chunks(points)
        self.report.chunks += len(points)
        self.prog.chunks_done += len(points)
        for w, _, _ in self.buffer:
            self.pending[w.path] -= 1
        self.buffer = []
        for path in [p for p, left in self.pending.items() if left == 0]:
            del self.pending[path]
            self._record(self.works.pop(path))

    def _record(self, w: Work) -> None:
        self.store.put_document(DocumentRecord(
            path=w.path, sha256=w.sha256, chunks=len(w.chunks), config_sig=self.sig, size=w.size, mtime=w.mtime,
            pages=w.doc.pages if w.doc else None, title=w.doc.title if w.doc else None,
            groups=list(w.access["groups"]), access=w.access, ingested_at=time.time(),
        ))
        if w.previous is not None:
            self.report.updated += 1
        else:
            self.report.added += 1
        w.doc = None  # free the parsed text early
        w.chunks = []


def _point(w: Work, c: Chunk, embedded: _Embedded | None, sv, writer: str) -> ChunkPoint:
    assert embedded is not None
    vec, windows = embedded
    assert w.doc is not None
    payload = ChunkPayload(
        text=c.text, path=w.path, source=Path(w.path).name, title=w.doc.title, doc_sha256=w.sha256,
        chunk_index=c.index, chunk_count=len(w.chunks), page_start=c.page_start, page_end=c.page_end,
        section=c.section, char_start=c.char_start, char_end=c.char_end, token_count=c.token_count,
        groups=list(w.access["groups"]), writer=writer)
    return ChunkPoint(chunk_id(w.path, w.sha256, c.index), vec.tolist(), payload.to_dict(), sv,
                      windows.tolist() if windows is not None else None)
