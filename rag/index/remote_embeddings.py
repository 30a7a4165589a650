"""Text embeddings from an OpenAI-compatible embeddings server (``RAG_EMBEDDING_URL``): vLLM, Hugging Face TEI,
Ollama, Infinity all serve ``POST /v1/embeddings`` ``{"model", "input": [...]}`` -> ``{"data": [{"index",
"embedding"}]}``.

Chunks stay token-exact: the OpenAI API has no tokenizer route, and vLLM's ``/tokenize`` gives token ids but no
character offsets (checked in vLLM 0.32's source), which chunking needs. So a local Hugging Face tokenizer of
the served model cuts the text (``RAG_EMBEDDING_TOKENIZER``, default ``RAG_EMBEDDING_MODEL``), and where the
server offers ``/tokenize`` it is checked once against the server's: a different tokenizer would make chunks
the server truncates. The server's ``max_model_len`` (vLLM's ``/v1/models``), when it says one, bounds the
chunk size.

Texts longer than the model takes (a long question) are cut to fit before they are sent, as the local backend's
sentence-transformers does: servers refuse them instead (vLLM answers 400).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from rag import offline
from rag.errors import EmbeddingModelError
from rag.http_errors import server_message
from rag.index.model_path import resolve_model_path
from rag.index.tokens import TokenCounter
from rag.security.audit import safe_endpoint
from rag.urls import secret_url

log = logging.getLogger(__name__)

#: Statuses worth another try: the server is overloaded, restarting or behind a proxy that lost it.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Words, punctuation, accents, CJK, an emoji and a contraction: tokenizers that differ at all differ here.
_PROBE = "Tokenizer check: naïve café, 1,234.5 km² — résumé's ÆØÅ 東京 😀 don't re-embed?"


def embeddings_url(url: str) -> str:
    """``…/embeddings`` as given; any other URL is a base that gets ``/embeddings`` (``/v1`` -> ``/v1/embeddings``)."""
    url = url.rstrip("/")
    return url if url.endswith("/embeddings") else url + "/embeddings"


class RemoteEmbedder:
    """An :class:`rag.index.embeddings.Embedder` whose vectors come from an embeddings server, in batches of
    ``batch_size`` texts with up to ``concurrency`` requests in flight."""

    backend = "endpoint"

    def __init__(self, url: str, *, model: str, api_key: str | None = None, tokenizer: str | None = None,
                 model_explicit: bool = True, query_prompt: str = "", passage_prompt: str = "",
                 batch_size: int = 64, concurrency: int = 4, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, connect_timeout: float = 5.0) -> None:
        # Requests go to the bare URL; its user info and query (credentials) are added by the client.
        conn = secret_url(url)
        self.url = embeddings_url(conn.bare)
        self.shown_url = safe_endpoint(self.url) or "?"
        self._api_base = self.url[: -len("/embeddings")]
        self.query_prompt, self.passage_prompt = query_prompt, passage_prompt
        self.batch_size, self.concurrency = batch_size, concurrency
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                  headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                                  limits=httpx.Limits(max_connections=max(concurrency, 2)),
                                  **conn.client_kwargs())
        try:
            served = self._served_models()
            self.model_name = _pick_model(model, served, model_explicit, self.shown_url)
            info = next((m for m in served if m.get("id") == self.model_name), {})
            self._tokenizer, seq_len = _load_tokenizer(tokenizer or self.model_name)
            self._tokens = TokenCounter(self._tokenizer)
            server_len = self._check_tokenizer(tokenizer or self.model_name)
            limits = [n for n in (info.get("max_model_len"), server_len, seq_len) if isinstance(n, int) and n > 0]
            max_len = min(limits) if limits else 512
            specials = self._tokenizer.num_special_tokens_to_add()
            self.max_tokens = max_len - specials - self.count_tokens(passage_prompt)
            self._query_max = max_len - specials - self.count_tokens(query_prompt)
            self.dimension = int(self._request([passage_prompt + "dimension probe"]).shape[1])
        except BaseException:
            self._http.close()
            raise
        log.info("embeddings from %s, model %s: %d dimensions, chunks up to %d tokens", self.shown_url,
                 self.model_name, self.dimension, self.max_tokens)

    # --- tokens (local tokenizer of the served model) -----------------------------------------------
    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return self._tokens.token_offsets(text)

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text)

    def _fit(self, text: str, limit: int) -> str:
        """``text`` cut after ``limit`` tokens: what sentence-transformers' truncation keeps."""
        offsets = self.token_offsets(text)
        return text if len(offsets) <= limit else text[: offsets[limit - 1][1]]

    # --- vectors ----------------------------------------------------------------------------------
    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        inputs = [self.passage_prompt + self._fit(t, self.max_tokens) for t in texts]
        if not inputs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = [inputs[i:i + self.batch_size] for i in range(0, len(inputs), self.batch_size)]
        if len(batches) == 1 or self.concurrency == 1:
            parts = [self._request(b) for b in batches]
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(batches)), thread_name_prefix="embed") as pool:
                parts = list(pool.map(self._request, batches))
        return np.concatenate(parts)

    def embed_query(self, text: str) -> np.ndarray:
        return self._request([self.query_prompt + self._fit(text, self._query_max)])[0]

    def close(self) -> None:
        self._http.close()

    def _request(self, inputs: list[str]) -> np.ndarray:
        resp = self._send("POST", self.url, {"model": self.model_name, "input": inputs, "encoding_format": "float"})
        try:
            rows = sorted(resp.json()["data"], key=lambda r: int(r["index"]))
            vecs = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingModelError(
                f"the answer of {self.shown_url} is not an embeddings response ({resp.text[:120]!r}); is "
                "RAG_EMBEDDING_URL the /v1 base of an OpenAI-compatible embeddings server?") from exc
        if vecs.ndim != 2 or len(vecs) != len(inputs):
            raise EmbeddingModelError(f"the embeddings server {self.shown_url} returned {len(vecs)} vectors for "
                                      f"{len(inputs)} texts; check the server's log")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.where(norms == 0, 1.0, norms)  # unit length, whether or not the server normalizes

    # --- HTTP -------------------------------------------------------------------------------------
    def _send(self, method: str, url: str, body: dict[str, Any] | None = None, *,
              expected: frozenset[int] = frozenset()) -> httpx.Response:
        """The response (2xx, or a status in ``expected``), after up to ``retries`` more tries with exponential
        backoff on connection failures, timeouts and 408/429/5xx; otherwise an error a user can act on."""
        where = f"the embeddings server {self.shown_url}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = self._http.request(method, url, json=body)
            except httpx.TimeoutException as exc:
                if last:
                    raise EmbeddingModelError(
                        f"{where} did not answer within {self.timeout:g} s ({self.retries + 1} tries): raise "
                        "RAG_EMBEDDING_URL_TIMEOUT or lower RAG_EMBEDDING_URL_BATCH_SIZE") from exc
            except httpx.TransportError as exc:
                if last:
                    raise EmbeddingModelError(
                        f"cannot reach {where} ({exc.__class__.__name__}, {self.retries + 1} tries): is the server "
                        "running? Check RAG_EMBEDDING_URL, or unset it to embed with the local model") from exc
            else:
                if resp.status_code < 400 or resp.status_code in expected:
                    return resp
                if resp.status_code not in RETRY_STATUSES or last:
                    raise self._http_error(resp, tries=attempt + 1)
            delay = self.backoff * 2 ** attempt
            log.warning("%s: try %d of %d failed; again in %.1f s", where, attempt + 1, self.retries + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _http_error(self, resp: httpx.Response, tries: int) -> EmbeddingModelError:
        status, msg = resp.status_code, server_message(resp)
        where = f"the embeddings server {self.shown_url}"
        if status in (401, 403):
            return EmbeddingModelError(f"{where} refused the request (HTTP {status}: {msg}): set "
                                       "RAG_EMBEDDING_API_KEY")
        if status == 404:
            return EmbeddingModelError(f"{where} has no such route or model (HTTP 404: {msg}); check "
                                       "RAG_EMBEDDING_URL (the /v1 base) and RAG_EMBEDDING_MODEL")
        if status == 413:
            return EmbeddingModelError(f"{where} refused a request as too large (HTTP 413: {msg}); lower "
                                       "RAG_EMBEDDING_URL_BATCH_SIZE")
        if status >= 500 or status in RETRY_STATUSES:
            return EmbeddingModelError(f"{where} failed (HTTP {status}: {msg}, {tries} tries); check the "
                                       "server's log")
        return EmbeddingModelError(f"{where} refused the request (HTTP {status}: {msg}); is RAG_EMBEDDING_MODEL "
                                   "an embedding model the server runs as one (vLLM: --runner pooling)?")

    def _served_models(self) -> list[dict[str, Any]]:
        """``/v1/models``'s entries; empty when the server has no such route (it then takes the name as given)."""
        resp = self._send("GET", self._api_base + "/models", expected=frozenset({404, 405}))
        if resp.status_code >= 400:
            return []
        try:
            return [m for m in resp.json().get("data", []) if isinstance(m, dict) and m.get("id")]
        except (ValueError, AttributeError):
            return []

    def _check_tokenizer(self, name: str) -> int | None:
        """Compare the local tokenizer with the server's on a probe (vLLM's ``/tokenize``); the server's
        ``max_model_len`` if it said one. Servers without the route are taken on trust."""
        root = self._api_base[:-3] if self._api_base.endswith("/v1") else self._api_base
        body = {"model": self.model_name, "prompt": _PROBE, "add_special_tokens": False}
        resp = self._send("POST", root + "/tokenize", body, expected=frozenset({400, 404, 405, 422}))
        try:
            data = resp.json() if resp.status_code < 400 else None
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            log.info("%s has no /tokenize route: the local tokenizer %s is trusted to match", self.shown_url, name)
            return None
        mine = self._tokens.token_ids(_PROBE)
        if mine != data["tokens"]:
            raise EmbeddingModelError(
                f"the tokenizer {name!r} is not the one of {self.model_name!r} on {self.shown_url} (a probe text "
                f"gives {len(mine)} tokens here, {len(data['tokens'])} there), so chunks would not fit what the "
                "server embeds: set RAG_EMBEDDING_TOKENIZER to a local folder with the served model's tokenizer")
        n = data.get("max_model_len")
        return int(n) if isinstance(n, int) else None


def _pick_model(model: str, served: list[dict[str, Any]], explicit: bool, shown_url: str) -> str:
    """``model`` if the server serves it (or does not say what it serves); its only model when ``model`` is the
    unset default; otherwise an error listing what it serves."""
    ids = [str(m["id"]) for m in served]
    if not ids or model in ids:
        return model
    if not explicit and len(ids) == 1:
        return ids[0]
    raise EmbeddingModelError(
        f"the embeddings server {shown_url} does not serve {model!r}; it serves {', '.join(map(repr, ids))}: set "
        "RAG_EMBEDDING_MODEL to one of them")


def _load_tokenizer(name: str) -> tuple[Any, int | None]:
    """A fast (offset-giving) Hugging Face tokenizer from a local folder or the cache, and the sentence-
    transformers sequence length of that folder (``sentence_bert_config.json``) when it has one."""
    offline.apply()
    path = resolve_model_path(name)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EmbeddingModelError(
            f"cannot load a tokenizer for {name!r} ({exc.__class__.__name__}): chunks are cut token-exact with the "
            "served model's own tokenizer, and the embeddings API has none to lend. Set RAG_EMBEDDING_TOKENIZER to "
            "a local folder with that model's tokenizer files (tokenizer.json...), e.g. a copy of the folder the "
            "server loads, or to a name in the Hugging Face cache") from exc
    if not tok.is_fast:
        raise EmbeddingModelError(f"the tokenizer of {name!r} is a slow (Python) one that gives no character "
                                  "offsets; set RAG_EMBEDDING_TOKENIZER to a folder with a tokenizer.json")
    seq_len = None
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        seq_len = json.loads(st_config.read_text()).get("max_seq_length")
    limits = [n for n in (seq_len, getattr(tok, "model_max_length", None)) if isinstance(n, int) and 0 < n < 10**6]
    return tok, min(limits) if limits else None
