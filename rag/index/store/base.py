"""The store interface every backend implements, and the records that cross it.

Two kinds of data live in a store:
- chunks: one point per chunk, a dense vector and a payload (text + provenance + access groups);
- the document registry: one record per ingested file, written only after all its chunks are stored, so a
  record is the "this document is complete" marker that makes ingestion crash-safe; plus one meta record
  (embedding model and dimension) that stops a store built with one model being queried with another; plus one
  record per ingest run that is or was writing (``WriterRecord``, see ingest/writers.py), so that concurrent runs
  spare each other's not yet recorded chunks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, Self, cast, runtime_checkable

from rag.settings import IndexKindSetting, RetrievalMode as SearchMode
from rag.settings import Settings
from rag.index.sparse import SparseVector

# Fixed namespace: ids must be identical across runs and machines so re-running never duplicates.
_NS = uuid.UUID("6f1c2a1e-5d0b-4c3e-9a8f-2b7d4e6c9a01")

#: Payload fields with a keyword index in every backend (filters on them stay fast at 100k+ points).
INDEXED_FIELDS = ("path", "doc_sha256", "groups")


def document_id(path: str) -> str:
    return str(uuid.uuid5(_NS, "doc\n" + path))


def chunk_id(path: str, sha256: str, index: int) -> str:
    return str(uuid.uuid5(_NS, f"chunk\n{path}\n{sha256}\n{index}"))


META_ID = str(uuid.uuid5(_NS, "meta"))


def writer_point_id(writer: str) -> str:
    return str(uuid.uuid5(_NS, "writer\n" + writer))


#: Names of the two vectors every chunk carries, and of the window vectors a long chunk may carry as well
#: (rag/index/windows.py; a multivector that is only ever re-scored, never searched through a graph).
DENSE = "dense"
SPARSE = "bm25"
WINDOWS = "windows"


@dataclass(frozen=True)
class ChunkPoint:
    id: str
    vector: Sequence[float]
    payload: dict[str, Any]
    sparse: SparseVector | None = None  # keyword weights (rag.index.sparse); None in stores built without them
    windows: Sequence[Sequence[float]] | None = None  # window vectors (rag.index.windows); None: a short chunk, or off


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # what ranked it: cosine (dense), BM25 (sparse) or the fused score (hybrid)
    payload: dict[str, Any]
    similarity: float | None = None  # cosine to the query's dense vector, whatever the mode


def dense_vector(vectors: object, name: str) -> Sequence[float]:
    """The named dense vector of a point read back with ``with_vector=[name]``. Both Qdrant clients type a point's
    vectors as every shape a vector may take (a list, a multi-vector, a sparse one, a dict of those); a point of
    ours holds a dict with one dense list under ``name``."""
    return cast("dict[str, list[float]]", vectors)[name]


@dataclass(frozen=True)
class SearchFilter:
    """Restrictions every backend applies inside the query (never as a post-filter in Python)."""

    paths: tuple[str, ...] | None = None  # only these documents
    groups_any: tuple[str, ...] | None = None  # only chunks readable by one of these groups


@dataclass
class DocumentRecord:
    path: str
    sha256: str
    chunks: int
    config_sig: str
    size: int = 0
    mtime: float = 0.0
    pages: int | None = None
    title: str | None = None
    groups: list[str] = field(default_factory=list)
    ingested_at: float = 0.0
    kind: str = "document"
    #: What decided ``groups`` and why: ``AccessPolicy.record()`` (policy file and rule, --groups or the default,
    #: the ingest root and the policy signature). Empty in records written before access policies.
    access: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> DocumentRecord:
        known = {k: payload[k] for k in cls.__dataclass_fields__ if k in payload}
        return cls(**known)


@dataclass
class WriterRecord:
    """An ingest run that writes chunks (ingest/writers.py): its chunks carry ``id`` in their ``writer`` field."""

    id: str
    host: str
    pid: int
    #: The pid namespace (boot id + namespace inode, Linux): pids are comparable only within one.
    scope: str
    started: float
    #: Heartbeat: the run counts as dead after this time (0 once it ended).
    expires: float
    kind: str = "writer"

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> WriterRecord:
        return cls(**{k: payload[k] for k in cls.__dataclass_fields__ if k in payload})


IndexKind = Literal["exact", "hnsw", "hnsw-int8"]


@dataclass(frozen=True)
class IndexOptions:
    """How the dense vectors are indexed, from Settings (``RAG_INDEX_*``, ``RAG_HNSW_*``, server layout)."""

    kind: IndexKindSetting = "auto"
    hnsw_from: int = 50_000
    int8_from: int = 500_000
    m: int = 16
    ef_construct: int = 100
    ef: int | None = None  # None: by kind (ef_for)
    oversampling: float = 2.0
    acorn: bool = True
    shards: int = 1
    replicas: int = 1
    vectors_on_disk: bool = False
    #: Embedded store: segments with more KB of vectors than this get a graph, and a search over fewer
    #: (filtered) points than this scans them exactly (Qdrant's indexing_threshold and full_scan_threshold).
    threshold_kb: int = 10_000

    @classmethod
    def from_settings(cls, s: Settings) -> IndexOptions:
        return cls(kind=s.index_kind, hnsw_from=s.index_hnsw_from, int8_from=s.index_int8_from, m=s.hnsw_m,
                   ef_construct=s.hnsw_ef_construct, ef=s.hnsw_ef, oversampling=s.quantization_oversampling, acorn=s.hnsw_acorn,
                   shards=s.qdrant_shards, replicas=s.qdrant_replicas, vectors_on_disk=s.qdrant_vectors_on_disk)

    def choose(self, chunks: int) -> tuple[IndexKind, str]:
        """The kind to use for a store of ``chunks`` points, and why (shown by `rag status`)."""
        if self.kind != "auto":
            return self.kind, f"RAG_INDEX_KIND={self.kind}"
        if chunks >= self.int8_from:
            return "hnsw-int8", f"auto: {chunks:,} chunks >= RAG_INDEX_INT8_FROM={self.int8_from:,}"
        if chunks >= self.hnsw_from:
            return "hnsw", f"auto: {chunks:,} chunks >= RAG_INDEX_HNSW_FROM={self.hnsw_from:,}"
        return "exact", f"auto: {chunks:,} chunks < RAG_INDEX_HNSW_FROM={self.hnsw_from:,}"


def search_params(api: Any, kind: IndexKind | str, index: IndexOptions, filtered: bool) -> Any:
    """The dense search parameters of an index kind, built with ``api``: ``qdrant_edge`` or
    ``qdrant_client.models``, whose SearchParams, QuantizationSearchParams and AcornSearchParams take the same
    arguments. Exact search ignores a graph left from an HNSW kind; HNSW ignores a quantized copy."""
    if kind == "exact":
        return api.SearchParams(exact=True, quantization=api.QuantizationSearchParams(ignore=True))
    quant = (api.QuantizationSearchParams(rescore=True, oversampling=index.oversampling)
             if kind == "hnsw-int8" else api.QuantizationSearchParams(ignore=True))
    # The engine applies ACORN only where the filter is selective enough to need it.
    acorn = api.AcornSearchParams(enable=True) if filtered and index.acorn else None
    return api.SearchParams(hnsw_ef=ef_for(kind, index), quantization=quant, acorn=acorn)


def ef_for(kind: IndexKind | str, index: IndexOptions) -> int:
    """RAG_HNSW_EF, or by kind: 256 over int8 (from 500k chunks), 128 otherwise. Measured with
    `bench/query.py --synthetic`, quiet, 2026-12-01: at 1M (hnsw-int8) ef 128 kept 0.979 of the exact top 10
    unfiltered, ef 256 0.994 (1.48/1.73 ms p50/p95; 25 % filter + ACORN 6.26/7.45 ms). At 300k (hnsw) both kept
    1.000, but ef 256 doubled the filtered search (ACORN: 14.7/19.6 ms against 7.7/9.1)."""
    return index.ef or (256 if kind == "hnsw-int8" else 128)


@dataclass(frozen=True)
class IndexState:
    """What `rag status` shows about the dense index."""

    kind: str  # IndexKind, or "exact" where the backend has nothing else (qdrant-client local mode)
    reason: str
    points: int
    #: Points inside an HNSW graph (None where the backend does not say); below ``points`` after a switch or an
    #: ingest until the graph is built (the rest are searched exactly meanwhile: results stay complete).
    indexed: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_index(state: dict[str, Any]) -> str:
    """The dense index kind and why, e.g. "hnsw-int8 (auto: 612,000 chunks >= 500,000, graph over ...)"."""
    built = "" if state["indexed"] is None or state["kind"] == "exact" else \
        f", graph over {state['indexed']:,} of {state['points']:,} chunks"
    return f"{state['kind']} ({state['reason']}{built})" + (f"; {state['note']}" if state["note"] else "")


def check_meta(meta: dict[str, Any], embedding_model: str, dimension: int, where: str) -> None:
    """Refuse to mix embedding models in one index: their vectors are not comparable."""
    from rag.errors import StoreConfigError

    if meta.get("embedding_model") != embedding_model or meta.get("dimension") != dimension:
        raise StoreConfigError(
            f"{where} was built with embedding model {meta.get('embedding_model')!r} "
            f"({meta.get('dimension')} dimensions), but the settings ask for {embedding_model!r} "
            f"({dimension}). Set RAG_EMBEDDING_MODEL={meta.get('embedding_model')} (with RAG_EMBEDDING_URL, a "
            "server serving that model), or use another RAG_COLLECTION / RAG_DATA_DIR for the new model and "
            "ingest again."
        )


def new_meta(embedding_model: str, dimension: int) -> dict[str, Any]:
    import time

    # "sparse": the chunks collection has the BM25 vector (stores made before hybrid retrieval do not). Whether it
    # has the window multivector each backend reads from the collection's own schema.
    return {"kind": "meta", "embedding_model": embedding_model, "dimension": dimension, "created_at": time.time(),
            "sparse": SPARSE}


@runtime_checkable
class Store(Protocol):
    #: Human-readable location for `rag status` and error messages.
    location: str
    backend: str

    def ensure_ready(self, dimension: int, embedding_model: str) -> None:
        """Create collections/indexes if missing; raise StoreConfigError if built with another model."""
        ...

    def meta(self) -> dict[str, Any] | None: ...

    def upsert_chunks(self, points: Sequence[ChunkPoint]) -> None: ...

    def delete_chunks(self, path: str) -> None:
        """Remove every chunk of one document (all versions)."""
        ...

    def delete_chunks_of_writers(self, path: str, writers: Sequence[str]) -> None:
        """Remove the chunks of one document that the ingest runs ``writers`` wrote, or that carry no writer
        (written before writers were recorded); other runs' chunks stay."""
        ...

    def count_chunks(self, path: str | None = None) -> int: ...

    def chunk_paths(self) -> dict[str, int]:
        """Every document path that has chunks, with its chunk count (finds orphans a crash left behind)."""
        ...

    def chunks_of(self, path: str, *, groups_any: Sequence[str] | None = None) -> list[Hit]:
        """All chunks of one document in chunk order (score 0), for source viewers and tests."""
        ...

    def vectors(self, ids: Sequence[str]) -> dict[str, list[float]]:
        """The dense vectors of these chunks by id (ids not found are left out): what the citation check compares
        an answer's sentences with, without embedding the chunks again."""
        ...

    def search(self, vector: Sequence[float], limit: int, flt: SearchFilter | None = None) -> list[Hit]:
        """Dense nearest neighbours (``query`` in dense mode)."""
        ...

    @property
    def has_sparse(self) -> bool:
        """Whether chunks carry BM25 vectors (stores built before hybrid retrieval do not)."""
        ...

    @property
    def has_windows(self) -> bool:
        """Whether chunks can carry window vectors (stores built before window vectors cannot)."""
        ...

    def query(self, vector: Sequence[float], limit: int, flt: SearchFilter | None = None, *,
              sparse: SparseVector | None = None, mode: SearchMode = "dense", rrf_k: int = 5,
              prefetch: int | None = None, payload: bool = True) -> list[Hit]:
        """Best chunks by ``mode``: dense cosine, sparse BM25, or both fused by reciprocal rank inside Qdrant
        (each side fetches ``prefetch`` candidates, the filter applies to both). Hits carry ``similarity``.
        ``payload=False`` leaves payloads empty: for candidate lists of which only a few will be kept
        (read those with :meth:`payloads`)."""
        ...

    def cosines(self, vector: Sequence[float], ids: Sequence[str], flt: SearchFilter | None = None) -> dict[str, float]:
        """The cosine of each of these chunks to ``vector``, scored by the engine (exactly, whatever the index kind);
        ids not found, or outside ``flt``, are left out."""
        ...

    def window_cosines(self, vector: Sequence[float], ids: Sequence[str],
                       flt: SearchFilter | None = None) -> dict[str, float]:
        """For each of these chunks that has window vectors, the cosine of its best window to ``vector``, scored by
        the engine; chunks without windows (short ones, or ingested before), or outside ``flt``, are left out."""
        ...

    def payloads(self, ids: Sequence[str], flt: SearchFilter | None = None) -> dict[str, dict[str, Any]]:
        """The payloads of these chunks by id; ids not found, or outside ``flt``, are left out (the filter is
        applied again, so a payload never leaves the store for a chunk the caller may not read)."""
        ...

    def documents(self) -> dict[str, DocumentRecord]: ...

    def get_document(self, path: str) -> DocumentRecord | None: ...

    def put_document(self, record: DocumentRecord) -> None: ...

    def delete_document(self, path: str) -> None:
        """Remove the registry record only (call before touching chunks: no record = not done)."""
        ...

    def writers(self) -> list[WriterRecord]:
        """Every ingest run with a record: running, ended or dead (the sweep removes the dead ones)."""
        ...

    def put_writer(self, record: WriterRecord) -> None: ...

    def delete_writer(self, writer: str) -> None: ...

    def set_groups(self, path: str, groups: Sequence[str], access: dict[str, Any] | None = None) -> None:
        """Change the access groups of a document's chunks and record without re-embedding (chunks first, so
        an interrupted change is redone by the next ingest); ``access`` replaces the record's explanation."""
        ...

    def index_state(self) -> IndexState:
        """Which index kind the dense search uses and why (RAG_INDEX_KIND, or the chunk count under auto)."""
        ...

    def build_index(self) -> IndexState:
        """Apply the chosen index kind and build what it needs from the stored vectors (no re-embedding); blocks
        in the embedded store, starts the server's background optimizer otherwise."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self:
        """``with open_store(settings) as store:`` closes it on the way out."""
        ...

    def __exit__(self, *exc: object) -> None: ...
