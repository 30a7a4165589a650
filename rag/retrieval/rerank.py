"""Optional reranking of retrieved chunks by a cross-encoder, which reads the question and a chunk together.

Two ways to run one, both off by default (no cross-encoder ships its weights in a PyPI package):
- ``CrossEncoderReranker``: a sentence-transformers ``CrossEncoder`` from a local folder, on this machine's CPU
  (``RAG_RERANK_MODEL``).
- ``EndpointReranker``: a reranking server (``RAG_RERANK_URL``). Two request formats exist; both were checked
  against the servers' own source:
  - ``cohere`` (vLLM ``/rerank``, ``/v1/rerank``; llama.cpp server, Infinity): ``POST {"model"?, "query",
    "documents": [...], "top_n"}`` -> ``{"results": [{"index", "relevance_score"}, ...]}``;
  - ``tei`` (Hugging Face text-embeddings-inference ``/rerank``): ``POST {"query", "texts": [...],
    "raw_scores": false, "truncate": true}`` -> ``[{"index", "score"}, ...]``.
  ``auto`` sends the cohere format first and switches to tei for good if the server rejects the body (400/422).

The retriever applies a reranker to the fused candidates that survived the relevance threshold
(:class:`rag.retrieval.retriever.Retriever`); the store never knows about it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from rag import offline
from rag.security.audit import safe_endpoint
from rag.urls import secret_url
from rag.errors import RerankError
from rag.http_errors import server_message
from rag.settings import Settings

log = logging.getLogger(__name__)


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, text) pairs; higher is more relevant. Only the order matters to the retriever."""

    #: What reranks, for `rag search`, timings and logs (never contains a secret).
    name: str

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in the order of ``texts``."""
        ...


# --- a local cross-encoder ---------------------------------------------------------------------------------
class CrossEncoderReranker:
    def __init__(self, model: str, *, batch_size: int = 32, threads: int | None = None) -> None:
        offline.apply()
        import torch

        if threads:
            torch.set_num_threads(threads)  # per process: shared with the torch embedding backend
        self.batch_size = batch_size
        target = _check_cross_encoder(model)
        self.name = f"cross-encoder {model}"
        from sentence_transformers import CrossEncoder

        try:
            self._model = CrossEncoder(target, device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RerankError(f"cannot load the cross-encoder RAG_RERANK_MODEL={model!r} "
                              f"({exc.__class__.__name__}: {str(exc)[:200]}); point it at a complete "
                              "sentence-transformers or Hugging Face model folder") from exc
        # The fast tokenizer is reconfigured while it encodes; the UI serves several sessions from threads.
        self._lock = threading.Lock()

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        with self._lock:
            scores = self._model.predict([(query, t) for t in texts], batch_size=self.batch_size,
                                         show_progress_bar=False, convert_to_numpy=True)
        if scores.ndim > 1:  # a two-label relevance classifier: "relevant" over "not", as a logit
            scores = scores[:, -1] - scores[:, 0]
        return [float(s) for s in scores]


def _check_cross_encoder(model: str) -> str:
    """The folder or cached name to load, after checking it is a model that scores pairs. Loading anything
    else would "work": sentence-transformers puts an untrained classification head on an embedding model."""
    from transformers import AutoConfig

    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").exists():
        raise RerankError(f"RAG_RERANK_MODEL={model!r} is a folder but not a Hugging Face model (no config.json); "
                          "point it at the folder that holds the cross-encoder's config.json and weights")
    target = str(path) if path.exists() else model
    try:
        config = AutoConfig.from_pretrained(target, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RerankError(
            f"RAG_RERANK_MODEL={model!r} is neither a folder on this machine nor a model in the Hugging Face cache, "
            "and models are never downloaded here. Copy a cross-encoder (e.g. BAAI/bge-reranker-base or "
            "cross-encoder/ms-marco-MiniLM-L6-v2) into a folder and set RAG_RERANK_MODEL to it, or use a reranking "
            "endpoint (RAG_RERANK_URL)"
        ) from exc
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith(("ForSequenceClassification", "ForCausalLM")) for a in archs):
        raise RerankError(
            f"RAG_RERANK_MODEL={model!r} is a {archs[0]}, not a cross-encoder: a reranker is a sequence-"
            "classification model that scores (question, passage) pairs, such as BAAI/bge-reranker-base or "
            "cross-encoder/ms-marco-MiniLM-L6-v2 (an embedding model goes in RAG_EMBEDDING_MODEL)"
        )
    labels = getattr(config, "num_labels", 1)
    if not any(a.endswith("ForCausalLM") for a in archs) and labels > 2:
        raise RerankError(f"RAG_RERANK_MODEL={model!r} classifies into {labels} labels (e.g. an NLI model), it "
                          "does not score relevance; use a reranker with one output")
    return target


# --- a reranking endpoint ----------------------------------------------------------------------------------
FORMATS = ("cohere", "tei")


class EndpointReranker:
    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None, api: str = "auto",
                 batch_size: int = 32, timeout: float = 30.0, connect_timeout: float = 5.0) -> None:
        if api not in ("auto", *FORMATS):
            raise ValueError(f"api must be auto, cohere or tei, not {api!r}")
        # Requests go to the bare URL; its user info and query (credentials) are added by the client.
        conn = secret_url(url)
        self.url = _rerank_url(conn.bare)
        self.shown_url = safe_endpoint(self.url)
        self.model = model
        self.api = api  # "auto" until a format worked once
        self.batch_size = batch_size
        self.timeout = timeout
        self.name = f"endpoint {self.shown_url}" + (f" ({model})" if model else "")
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                  headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                                  **conn.client_kwargs())

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            scores += self._score(query, list(texts[start:start + self.batch_size]))
        return scores

    def close(self) -> None:
        self._http.close()

    def _score(self, query: str, texts: list[str]) -> list[float]:
        tried: list[str] = []
        for fmt in FORMATS if self.api == "auto" else (self.api,):
            resp = self._post(self._body(fmt, query, texts))
            if resp.status_code < 400:
                scores = self._parse(resp, len(texts))
                if self.api == "auto":
                    log.info("reranking endpoint %s speaks the %s format", self.shown_url, fmt)
                    self.api = fmt
                return scores
            # Only a rejected body says "wrong format"; auth, missing routes and server failures do not.
            if self.api == "auto" and resp.status_code in (400, 422):
                tried.append(f"{fmt} format: HTTP {resp.status_code}: {server_message(resp)}")
                continue
            raise self._http_error(resp)
        raise RerankError(f"the reranking endpoint {self.shown_url} rejected both request formats ("
                          + "; ".join(tried) + "). Is it a reranking server with a reranker model loaded? If it "
                          "is, set RAG_RERANK_API to the format it speaks")

    def _body(self, fmt: str, query: str, texts: list[str]) -> dict[str, Any]:
        if fmt == "tei":
            # truncate: TEI otherwise refuses a pair longer than the model takes instead of cutting it.
            return {"query": query, "texts": texts, "raw_scores": False, "truncate": True}
        body: dict[str, Any] = {"query": query, "documents": texts, "top_n": len(texts)}
        if self.model:
            body["model"] = self.model
        return body

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._http.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise RerankError(f"the reranking endpoint {self.shown_url} did not answer within {self.timeout:g} s: "
                              "raise RAG_RERANK_TIMEOUT or lower RAG_RERANK_CANDIDATES") from exc
        except httpx.TransportError as exc:
            raise RerankError(f"cannot reach the reranking endpoint {self.shown_url} ({exc.__class__.__name__}): "
                              "is the server running? Check RAG_RERANK_URL, or unset it to retrieve without "
                              "reranking") from exc

    def _parse(self, resp: httpx.Response, n: int) -> list[float]:
        try:
            data = resp.json()
            rows = data["results"] if isinstance(data, dict) else data
            pairs = {int(r["index"]): float(r["relevance_score"] if "relevance_score" in r else r["score"])
                     for r in rows}
        except (ValueError, KeyError, TypeError) as exc:
            raise RerankError(f"the answer of {self.shown_url} is not a rerank response ({resp.text[:120]!r}); "
                              "is RAG_RERANK_URL the reranking route of a vLLM, TEI or llama.cpp server?") from exc
        if sorted(pairs) != list(range(n)):
            raise RerankError(f"the reranking endpoint {self.shown_url} scored {len(pairs)} of {n} texts; "
                              "check the server's log")
        return [pairs[i] for i in range(n)]

    def _http_error(self, resp: httpx.Response) -> RerankError:
        status, msg = resp.status_code, server_message(resp)
        where = f"the reranking endpoint {self.shown_url}"
        if status in (401, 403):
            return RerankError(f"{where} refused the request (HTTP {status}: {msg}): set RAG_RERANK_API_KEY")
        if status == 404:
            return RerankError(f"{where} has no such route or model (HTTP 404: {msg}); check RAG_RERANK_URL "
                               "(vLLM and TEI serve <server>/rerank) and RAG_RERANK_MODEL")
        if status == 413:
            return RerankError(f"{where} refused a request as too large (HTTP 413: {msg}); lower "
                               "RAG_RERANK_BATCH_SIZE to the server's limit")
        if status >= 500:
            return RerankError(f"{where} failed (HTTP {status}: {msg}); check the server's log")
        return RerankError(f"{where} refused the request (HTTP {status}: {msg})")


def _rerank_url(url: str) -> str:
    """``…/rerank`` as given; any other URL is a base that gets ``/rerank`` (vLLM: ``/v1`` -> ``/v1/rerank``)."""
    url = url.rstrip("/")
    return url if url.endswith("/rerank") else url + "/rerank"


# --- from settings -----------------------------------------------------------------------------------------
def describe(settings: Settings) -> str:
    """What reranks, without loading or calling it (for `rag status`)."""
    if settings.rerank_url:
        model = f", model {settings.rerank_model}" if settings.rerank_model else ""
        return (f"endpoint {safe_endpoint(_rerank_url(settings.rerank_url))} ({settings.rerank_api} format"
                f"{model}), best {settings.rerank_candidates} chunks")
    if settings.rerank_model:
        return f"cross-encoder {settings.rerank_model}, best {settings.rerank_candidates} chunks"
    return "off"


_cache: dict[tuple, Reranker] = {}
_cache_lock = threading.Lock()


def get_reranker(settings: Settings) -> Reranker | None:
    """The configured reranker, or None (the default: neither RAG_RERANK_URL nor RAG_RERANK_MODEL set).

    One per configuration per process: a cross-encoder takes seconds and hundreds of MB to load, and the UI
    builds a new retriever whenever a setting changes."""
    if settings.rerank_url:
        key: tuple = ("endpoint", settings.rerank_url, settings.rerank_model, settings.rerank_api,
                      settings.rerank_api_key.get_secret_value() if settings.rerank_api_key else None,
                      settings.rerank_batch_size, settings.rerank_timeout)
    elif settings.rerank_model:
        key = ("local", settings.rerank_model, settings.rerank_batch_size, settings.embedding_threads)
    else:
        return None
    with _cache_lock:
        if key not in _cache:
            if key[0] == "endpoint":
                _cache[key] = EndpointReranker(settings.rerank_url or "", api_key=key[4], model=settings.rerank_model,
                                               api=settings.rerank_api, batch_size=settings.rerank_batch_size,
                                               timeout=settings.rerank_timeout)
            else:
                _cache[key] = CrossEncoderReranker(settings.rerank_model or "", batch_size=settings.rerank_batch_size,
                                                   threads=settings.embedding_threads)
        return _cache[key]
