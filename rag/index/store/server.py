"""Scale-out store: a Qdrant server or cluster through qdrant-client (``RAG_QDRANT_URL``).

The same client also runs in its local mode (``path=`` or ``":memory:"``), which the conformance tests use;
it is far too slow to be our embedded default (see rag/index/store/edge.py).
Collections: ``<collection>`` for chunks, ``<collection>__documents`` for the registry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from qdrant_client import QdrantClient, models

from rag.errors import StoreLockedError, StoreUnavailableError
from rag.index.store.base import (
    check_meta,
    new_meta,
    search_params,
    DENSE,
    INDEXED_FIELDS,
    META_ID,
    SPARSE,
    WINDOWS,
    ChunkPoint,
    DocumentRecord,
    Hit,
    IndexKind,
    IndexOptions,
    IndexState,
    SearchFilter,
    SearchMode,
    WriterRecord,
    dense_vector,
    document_id,
    writer_point_id,
)
from rag.index.sparse import SparseVector
from rag.urls import SecretUrl, scrub, secret_url

_SCROLL_PAGE = 1024


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _filter(flt: SearchFilter | None, path: str | None = None) -> models.Filter | None:
    must = _conditions(flt, path)
    return models.Filter(must=must) if must else None


def _conditions(flt: SearchFilter | None, path: str | None = None) -> list[Any]:
    must: list[Any] = []
    if path is not None:
        must.append(_match("path", path))
    if flt is not None and flt.paths is not None:
        must.append(models.FieldCondition(key="path", match=models.MatchAny(any=list(flt.paths))))
    if flt is not None and flt.groups_any is not None:
        must.append(models.FieldCondition(key="groups", match=models.MatchAny(any=list(flt.groups_any))))
    return must


def _path_filter(path: str) -> models.Filter:
    """The points of one file (``_filter(None, path)``, never None)."""
    return models.Filter(must=[_match("path", path)])


def _credentials(url: SecretUrl, api_key: str | None) -> dict[str, Any]:
    """QdrantClient arguments for the credentials in ``url``: ``?api-key=`` (or ``api_key``) stands in for
    RAG_QDRANT_API_KEY, user:password@ becomes HTTP Basic auth, any other query goes with every request."""
    params = url.params
    keys = [v for k, v in params if k.lower() in ("api-key", "api_key", "apikey")]
    rest = [(k, v) for k, v in params if k.lower() not in ("api-key", "api_key", "apikey")]
    kwargs: dict[str, Any] = {"api_key": api_key or (keys[0] if keys else None)}
    if url.auth:
        kwargs["auth"] = httpx.BasicAuth(*url.auth)
    if rest:
        kwargs["params"] = rest
    return kwargs


class QdrantServerStore:
    backend = "qdrant-server"

    def __init__(
        self,
        collection: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        timeout: float = 30.0,
        index: IndexOptions | None = None,
    ) -> None:
        self.collection = collection
        self._index = index or IndexOptions()
        self._kind: IndexKind = "exact"
        self._reason = ""
        self.docs_collection = f"{collection}__documents"
        if url:
            url = secret_url(url)  # shown as such; the credentials in it go to the client only
            self.location = f"{url.bare.rstrip('/')}/collections/{collection}"
            self.backend = "qdrant-server"
            self._client = QdrantClient(url=url.bare, timeout=int(timeout), **_credentials(url, api_key))
        else:
            self.location = f"{path or ':memory:'} (qdrant-client local mode) collection {collection}"
            self.backend = "qdrant-client-local"
            try:
                self._client = QdrantClient(path=path) if path and path != ":memory:" else QdrantClient(":memory:")
            except RuntimeError as exc:
                if "already accessed" in str(exc):
                    raise StoreLockedError(
                        f"the local Qdrant folder {path} is open in another process; stop it or use a Qdrant server"
                    ) from None
                raise
        self._ready = False
        self._has_sparse: bool | None = None
        self._has_windows: bool | None = None
        try:
            self._ready = self._client.collection_exists(self.collection)
        except Exception as exc:  # connection refused, DNS, TLS, auth
            raise StoreUnavailableError(
                f"cannot reach the Qdrant server at {url}: {exc.__class__.__name__}: {scrub(str(exc))[:200]}. "
                "Check RAG_QDRANT_URL and RAG_QDRANT_API_KEY, or unset RAG_QDRANT_URL to use the embedded store."
            ) from exc
        self._apply_index()

    def ensure_ready(self, dimension: int, embedding_model: str) -> None:
        if not self._client.collection_exists(self.collection):
            kind, _ = self._index.choose(0)
            # Layout (shards, replicas, where the originals live) is fixed here; the index kind is not (see
            # _apply_index). The server builds HNSW itself above its indexing threshold whatever the kind:
            # an exact kind just does not use it.
            self._client.create_collection(
                self.collection,
                vectors_config={DENSE: models.VectorParams(
                    size=dimension, distance=models.Distance.COSINE,
                    on_disk=self._index.vectors_on_disk or kind == "hnsw-int8" or None),
                    # Window vectors (rag/index/windows.py) are only re-scored for a question's candidates: no
                    # graph, on disk, and their own int8 copy on disk so the hnsw-int8 kind's RAM stays the same.
                    WINDOWS: models.VectorParams(
                        size=dimension, distance=models.Distance.COSINE, on_disk=True,
                        multivector_config=models.MultiVectorConfig(
                            comparator=models.MultiVectorComparator.MAX_SIM),
                        hnsw_config=models.HnswConfigDiff(m=0),
                        quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                            type=models.ScalarType.INT8, quantile=0.99, always_ram=False)))},
                # IDF is applied at query time from live statistics: adding documents re-weights nothing.
                sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                shard_number=self._index.shards,
                replication_factor=self._index.replicas,
                hnsw_config=models.HnswConfigDiff(m=self._index.m, ef_construct=self._index.ef_construct),
                quantization_config=_quantization(kind),
            )
            if self.backend == "qdrant-server":  # local mode has no payload indexes (and warns)
                for name in INDEXED_FIELDS:
                    self._client.create_payload_index(self.collection, name, models.PayloadSchemaType.KEYWORD)
        if not self._client.collection_exists(self.docs_collection):
            self._client.create_collection(self.docs_collection, vectors_config={})
            if self.backend == "qdrant-server":
                self._client.create_payload_index(self.docs_collection, "kind", models.PayloadSchemaType.KEYWORD)
        self._ready = True
        meta = self.meta()
        if meta is None:
            self._put_registry(META_ID, new_meta(embedding_model, dimension) | {"index_kind": "exact"})
        else:
            check_meta(meta, embedding_model, dimension, f"collection {self.collection!r}")
        self._has_sparse = self._has_windows = None
        self._apply_index()

    # --- index kind ----------------------------------------------------------------------------
    def _apply_index(self) -> None:
        """Choose the kind for the current chunk count; on a server, a change of quantization is sent as a
        collection update, which the server's optimizer carries out in the background from stored vectors."""
        if not self._ready:  # no collection yet: nothing to choose for, and no registry to read
            return
        meta = self.meta()
        if meta is None:
            return
        if self.backend != "qdrant-server":
            self._kind, self._reason = "exact", "qdrant-client local mode has no HNSW (exact numpy search)"
            return
        self._kind, self._reason = self._index.choose(self.count_chunks())
        if meta.get("index_kind") == self._kind:
            return
        int8 = self._kind == "hnsw-int8"
        self._client.update_collection(
            self.collection,
            vectors_config={DENSE: models.VectorParamsDiff(on_disk=True if int8 else None)},
            hnsw_config=models.HnswConfigDiff(m=self._index.m, ef_construct=self._index.ef_construct),
            quantization_config=_quantization(self._kind) or models.Disabled.DISABLED,
        )
        self._put_registry(META_ID, meta | {"index_kind": self._kind})

    def index_state(self) -> IndexState:
        points = self.count_chunks()
        if self.backend != "qdrant-server" or not self._ready:
            return IndexState(self._kind, self._reason or "empty store", points, None)
        info = self._client.get_collection(self.collection)
        indexed = info.indexed_vectors_count
        note = f"optimizer {info.status.value}" if info.status != models.CollectionStatus.GREEN else ""
        return IndexState(self._kind, self._reason, points, indexed, note)

    def build_index(self) -> IndexState:
        if self._ready:
            self._apply_index()
        return self.index_state()

    def _search_params(self, filtered: bool) -> models.SearchParams | None:
        if self.backend != "qdrant-server":
            return None  # local mode always searches exactly (and warns about any search parameter)
        return search_params(models, self._kind, self._index, filtered)

    def flush(self) -> None:
        pass  # the server persists each acknowledged (wait=True) update

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> QdrantServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- registry ------------------------------------------------------------------------------
    def _put_registry(self, pid: str, payload: dict[str, Any]) -> None:
        self._client.upsert(self.docs_collection, [models.PointStruct(id=pid, vector={}, payload=payload)], wait=True)

    def meta(self) -> dict[str, Any] | None:
        if not self._client.collection_exists(self.docs_collection):
            return None
        recs = self._client.retrieve(self.docs_collection, [META_ID], with_payload=True)
        return dict(recs[0].payload or {}) if recs else None

    def _registry(self, kind: str) -> Iterator[dict[str, Any]]:
        """The payloads of every registry record of one kind (document, writer)."""
        if not self._ready:
            return
        offset = None
        while True:
            recs, offset = self._client.scroll(
                self.docs_collection, scroll_filter=models.Filter(must=[_match("kind", kind)]),
                limit=_SCROLL_PAGE, offset=offset, with_payload=True, with_vectors=False,
            )
            yield from (r.payload or {} for r in recs)
            if offset is None:
                return

    def documents(self) -> dict[str, DocumentRecord]:
        records = (DocumentRecord.from_payload(p) for p in self._registry("document"))
        return {rec.path: rec for rec in records}

    def writers(self) -> list[WriterRecord]:
        return [WriterRecord.from_payload(p) for p in self._registry("writer")]

    def put_writer(self, record: WriterRecord) -> None:
        self._put_registry(writer_point_id(record.id), record.to_payload())

    def delete_writer(self, writer: str) -> None:
        if self._ready:
            self._client.delete(self.docs_collection, models.PointIdsList(points=[writer_point_id(writer)]), wait=True)

    def get_document(self, path: str) -> DocumentRecord | None:
        if not self._ready:
            return None
        recs = self._client.retrieve(self.docs_collection, [document_id(path)], with_payload=True)
        return DocumentRecord.from_payload(recs[0].payload or {}) if recs else None

    def put_document(self, record: DocumentRecord) -> None:
        self._put_registry(document_id(record.path), record.to_payload())

    def delete_document(self, path: str) -> None:
        if self._ready:
            self._client.delete(self.docs_collection, models.PointIdsList(points=[document_id(path)]), wait=True)

    # --- chunks --------------------------------------------------------------------------------
    def upsert_chunks(self, points: Sequence[ChunkPoint]) -> None:
        if not points:
            return
        sparse, windows = self.has_sparse, self.has_windows
        self._client.upsert(
            self.collection,
            [models.PointStruct(id=p.id, vector=_vectors(p, sparse, windows), payload=p.payload) for p in points],
            wait=True,
        )

    def delete_chunks(self, path: str) -> None:
        if self._ready:
            self._client.delete(self.collection, models.FilterSelector(filter=_path_filter(path)), wait=True)

    def delete_chunks_of_writers(self, path: str, writers: Sequence[str]) -> None:
        if not self._ready:
            return
        should: list[Any] = [models.IsEmptyCondition(is_empty=models.PayloadField(key="writer"))]
        if writers:
            should.append(models.FieldCondition(key="writer", match=models.MatchAny(any=list(writers))))
        self._client.delete(self.collection, models.FilterSelector(
            filter=models.Filter(must=[_match("path", path)], should=should)), wait=True)

    def count_chunks(self, path: str | None = None) -> int:
        if not self._ready:
            return 0
        return self._client.count(self.collection, count_filter=_filter(None, path), exact=True).count

    def chunk_paths(self) -> dict[str, int]:
        if not self._ready:
            return {}
        res = self._client.facet(self.collection, key="path", limit=10_000_000, exact=True)
        return {str(h.value): int(h.count) for h in res.hits}

    def chunks_of(self, path: str, *, groups_any: Sequence[str] | None = None) -> list[Hit]:
        if not self._ready:
            return []
        flt = _filter(SearchFilter(groups_any=tuple(groups_any) if groups_any is not None else None), path)
        hits: list[Hit] = []
        offset = None
        while True:
            recs, offset = self._client.scroll(
                self.collection, scroll_filter=flt, limit=_SCROLL_PAGE, offset=offset,
                with_payload=True, with_vectors=False,
            )
            hits += [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in recs]
            if offset is None:
                return sorted(hits, key=lambda h: h.payload.get("chunk_index", 0))

    @property
    def has_sparse(self) -> bool:
        if self._has_sparse is None:
            self._has_sparse = (self.meta() or {}).get("sparse") == SPARSE
        return self._has_sparse

    @property
    def has_windows(self) -> bool:
        """From the collection's schema: collections created before window vectors have none."""
        if self._has_windows is None:
            vectors = self._client.get_collection(self.collection).config.params.vectors if self._ready else None
            self._has_windows = isinstance(vectors, dict) and WINDOWS in vectors
        return self._has_windows

    def vectors(self, ids: Sequence[str]) -> dict[str, list[float]]:
        if not self._ready or not ids:
            return {}
        recs = self._client.retrieve(self.collection, list(ids), with_payload=False, with_vectors=[DENSE])
        return {str(r.id): list(dense_vector(r.vector, DENSE)) for r in recs if r.vector}

    def search(self, vector: Sequence[float], limit: int, flt: SearchFilter | None = None) -> list[Hit]:
        return self.query(vector, limit, flt)

    def query(self, vector: Sequence[float], limit: int, flt: SearchFilter | None = None, *,
              sparse: SparseVector | None = None, mode: SearchMode = "dense", rrf_k: int = 5,
              prefetch: int | None = None, payload: bool = True) -> list[Hit]:
        if not self._ready:
            return []
        dense_q = [float(x) for x in vector]
        if mode == "dense" or not self.has_sparse:
            res = self._client.query_points(self.collection, query=dense_q, using=DENSE, limit=limit,
                                            query_filter=_filter(flt), search_params=self._search_params(flt is not None),
                                            with_payload=payload, with_vectors=False)
            return [Hit(str(p.id), float(p.score), dict(p.payload or {}), float(p.score)) for p in res.points]
        sparse_q = models.SparseVector(indices=list(sparse.indices) if sparse else [],
                                       values=list(sparse.values) if sparse else [])
        if mode == "sparse":
            res = self._client.query_points(self.collection, query=sparse_q, using=SPARSE, limit=limit,
                                            query_filter=_filter(flt), with_payload=payload, with_vectors=False)
        else:
            n = max(prefetch or 0, limit)
            # The filter is pushed into both prefetches (applied while searching, not afterwards).
            res = self._client.query_points(
                self.collection, limit=limit, query_filter=_filter(flt), with_payload=payload, with_vectors=False,
                prefetch=[models.Prefetch(query=dense_q, using=DENSE, limit=n, params=self._search_params(flt is not None)),
                          models.Prefetch(query=sparse_q, using=SPARSE, limit=n)],
                query=models.RrfQuery(rrf=models.Rrf(k=rrf_k)),
            )
        sims = self.cosines(dense_q, [p.id for p in res.points])
        return [Hit(str(p.id), float(p.score), dict(p.payload or {}), sims.get(str(p.id))) for p in res.points]

    def cosines(self, vector: Sequence[float], ids: Sequence[Any], flt: SearchFilter | None = None) -> dict[str, float]:
        """The server scores them: reading ~100 vectors back and comparing them in Python cost more than the search."""
        if not ids:
            return {}
        return self._scores_by_id([float(x) for x in vector], DENSE, ids, flt)

    def window_cosines(self, vector: Sequence[float], ids: Sequence[Any],
                       flt: SearchFilter | None = None) -> dict[str, float]:
        if not ids or not self._ready or not self.has_windows:
            return {}
        # A multivector query of one vector: each chunk scores by its best window (MAX_SIM).
        return self._scores_by_id([[float(x) for x in vector]], WINDOWS, ids, flt)

    def _scores_by_id(self, query: list[float] | list[list[float]], using: str, ids: Sequence[Any],
                      flt: SearchFilter | None) -> dict[str, float]:
        """``query``'s score of each of these chunks inside ``flt``, exactly (a graph or a quantized copy ignored)."""
        # Local mode always searches exactly (and warns about any search parameter).
        exact = search_params(models, "exact", self._index, False) if self.backend == "qdrant-server" else None
        must = [models.HasIdCondition(has_id=list(ids)), *_conditions(flt)]
        res = self._client.query_points(self.collection, query=query, using=using, limit=len(ids),
                                        query_filter=models.Filter(must=must), search_params=exact,
                                        with_payload=False, with_vectors=False)
        return {str(p.id): float(p.score) for p in res.points}

    def payloads(self, ids: Sequence[str], flt: SearchFilter | None = None) -> dict[str, dict[str, Any]]:
        if not self._ready or not ids:
            return {}
        must = [models.HasIdCondition(has_id=list(ids)), *_conditions(flt)]
        recs, _ = self._client.scroll(self.collection, scroll_filter=models.Filter(must=must), limit=len(ids),
                                      with_payload=True, with_vectors=False)
        return {str(r.id): dict(r.payload or {}) for r in recs}

    def set_groups(self, path: str, groups: Sequence[str], access: dict[str, Any] | None = None) -> None:
        if not self._ready:
            return
        self._client.set_payload(self.collection, {"groups": list(groups)},
                                 points=models.FilterSelector(filter=_path_filter(path)), wait=True)
        rec = self.get_document(path)
        if rec is not None:
            rec.groups = list(groups)
            if access is not None:
                rec.access = access
            self.put_document(rec)


def _quantization(kind: IndexKind) -> models.ScalarQuantization | None:
    if kind != "hnsw-int8":
        return None
    return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
        type=models.ScalarType.INT8, quantile=0.99, always_ram=True))


def _vectors(p: ChunkPoint, sparse: bool, windows: bool) -> dict[str, Any]:
    v: dict[str, Any] = {DENSE: [float(x) for x in p.vector]}
    if sparse and p.sparse:
        v[SPARSE] = models.SparseVector(indices=list(p.sparse.indices), values=list(p.sparse.values))
    if windows and p.windows is not None and len(p.windows):
        v[WINDOWS] = [[float(x) for x in w] for w in p.windows]
    return v
