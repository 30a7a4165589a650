"""``rag ingest --ray`` on a real two-node Ray cluster started here: a worker killed mid-run changes nothing, and
the index equals a single-process run's (ids, payloads, records, vectors to rounding)."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the [ray] extra is not installed (scripts/install.sh installs it)")

from ingest import ingest  # noqa: E402
from rag.index.embeddings import get_embedder  # noqa: E402
from rag.index.store import open_store  # noqa: E402
from rag.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("policy badge travel expense vacation laptop printer parking invoice contract sensor gateway "
         "calibration warehouse audit compliance training onboarding payroll benefit meeting report").split()


def _corpus(root: Path, n_files: int = 24) -> Path:
    rng = random.Random(11)
    root.mkdir()
    for i in range(n_files):
        paras = [" ".join(rng.choice(WORDS) for _ in range(60)).capitalize() + "." for _ in range(6)]
        (root / f"doc-{i:03d}.txt").write_text(f"Document {i}\n\n" + "\n\n".join(paras))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(tmp: Path) -> list[int]:
    """Pids of the processes of our cluster: their command line names its temp dir (a task's worker renames
    itself ``ray::<task>``, so it is found through its parent, a raylet of ours)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with suppress(OSError):
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes().decode(errors="replace")
            if str(tmp) in cmd or (cmd.startswith("ray::") and str(tmp) in parent):
                pids.append(int(d.name))
    return pids


def _task_workers(tmp: Path) -> list[int]:
    return [p for p in _ours(tmp)
            if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::prepare_file")]


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A head node and a second node, one CPU each (two workers), in a temp dir of their own; each `ray start
    --block` runs in its own session, so teardown kills exactly this cluster (never `ray stop`, which stops every
    Ray on the machine)."""
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's unix sockets live under it (108 bytes)
    port = _free_port()
    ray = str(Path(sys.executable).parent / "ray")
    # Workers import this checkout (the test runs with its PYTHONPATH) and share the tests' model export.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray's clusters require a token now; this cluster's own, for its nodes and its driver (`rag ingest`, run with
    # this env: Ray reads it once per process, so the test process itself stays out of the cluster).
    (tmp / "auth_token").write_text(secrets.token_hex(32))
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "auth_token")}
    common = ["--num-cpus=1", "--block", "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []
    log = (tmp / "nodes.log").open("w")
    try:
        nodes.append(subprocess.Popen([ray, "start", "--head", f"--port={port}", f"--temp-dir={tmp}",
                                       "--include-dashboard=false", "--node-ip-address=127.0.0.1", *common],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while subprocess.run([ray, "status", f"--address={address}"], env=env, capture_output=True).returncode:
            assert time.time() < deadline and nodes[0].poll() is None, (tmp / "nodes.log").read_text()
            time.sleep(2)
        nodes.append(subprocess.Popen([ray, "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                                       *common], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        while subprocess.run([ray, "status", f"--address={address}"], env=env,
                             capture_output=True).stdout.count(b" node_") < 2:  # "Active:" lists one per node
            assert time.time() < deadline and nodes[1].poll() is None, (tmp / "nodes.log").read_text()
            time.sleep(2)
        yield address, tmp, env
    finally:
        for node in reversed(nodes):
            with suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            with suppress(subprocess.TimeoutExpired):
                node.wait(timeout=30)
        for pid in _ours(tmp):  # whatever left its session (Ray's workers start their own)
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _snapshot(settings: Settings) -> tuple[dict, dict]:
    with open_store(settings) as s:
        points = {}
        for path in s.chunk_paths():
            for h in s.chunks_of(path):
                points[h.id] = {k: v for k, v in h.payload.items() if k != "writer"}  # writer: a run's own id
        docs = {p: {k: v for k, v in vars(r).items() if k != "ingested_at"} for p, r in s.documents().items()}
    return points, docs


def _scores(settings: Settings, embedder, query: str) -> dict[str, float]:
    """Every chunk's cosine to the query: vectors compared without reading them back."""
    with open_store(settings) as s:
        return {h.id: h.score for h in s.search(embedder.embed_query(query).tolist(), 10_000)}


def _window_scores(settings: Settings, embedder, query: str) -> dict[str, float]:
    """Every chunk's best-window cosine to the query, for the chunks that have windows."""
    with open_store(settings) as s:
        ids = [h.id for path in s.chunk_paths() for h in s.chunks_of(path)]
        return s.window_cosines(embedder.embed_query(query).tolist(), ids)


WINDOW = 96  # the corpus's chunks are near 256 tokens: three windows each


@pytest.mark.slow
def test_worker_killed_mid_run_gives_the_single_process_index(ray_cluster, tmp_path):
    address, ray_tmp, env = ray_cluster
    corpus = _corpus(tmp_path / "corpus")
    # fp32: the int8 model quantizes activations with one scale per batch, so its vectors move (~0.02 cosine) with
    # the chunks they are batched with, a file's on a worker or 256 chunks' here; fp32 vectors barely do.
    # Window vectors on (RAG_DENSE_WINDOWS): the workers embed them too, and they must match the single run's.
    single = Settings(data_dir=tmp_path / "single", embedding_backend="torch", dense_windows=WINDOW)
    distributed = Settings(data_dir=tmp_path / "ray", embedding_backend="torch", dense_windows=WINDOW)
    embedder = get_embedder(single)
    r = ingest([corpus], single, embedder=embedder)
    assert r.added == 24 and not r.failed

    # `rag ingest --ray`, which says at exit whether it loaded the embedding model: it must not, a worker tells it
    # the model's name, dimension and token limit (the driver stays small: a head pod, the compose loop).
    driver_code = ("import atexit, sys; from rag.cli import main; atexit.register(lambda: print('model modules "
                   "loaded:', [m for m in ('torch', 'sentence_transformers', 'onnxruntime') if m in sys.modules], "
                   "file=sys.stderr)); sys.argv[0] = 'rag'; main()")
    cmd = [sys.executable, "-c", driver_code, "ingest", str(corpus), "--ray", address, "--json"]
    run_env = env | {"RAG_DATA_DIR": str(distributed.data_dir), "RAG_EMBEDDING_BACKEND": "torch",
                     "RAG_DENSE_WINDOWS": str(WINDOW)}
    driver = subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    seen: dict[int, float] = {}  # workers seen running a task, and since when
    while driver.poll() is None:
        now = time.time()
        for pid in _task_workers(ray_tmp):
            seen.setdefault(pid, now)
            if not killed and now - seen[pid] >= 1.0:  # a task well under way: Ray reruns it on a fresh worker
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.2)
    out, errors = driver.communicate()
    assert driver.returncode == 0, errors[-3000:]
    assert "model modules loaded: []" in errors, errors[-3000:]
    report = json.loads(out)
    assert killed, "no task ran for a second; make the corpus larger"
    assert report["added"] == 24 and not report["failed"], report
    assert len(seen) >= 3, f"tasks ran on {len(seen)} worker process(es): both nodes' and the killed one's heir"

    points, docs = _snapshot(single)
    assert _snapshot(distributed) == (points, docs)
    for query in ("travel expense policy", "warehouse sensor calibration", "payroll benefit"):
        a, b = _scores(single, embedder, query), _scores(distributed, embedder, query)
        assert a.keys() == b.keys() == points.keys()
        worst = max(abs(a[i] - b[i]) for i in a)
        assert worst < 1e-4, worst  # padding: a chunk's batch differs
        a, b = _window_scores(single, embedder, query), _window_scores(distributed, embedder, query)
        assert a.keys() == b.keys() and len(a) >= len(points) // 2, (len(a), len(b), len(points))
        assert max(abs(a[i] - b[i]) for i in a) < 1e-4

    # Incremental as ever: a rerun on the cluster finds everything unchanged, one changed file is re-ingested.
    (corpus / "doc-003.txt").write_text("Document 3 was rewritten: the parking policy changed.")
    rerun = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600)
    report = json.loads(rerun.stdout)
    assert (report["unchanged"], report["updated"], report["added"]) == (23, 1, 0) and not report["failed"], report


def test_unreachable_cluster_fails_at_once_and_writes_nothing(docs, settings, embedder):
    from rag.errors import ClusterError

    address = f"127.0.0.1:{_free_port()}"  # nobody listens there
    started = time.time()
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at {address}"):
        ingest([docs], settings.model_copy(update={"ingest_ray": address}), embedder=embedder)
    assert time.time() - started < 30
    with open_store(settings) as s:
        assert s.documents() == {} and s.count_chunks() == 0


def test_a_model_the_workers_cannot_load_fails_before_anything_is_written(docs, tmp_path):
    """The driver no longer loads the model itself, so the workers' failure to is what the user must see, in a
    sentence, not a Ray traceback; the run stops before a document is written."""
    rag = str(Path(sys.executable).parent / "rag")
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"), "RAG_EMBEDDING_MODEL": str(tmp_path / "no-model"),
           "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([rag, "ingest", str(docs), "--ray", "local"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"error: on the Ray workers: cannot load embedding model '{tmp_path / 'no-model'}'" in res.stderr
    assert "Traceback" not in res.stderr and "ray::" not in res.stderr
    assert not (tmp_path / "data" / "qdrant-edge").exists()


def test_workers_embed_with_their_tasks_share_of_the_node():
    """ONNX Runtime would size each worker's pool to every core of the node (it ignores Ray's OMP_NUM_THREADS):
    one task per core would then run cores x cores threads. An explicit RAG_EMBEDDING_THREADS is kept."""
    from ingest.distributed import TASK_CPUS, _worker_settings

    assert _worker_settings(Settings()).embedding_threads == TASK_CPUS == 1
    assert _worker_settings(Settings(embedding_threads=3)).embedding_threads == 3
