"""Parsing, chunking and embedding fanned out over a Ray cluster (``rag ingest --ray``); the store stays the driver's.

The ingesting process (the Ray driver) keeps everything that touches the store: the walk, access, hashing and the
unchanged check, and every write, through the same code as a single-process run (ingest/pipeline.py). Only a stale
file leaves it, as one Ray task that returns the file's document, chunks and vectors. So ids, payloads and records
are a single-process run's by construction, and crash safety is unchanged: a task writes nothing, so a worker
killed mid-task costs a retry (Ray reruns a task whose worker died, up to ``MAX_RETRIES`` times) and nothing else.

The driver never loads the embedding model: a worker reports its name, dimension and token limit
(``describe_model``), which is all the store and the config signature need.

Each Ray worker process keeps one embedder (the local model, or RAG_EMBEDDING_URL's server) and one ParseWorker,
so the sandbox's limits (memory, wall time per file) hold on the cluster as they do here. Tasks carry paths, not
bytes, and the code is not shipped: every node needs this project's environment (the same venv or image) and the
documents at the same path (a shared or synced folder). The driver's settings go with every task.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayError

from ingest.chunking import Chunk
from ingest.parsers import ParsedDocument
from ingest.prepare import Work, parse_and_chunk
from ingest.sandbox import ParseWorker
from rag.errors import ClusterError, EmbeddingModelError
from rag.index.embeddings import Embedder, ModelFacts, get_embedder
from rag.index.windows import embed_windows
from rag.settings import Settings

log = logging.getLogger(__name__)

#: Ray's default for tasks, said out loud: a file whose workers die this many times more is reported as failed.
MAX_RETRIES = 3

#: Tasks in flight per CPU of the cluster: enough to keep every worker busy while the driver writes, few enough
#: that results waiting for the driver do not pile up in memory.
IN_FLIGHT_PER_CPU = 2

_parsers: dict[str, ParseWorker] = {}  # one per worker process and settings (its sandbox process lives on)


#: CPUs each task asks Ray for; Ray runs as many tasks on a node at once as it has CPUs.
TASK_CPUS = 1


def _worker_settings(settings: Settings) -> Settings:
    """The driver's settings, with the embedder held to the task's share of the node unless RAG_EMBEDDING_THREADS
    says otherwise. Ray sets OMP_NUM_THREADS for torch, but ONNX Runtime sizes its thread pool to every core of the
    node, so with one task per core each one would run as many threads as the node has cores. Measured on 2 cores,
    60 files: 2 workers took 147 s with a pool of 2 each, against 137 s for 1 worker (bench/README.md)."""
    if settings.embedding_threads is not None:
        return settings
    return settings.model_copy(update={"embedding_threads": TASK_CPUS})


def _tools(settings: Settings) -> tuple[Embedder, ParseWorker]:
    settings = _worker_settings(settings)
    key = settings.model_dump_json()
    if key not in _parsers:
        _parsers[key] = ParseWorker(settings)
    return get_embedder(settings, batch=True), _parsers[key]


@ray.remote(max_retries=MAX_RETRIES, num_cpus=TASK_CPUS)
def prepare_file(path: str, settings: Settings) -> tuple[ParsedDocument | None, list[Chunk], str | None,
                                                         np.ndarray | None, list[np.ndarray | None] | None]:
    """Runs on a Ray worker: the single-process run's parse and chunk, then the chunks' vectors (and their
    windows' with RAG_DENSE_WINDOWS: the driver checked that the store takes them)."""
    embedder, parser = _tools(settings)
    doc, chunks, error = parse_and_chunk(Path(path), settings, embedder, parser)
    texts = [c.text for c in chunks]
    vectors = embedder.embed_documents(texts) if chunks else None
    windows = embed_windows(embedder, texts, settings.dense_windows) if chunks and settings.dense_windows else None
    return doc, chunks, error, vectors, windows


@ray.remote(max_retries=MAX_RETRIES, num_cpus=TASK_CPUS)
def describe_model(settings: Settings) -> ModelFacts:
    """Runs on a Ray worker, which loads the model it will embed with anyway: the driver needs only these facts."""
    return ModelFacts.of(_tools(settings)[0], settings)


def _check_reachable(address: str) -> None:
    """A host:port nobody listens on fails here at once; ray.init would retry it for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "local", "auto", ray://...: Ray's own checks
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} (RAG_INGEST_RAY / --ray): {exc}. Check the "
                           "head node's address and port (`ray status` on it), or use --ray local.") from None


def _cluster_errors_to_stderr() -> None:
    """Ray prints the cluster's error messages ("a worker died ...") on the driver's stdout, which is where
    ``rag ingest --json`` writes its report; they go to stderr instead. Ray has no setting for it, so this wraps
    its private printer, and does nothing on a Ray without one."""
    from ray._private import worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "_rag_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr._rag_stderr = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


class RayFanOut:
    """Connects to the cluster named by ``settings.ingest_ray`` ("local": one started for this run and stopped
    with it) and prepares stale files there, as many at a time as it has CPUs (times ``IN_FLIGHT_PER_CPU``).

    The driver does not load the embedding model: a worker reports its name, dimension and token limit
    (``describe_model``), unless the caller passed an ``embedder`` of its own. That keeps the driver small (a
    Kubernetes head pod, the compose loop) and spares it the model's files and its one-time export."""

    #: Every chunk comes back with its vector: nothing is embedded on the driver.
    embedder: Embedder | None = None

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        address = settings.ingest_ray or "local"
        self.own = not ray.is_initialized()
        if self.own:
            _check_reachable(address)
            _cluster_errors_to_stderr()
            try:
                # Workers' logs stay on the cluster: they would break the progress bar; the driver reports failures.
                ray.init(address=address, log_to_driver=False, include_dashboard=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"cannot reach the Ray cluster at {address!r} (RAG_INGEST_RAY / --ray): {exc}. "
                                      "Start it with `ray start --head`, or use --ray local.") from exc
        self.window = max(1, int(ray.cluster_resources().get("CPU", 1)) * IN_FLIGHT_PER_CPU)
        self.pending: dict[ray.ObjectRef, Work] = {}
        self._lock = threading.Lock()  # the parse thread submits and collects; close() cancels from the main one
        try:
            self.model = (ModelFacts.of(embedder, settings) if embedder is not None
                          else ray.get(describe_model.remote(settings)))
        except RayError as exc:
            self.close()
            cause = getattr(exc, "cause", None)  # the worker's own exception, without Ray's traceback
            if isinstance(cause, EmbeddingModelError):
                raise EmbeddingModelError(f"on the Ray workers: {cause} Every node needs the model at the same "
                                          "path (the same venv or image).") from None
            raise ClusterError(f"the Ray workers could not load the embedding model {settings.embedding_model!r} "
                               f"({exc.__class__.__name__}); `ray logs` on the head shows why. Every node needs this "
                               "project's environment and the model (the same venv or image).") from exc
        except BaseException:
            self.close()
            raise

    def produce(self, files: list[Path], check: Callable[[Path], Work], put: Callable[[Work | None], bool],
                stop: threading.Event) -> None:
        try:
            for f in files:
                if stop.is_set():
                    return
                w = check(f)
                if not w.stale:
                    if not put(w):
                        return
                    continue
                with self._lock:
                    self.pending[prepare_file.remote(w.path, self.settings)] = w
                while len(self.pending) >= self.window:
                    if not self._collect(put, stop):
                        return
            while self.pending:
                if not self._collect(put, stop):
                    return
        except Exception:
            if not stop.is_set():
                raise
            # close() shut Ray down under a wait: the run is over anyway
        finally:
            put(None)

    def _collect(self, put: Callable[[Work | None], bool], stop: threading.Event) -> bool:
        """Hands whatever finished (waiting up to a moment) to the driver; False once the run is stopping."""
        with self._lock:
            refs = list(self.pending)
        done, _ = ray.wait(refs, num_returns=1, timeout=0.5)
        for ref in done:
            with self._lock:
                w = self.pending.pop(ref, None)
            if w is None:  # cancelled by close()
                return False
            try:
                w.doc, w.chunks, w.error, w.vectors, w.windows = ray.get(ref)
            except RayError as exc:  # its retries ran out (workers killed each time), or Ray itself failed
                log.debug("Ray task for %s failed", w.path, exc_info=True)
                w.error = f"Ray worker failed ({exc.__class__.__name__}); ingest again to retry"
            if not put(w):
                return False
        return not stop.is_set()

    def close(self) -> None:
        """Cancels what is still running; the run's own cluster is stopped with it."""
        with self._lock:
            for ref in self.pending:
                ray.cancel(ref, force=True)
            self.pending.clear()
        if self.own:
            self.own = False
            ray.shutdown()
