"""Text embeddings: the Protocol, a local model through sentence-transformers (torch, or an int8 ONNX export of
the same model), and the choice between it and an embeddings server (RAG_EMBEDDING_URL)."""

from __future__ import annotations

import contextlib
import copy
import logging
import platform
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from filelock import FileLock

from rag import offline
from rag.errors import EmbeddingModelError
from rag.hardware import cpu_info
from rag.index import onnx_model
from rag.index.model_path import resolve_model_path
from rag.index.tokens import TokenCounter
from rag.settings import PACKAGED_EMBEDDING_MODEL, Settings

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """What ingestion and retrieval need from an embedding model."""

    model_name: str
    dimension: int
    #: Content tokens one passage may have so that nothing is truncated: the model's max sequence
    #: length minus special tokens minus the passage prompt.
    max_tokens: int

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each content token of ``text`` (no special tokens)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...

    def embed_query(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelFacts:
    """What the index and the ingest bookkeeping need to know of the embedding model, without the model: a Ray
    driver gets these from a worker (ingest/distributed.py) instead of loading the model itself."""

    model_name: str
    dimension: int
    max_tokens: int
    #: torch, onnx-int8, or endpoint: the same model's vectors differ by rounding between them.
    backend: str

    @classmethod
    def of(cls, embedder: Embedder, settings: Settings) -> ModelFacts:
        return cls(embedder.model_name, embedder.dimension, embedder.max_tokens,
                   getattr(embedder, "backend", settings.embedding_backend))


def _onnx_quantization_target() -> str:
    """The int8 kernels this CPU runs fastest. Measured here on 165-token chunks: avx512_vnni 40-46 chunks/s,
    avx2 25-30, torch fp32 31-34 — the avx2 build is no faster than fp32 on a VNNI machine."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    return "avx512_vnni" if "avx512_vnni" in cpu_info()[1] else "avx2"


class SentenceTransformerEmbedder:
    def __init__(
        self,
        model_name: str = PACKAGED_EMBEDDING_MODEL,
        *,
        backend: str = "torch",
        query_prompt: str = "",
        passage_prompt: str = "",
        batch_size: int = 32,
        models_dir: Path | None = None,
        threads: int | None = None,
        batch: bool = False,
        full: bool = False,
    ) -> None:
        """``batch``: for ingestion (many texts per call, beside parsing), not for one question at a time; with
        the int8 ONNX backend, its threads then sleep between operators instead of spinning (onnx_session_options).
        ``full``: the int8 model through sentence-transformers even where onnxruntime alone runs it
        (rag/index/onnx_model.py), for tools that need its other outputs (token vectors)."""
        offline.apply()
        self.model_name = model_name
        self.backend = backend
        self.query_prompt = query_prompt
        self.passage_prompt = passage_prompt
        self.batch_size = batch_size
        path = resolve_model_path(model_name)
        #: (folder, file) of the int8 ONNX model when that backend is used; for tools that load it themselves.
        self.onnx_model: tuple[str, str] | None = None
        try:
            if backend == "onnx-int8":
                self._model, self.onnx_model = _load_onnx_int8(path, model_name, models_dir or Path(".rag/models"),
                                                               threads, spin=not batch, full=full)
            else:
                import torch
                from sentence_transformers import SentenceTransformer

                if threads:
                    torch.set_num_threads(threads)
                self._model = SentenceTransformer(path, device="cpu")
        except (OSError, ValueError) as exc:
            raise EmbeddingModelError(
                f"cannot load embedding model {model_name!r} ({exc.__class__.__name__}: {str(exc)[:200]}). "
                "Set RAG_EMBEDDING_MODEL to a local sentence-transformers folder, or to a model already in the "
                "Hugging Face cache (this machine does not download models)."
            ) from exc
        # A separate tokenizer for counting: encode() reconfigures its own (padding/truncation) while it runs,
        # and ingestion chunks the next document in another thread at the same time.
        self._tokens = TokenCounter(copy.deepcopy(self._model.tokenizer))
        self._tokenizer = self._tokens.tokenizer
        # One encode() at a time: the model's own tokenizer is not safe to share between threads ("Already
        # borrowed"), and the API and UI answer several users at once. Counting has its own copy and lock.
        self._encode_lock = threading.Lock()
        self.dimension = int(self._model.get_embedding_dimension())
        seq = int(self._model.max_seq_length or 512)
        tok_max = getattr(self._tokenizer, "model_max_length", seq) or seq
        specials = self._tokenizer.num_special_tokens_to_add()
        self.max_tokens = min(seq, tok_max) - specials - self.count_tokens(passage_prompt)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return self._tokens.token_offsets(text)

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        # encode() sorts by length internally, so batches hold similar lengths and little padding.
        with self._encode_lock:
            vecs = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                prompt=self.passage_prompt or None,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        with self._encode_lock:
            vec = self._model.encode(
                [text],
                prompt=self.query_prompt or None,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vec[0], dtype=np.float32)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """What the one-time ONNX export makes third parties print, silenced where it is emitted, for this export only:
    sentence-transformers' "No 'model.onnx' found ... Exporting" and "Saving the exported ONNX model is heavily
    recommended" (we do save it, under the models dir), transformers' "`torch_dtype` is deprecated" (said by
    optimum's exporter, not us) and torch's TracerWarning from tracing the attention mask. Our own line says
    what is happening instead. ``rag -v`` shows them all."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    import torch

    loggers = [logging.getLogger(n) for n in ("sentence_transformers.backend.utils", "sentence_transformers",
                                              "transformers", "optimum")]
    levels = [lg.level for lg in loggers]
    from transformers.utils import logging as hf_logging

    hf_verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' own handler ignores the stdlib level we set
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        hf_logging.set_verbosity(hf_verbosity)


def onnx_session_options(threads: int | None, *, spin: bool = False):
    """ONNX Runtime session options for the int8 model. ``spin=False``: worker threads that sleep when idle.

    By default ONNX Runtime's intra-op threads spin between operators; between two small int8 matrix products that
    spinning is a large share of the CPU time they use, and on a machine shared with parsing (or other jobs) it
    takes cores from them. Measured on 320 corpus chunks at load ~7 on 2 cores: 2 threads 15.3 CPU s spinning,
    12.1 not spinning, same vectors. A single question is the opposite case: there the wake-up is the cost
    (embedding one question, quiet machine: 2.6-3.4 ms p50 spinning, 3.9-5.4 ms sleeping), so query-side
    embedders spin (``SentenceTransformerEmbedder(batch=False)``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def _load_onnx_int8(path: str, model_name: str, models_dir: Path, threads: int | None = None, *, spin: bool = False,
                    full: bool = False) -> tuple[Any, tuple[str, str]]:
    """Export the model to ONNX and quantize it to int8 once, into the models dir; reuse it afterwards, run by
    onnxruntime alone where it can (rag/index/onnx_model.py: seconds less to start), else by sentence-transformers.

    Not fused first: optimum's O2 fusions (QAttention) before quantising were tried for issue 18 and measured no
    faster here (400 corpus chunks: 12.8 CPU s either way), and a new graph would re-embed every existing index."""
    target = _onnx_quantization_target()
    # avx2/arm64 quantize activations as unsigned int8 ("quint8"), avx512_vnni as signed ("qint8").
    file_name = f"onnx/model_{'qint8' if target == 'avx512_vnni' else 'quint8'}_{target}.onnx"
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name.strip("/"))
    out = models_dir / f"{slug}-onnx-int8-{target}"  # a shared models dir may serve different CPUs
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / ".export.lock")):  # two processes starting at once export it once
        if not (out / file_name).exists():
            log.warning("preparing the embedding model %s for this CPU: int8 ONNX export under %s (once, "
                        "about 10 seconds)", model_name, out)
            from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

            tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=models_dir))
            try:
                with _quiet_export():
                    fp32 = SentenceTransformer(path, device="cpu", backend="onnx")
                    fp32.save_pretrained(str(tmp))
                    export_dynamic_quantized_onnx_model(fp32, quantization_config=target,
                                                        model_name_or_path=str(tmp))
                if out.exists():
                    shutil.rmtree(out)
                tmp.rename(out)  # atomic: a crash mid-export never leaves a half-written model in place
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    options = onnx_session_options(threads, spin=spin)
    lean = None if full else onnx_model.load(out, file_name, options)
    if lean is not None:
        return lean, (str(out), file_name)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out), device="cpu", backend="onnx", model_kwargs={
        "file_name": file_name, "session_options": options})
    return model, (str(out), file_name)


_cache: dict[tuple, Embedder] = {}
_cache_lock = threading.Lock()


def describe(settings: Settings) -> str:
    """Which backend embeds, without loading or calling it (for `rag status`)."""
    if settings.embedding_url:
        from rag.index.remote_embeddings import embeddings_url
        from rag.security.audit import safe_endpoint

        return f"endpoint {safe_endpoint(embeddings_url(settings.embedding_url.bare))}"
    return settings.embedding_backend


def get_embedder(settings: Settings, *, batch: bool = False) -> Embedder:
    """One embedder per configuration per process: loading takes seconds and hundreds of MB. With
    RAG_EMBEDDING_URL set, an embeddings server's (:mod:`rag.index.remote_embeddings`), else a local model.
    ``batch=True`` for ingestion (see SentenceTransformerEmbedder); the same vectors either way."""
    if settings.embedding_url:
        return _remote(settings)
    key = (
        settings.embedding_model,
        settings.embedding_backend,
        settings.embedding_query_prompt,
        settings.embedding_passage_prompt,
        settings.embedding_batch_size,
        settings.embedding_threads,
        batch,
        str(settings.models_dir.resolve()),
    )
    with _cache_lock:
        if key not in _cache:
            _cache[key] = SentenceTransformerEmbedder(
                settings.embedding_model,
                backend=settings.embedding_backend,
                query_prompt=settings.embedding_query_prompt,
                passage_prompt=settings.embedding_passage_prompt,
                batch_size=settings.embedding_batch_size,
                models_dir=settings.models_dir,
                threads=settings.embedding_threads,
                batch=batch,
            )
        return _cache[key]


def _remote(settings: Settings) -> Embedder:
    from rag.index.remote_embeddings import RemoteEmbedder

    api_key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None
    explicit = "embedding_model" in settings.model_fields_set
    key = ("endpoint", settings.embedding_url, settings.embedding_model, explicit, api_key,
           settings.embedding_tokenizer, settings.embedding_query_prompt, settings.embedding_passage_prompt,
           settings.embedding_url_batch_size, settings.embedding_url_concurrency, settings.embedding_url_timeout,
           settings.embedding_url_retries)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = RemoteEmbedder(
                settings.embedding_url or "", model=settings.embedding_model, api_key=api_key,
                tokenizer=settings.embedding_tokenizer, model_explicit=explicit,
                query_prompt=settings.embedding_query_prompt, passage_prompt=settings.embedding_passage_prompt,
                batch_size=settings.embedding_url_batch_size, concurrency=settings.embedding_url_concurrency,
                timeout=settings.embedding_url_timeout, retries=settings.embedding_url_retries,
            )
        return _cache[key]
