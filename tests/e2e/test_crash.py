"""kill -9 in the middle of a long ingest, then a rerun, gives the same ids and counts as a clean run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rag.settings import Settings
from rag.index.store import open_store

WORDS = ("policy badge travel expense vacation laptop printer parking invoice contract sensor gateway "
         "calibration warehouse audit compliance training onboarding payroll benefit meeting report").split()

# Runs the library ingest in a child so it can be killed; small embed batches make progress visible early.
CHILD = """
import sys
import ingest.pipeline as p
from rag.settings import Settings
p.EMBED_BUFFER = 16
def progress(pr):
    print(f"chunks {pr.chunks_done}", flush=True)
p.ingest([sys.argv[1]], Settings(data_dir=sys.argv[2]), progress=progress)
print("done", flush=True)
"""


def _corpus(root: Path, n_files: int = 40) -> Path:
    rng = random.Random(7)
    root.mkdir()
    for i in range(n_files):
        paras = []
        for _ in range(8):
            paras.append(" ".join(rng.choice(WORDS) for _ in range(60)).capitalize() + ".")
        (root / f"doc-{i:03d}.txt").write_text(f"Document {i}\n\n" + "\n\n".join(paras))
    return root


def _snapshot(data_dir: Path) -> tuple[dict, dict]:
    with open_store(Settings(data_dir=data_dir)) as s:
        ids = {}
        for path in s.chunk_paths():
            for h in s.chunks_of(path):
                ids[h.id] = (h.payload["path"], h.payload["chunk_index"], h.payload["text"])
        docs = {p: (r.sha256, r.chunks) for p, r in s.documents().items()}
    return ids, docs


def _run_child(corpus: Path, data_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(data_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


@pytest.mark.slow
def test_kill_9_then_rerun_equals_clean_run(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"

    child = _run_child(corpus, crashed)
    killed_at = None
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("chunks ") and int(line.split()[1]) >= 48:
            os.kill(child.pid, signal.SIGKILL)  # mid-run: some documents done, others half-written
            killed_at = int(line.split()[1])
            break
    child.wait(timeout=120)
    assert killed_at is not None, "ingest finished before it could be killed; make the corpus larger"
    assert child.returncode == -signal.SIGKILL

    ids_after_kill, docs_after_kill = _snapshot(crashed)
    assert 0 < len(docs_after_kill) < 40, "the kill should land mid-run"

    # Rerun the interrupted ingest to completion, and do a clean run elsewhere.
    for data_dir in (crashed, clean):
        proc = _run_child(corpus, data_dir)
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0 and "done" in out

    ids_crashed, docs_crashed = _snapshot(crashed)
    ids_clean, docs_clean = _snapshot(clean)
    assert len(docs_clean) == 40
    assert docs_crashed == docs_clean
    assert ids_crashed == ids_clean  # same ids, same payloads, no duplicates, nothing half-ingested
    # Documents completed before the kill were not redone differently.
    assert all(docs_clean[p] == v for p, v in docs_after_kill.items())
