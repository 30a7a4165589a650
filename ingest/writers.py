"""Concurrent ingest runs: each announces itself in the store, so that no run sweeps another's unfinished work.

Several processes may ingest into one Qdrant server at once (a scheduled ``rag ingest``, UI uploads, on several
machines). A run stores a document's chunks before its record (the crash-safety rule of ingest/pipeline.py), so
for a while they look exactly like what a killed run leaves behind, which the start-of-run sweep deletes.
Qdrant has no compare-and-swap, so there is no lock to take; instead each run (a *writer*) keeps its own record
in the registry (``WriterRecord``: a random id, host, pid, expiry), refreshed by a timer and at every batch, and
marks every chunk it stores with its id. The sweep deletes a record-less chunk only if its writer is known to be
dead: ended, silent for ``RAG_INGEST_WRITER_TTL_S``, or a process that no longer exists in this pid namespace.
A writer the sweep does not know yet (it started after the sweep looked) is never touched.

Order matters, and each step is there for a race: writers are read before the chunks, so every chunk of a dead
writer is seen (it wrote nothing after it died); each orphan's record is read again after that, so a document a
writer finished (then ended) since the registry was read is not taken for an orphan; a dead writer's record is
dropped only once its chunks are gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from functools import cache

from rag.index.store import DocumentRecord, Store, WriterRecord

log = logging.getLogger(__name__)


@cache
def process_scope() -> str:
    """What makes pids comparable: the same boot of the same kernel and the same pid namespace (containers
    sharing a host have their own). Empty where it cannot be told (not Linux): then only the heartbeat counts."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()  # noqa: SIM115 - one read of a proc file
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def alive(w: WriterRecord, now: float) -> bool:
    """Whether a writer may still be writing: its heartbeat is fresh and, if it ran here, its process exists."""
    if w.expires <= now:
        return False
    if w.scope and w.scope == process_scope():
        try:
            os.kill(w.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            pass
    return True


class WriterLease:
    """This run's writer record, from ``with`` to its end: refreshed every TTL/5 by a timer and at each
    :meth:`refresh`; at the end it is marked ended (expiry 0), not deleted, so that whatever an interrupted run
    left unrecorded is swept by the next one, which then drops the record."""

    def __init__(self, store: Store, ttl_s: float) -> None:
        self.store, self.ttl_s = store, ttl_s
        self.record = WriterRecord(id=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                                   scope=process_scope(), started=time.time(), expires=0.0)
        self._lock = threading.Lock()  # the timer and the ingest thread: no refresh after the end
        self._ended = threading.Event()
        self._timer = threading.Thread(target=self._beat, name="rag-ingest-heartbeat", daemon=True)

    @property
    def id(self) -> str:
        return self.record.id

    def __enter__(self) -> WriterLease:
        self.refresh()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ended.set()
        self._timer.join()
        with self._lock:
            self.record.expires = 0.0
            try:
                self.store.put_writer(self.record)
            except Exception as e:  # the store may be what failed; an unmarked record simply expires
                log.warning("could not mark ingest writer %s ended: %s", self.id, e)

    def refresh(self) -> None:
        with self._lock:
            if self._ended.is_set():
                return
            self.record.expires = time.time() + self.ttl_s
            self.store.put_writer(self.record)

    def _beat(self) -> None:
        while not self._ended.wait(self.ttl_s / 5):
            try:
                self.refresh()
            except Exception as e:  # a passing outage: the next beat or batch retries, the TTL allows for it
                log.warning("ingest heartbeat failed: %s", e)


def sweep_orphans(store: Store, registry: dict[str, DocumentRecord]) -> dict[str, int]:
    """Delete the chunks without a registry record that dead writers (or runs before writers were recorded)
    left; returns the chunk count of every path, as it was before."""
    now = time.time()
    dead = [w.id for w in store.writers() if not alive(w, now)]
    counts = store.chunk_paths()
    for path in counts:
        if path not in registry and store.get_document(path) is None:
            store.delete_chunks_of_writers(path, dead)
    for writer in dead:
        store.delete_writer(writer)
    return counts
