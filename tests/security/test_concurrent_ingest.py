"""Hole 4: concurrent ingests into one store (a scheduled `rag ingest` and UI uploads on one Qdrant server).

A run stores a document's chunks before its record; the start-of-run sweep of another run used to take those
chunks for a killed run's leftovers and delete them, and the document then counted as complete with no chunks,
forever. No Qdrant server binary is available here, so "two processes on one server" is played by two threads
sharing one store handle (as two UI uploads in one process do), with writer A held after its chunks are stored and
before its record is written while writer B runs a whole ingest; the server store runs in qdrant-client's local
mode, which goes through the same client calls as a server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ingest import ingest
from ingest.pipeline import file_sha256
from rag.index.store import SearchFilter, Store
from rag.index.store.edge import EdgeStore
from rag.index.store.server import QdrantServerStore

from conftest import ROOT

TEXT_A = ("Badge renewal for the Lisbon warehouse happens every March. " * 40).strip()
TEXT_B = ("The parking garage closes at midnight on public holidays. " * 40).strip()


@pytest.fixture(params=["edge", "qdrant-client-local"])
def store(request, tmp_path, settings):
    s: Store = EdgeStore(settings.store_dir) if request.param == "edge" else QdrantServerStore(
        "test", path=str(tmp_path / "qc"))
    yield s
    s.close()


class HeldBeforeRecord:
    """The real store, except that writing a document's record waits for ``go``: the run's chunks are stored,
    its record is not (the window a concurrent sweep used to fall into)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.held, self.go = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def put_document(self, record) -> None:
        self.held.set()
        assert self.go.wait(120), "writer A was never released"
        self._store.put_document(record)


def _run_held(paths, settings, store, embedder) -> tuple[HeldBeforeRecord, threading.Thread, dict]:
    """Start writer A in a thread and wait until its chunks are stored and its record is held."""
    held, out = HeldBeforeRecord(store), {}

    def run():
        try:
            out["report"] = ingest(paths, settings, store=held, embedder=embedder)  # type: ignore[arg-type]
        except BaseException as e:  # surfaced by the test, not lost in the thread
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    assert held.held.wait(120), f"writer A never reached its record: {out}"
    return held, t, out


def _release(held: HeldBeforeRecord, t: threading.Thread, out: dict) -> None:
    held.go.set()
    t.join(120)
    assert "error" not in out, out.get("error")


def _complete(store: Store, path: Path, embedder, query: str) -> None:
    rec = store.get_document(str(path))
    assert rec is not None, f"{path.name} has no record"
    assert rec.sha256 == file_sha256(path)
    assert store.count_chunks(str(path)) == rec.chunks > 0, f"{path.name}: record and chunks disagree"
    hits = store.search(embedder.embed_query(query).tolist(), 3, SearchFilter(paths=(str(path),)))
    assert hits and hits[0].payload["path"] == str(path)


@pytest.mark.attack(4, "a second ingest starts while the first has stored a document's chunks but not its record")
def test_a_running_writers_chunks_survive_another_runs_sweep(store, tmp_path, settings, embedder):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "badges.txt").write_text(TEXT_A)
    (b / "parking.txt").write_text(TEXT_B)
    store.ensure_ready(embedder.dimension, embedder.model_name)

    held, t, out = _run_held([a], settings, store, embedder)
    assert store.count_chunks(str(a / "badges.txt")) > 0 and store.get_document(str(a / "badges.txt")) is None
    report_b = ingest([b], settings, store=store, embedder=embedder)  # its whole run, sweep included
    assert report_b.added == 1 and not report_b.failed
    _release(held, t, out)

    _complete(store, a / "badges.txt", embedder, "When is badge renewal in Lisbon?")
    _complete(store, b / "parking.txt", embedder, "When does the parking garage close?")
    assert [w for w in store.writers() if w.expires > 0] == [], "a finished run left a live heartbeat"
    # The next run finds nothing to repair and drops both ended writers' records.
    again = ingest([a, b], settings, store=store, embedder=embedder)
    assert again.unchanged == 2 and not again.warnings
    assert [w.expires for w in store.writers()] == [0.0]  # only that run's own, ended


@pytest.mark.parametrize("change", [False, True], ids=["same-bytes", "changed-between"])
def test_two_writers_on_one_path_end_consistent(store, tmp_path, settings, embedder, change):
    """Both runs take the same file (an upload and the scheduled ingest of its folder). With the same bytes they
    write the same chunk ids: consistent at once. If the file changed between them, the slower record wins with
    the other's chunks beside its own; the next run sees the mismatch and redoes the document."""
    d = tmp_path / "docs"
    d.mkdir()
    f = d / "badges.txt"
    f.write_text(TEXT_A)
    store.ensure_ready(embedder.dimension, embedder.model_name)

    held, t, out = _run_held([d], settings, store, embedder)
    if change:
        f.write_text(TEXT_B)
    ingest([d], settings, store=store, embedder=embedder)
    _release(held, t, out)  # A's record (of the first bytes) is written last

    if not change:
        _complete(store, f, embedder, "When is badge renewal in Lisbon?")
        return
    rec = store.get_document(str(f))
    assert rec is not None and store.count_chunks(str(f)) != rec.chunks  # the state the next run must heal
    report = ingest([d], settings, store=store, embedder=embedder)
    assert report.updated == 1
    _complete(store, f, embedder, "When does the parking garage close?")
    assert {h.payload["doc_sha256"] for h in store.chunks_of(str(f))} == {file_sha256(f)}


@pytest.mark.attack(4, "a document's chunks vanish behind its registry record (the damage a racing sweep did)")
def test_a_document_missing_chunks_is_ingested_again(store, tmp_path, settings, embedder):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "badges.txt").write_text(TEXT_A)
    (d / "parking.txt").write_text(TEXT_B)
    store.ensure_ready(embedder.dimension, embedder.model_name)
    assert ingest([d], settings, store=store, embedder=embedder).added == 2

    store.delete_chunks(str(d / "badges.txt"))  # the record stays: "complete", with nothing to find
    report = ingest([d], settings, store=store, embedder=embedder)
    assert report.updated == 1 and report.unchanged == 1
    assert [w.path for w in report.warnings] == [str(d / "badges.txt")]
    _complete(store, d / "badges.txt", embedder, "When is badge renewal in Lisbon?")


# A writer in its own process, held like HeldBeforeRecord above until it is killed.
CHILD = """
import sys, time
from ingest import ingest
from rag.index.store.server import QdrantServerStore
from rag.settings import Settings

class Held:
    def __init__(self, store):
        self._store = store
    def __getattr__(self, name):
        return getattr(self._store, name)
    def put_document(self, record):
        print("held", flush=True)
        time.sleep(3600)

ingest([sys.argv[1]], Settings(data_dir=sys.argv[3]), store=Held(QdrantServerStore("test", path=sys.argv[2])))
"""


@pytest.mark.attack(4, "an ingest on another machine is still writing when this one sweeps; then it dies")
def test_a_killed_writers_leftovers_are_swept_once_it_is_dead(tmp_path, settings, embedder):
    d, other = tmp_path / "docs", tmp_path / "other"
    d.mkdir()
    other.mkdir()
    (d / "badges.txt").write_text(TEXT_A)
    (other / "parking.txt").write_text(TEXT_B)
    qc = tmp_path / "qc"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(qc), str(settings.data_dir)],
                             stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)

    path = str(d / "badges.txt")
    with QdrantServerStore("test", path=str(qc)) as store:
        (writer,) = store.writers()
        assert writer.pid == child.pid and writer.expires > time.time()  # its heartbeat has not lapsed
        n = store.count_chunks(path)
        assert n > 0 and store.get_document(path) is None

        # As if it had run on another machine: its pid tells nothing here, only its heartbeat does.
        writer.scope, writer.host = "another-machine", "elsewhere"
        store.put_writer(writer)
        ingest([other], settings, store=store, embedder=embedder)
        assert store.count_chunks(path) == n, "a live writer's chunks were swept"

        writer.expires = time.time() - 1  # no heartbeat for RAG_INGEST_WRITER_TTL_S
        store.put_writer(writer)
        ingest([other], settings, store=store, embedder=embedder)
        assert store.count_chunks(path) == 0 and writer.id not in {w.id for w in store.writers()}


def test_a_killed_writer_on_this_machine_is_swept_at_once(tmp_path, settings, embedder):
    """Same host, same pid namespace: a pid that no longer exists is dead, whatever its heartbeat says."""
    d, other = tmp_path / "docs", tmp_path / "other"
    d.mkdir()
    other.mkdir()
    (d / "badges.txt").write_text(TEXT_A)
    (other / "parking.txt").write_text(TEXT_B)
    qc = tmp_path / "qc"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(qc), str(settings.data_dir)],
                             stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)

    with QdrantServerStore("test", path=str(qc)) as store:
        assert store.count_chunks(str(d / "badges.txt")) > 0
        (killed,) = store.writers()
        ingest([other], settings, store=store, embedder=embedder)
        assert store.count_chunks(str(d / "badges.txt")) == 0 and killed.id not in {w.id for w in store.writers()}
        report = ingest([d], settings, store=store, embedder=embedder)  # the file itself is simply redone
        assert report.added == 1
        _complete(store, d / "badges.txt", embedder, "When is badge renewal in Lisbon?")
