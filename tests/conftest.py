from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from rag import offline

offline.apply()
# The int8 ONNX export is derived from the packaged model; share it between tests instead of re-exporting
# it into every temporary data dir (subprocesses inherit this too).
os.environ.setdefault("RAG_MODELS_DIR", str(Path(tempfile.gettempdir()) / "onprem-rag-test-models"))

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = ROOT / "sample_docs"
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def embedder():
    from rag.index.embeddings import get_embedder
    from rag.settings import Settings

    return get_embedder(Settings())


@pytest.fixture
def settings(tmp_path):
    from rag.settings import Settings

    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def docs(tmp_path) -> Path:
    """A private copy of sample_docs/ that a test may change."""
    d = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS, d)
    return d


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, embedder):
    """Settings of a data dir with sample_docs/ ingested once per session (the store is closed again)."""
    from ingest import ingest
    from rag.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("sample-index"))
    report = ingest([SAMPLE_DOCS], settings, embedder=embedder)
    assert report.added == 5 and not report.failed
    return settings


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> Path:
    """Malformed (bad/) and tricky-but-valid (tricky/) files from the team's generator."""
    out = tmp_path_factory.mktemp("badfiles")
    script = SHARED / "corpus" / "make-bad-files.py"
    if not script.exists():
        pytest.skip(f"{script} is missing (the team's shared/ folder sits beside the checkout)")
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True)
    return out


def edge_store_before_windows(root: Path, dimension: int, model: str) -> None:
    """Creates at ``root`` an embedded store as the code before window vectors made it (no window multivector)."""
    import qdrant_edge as qe

    from rag.index.store.base import SPARSE
    from rag.index.store.edge import EdgeStore

    class BeforeWindows(EdgeStore):
        def _chunks_config(self, dimension, kind, *, create=False, windows=False):
            plain = super()._chunks_config(dimension, kind)  # a reload's config: the dense vector only
            return qe.EdgeConfig(sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
                                 if create else None, vectors=plain.vectors, hnsw_config=plain.hnsw_config,
                                 optimizers=plain.optimizers)

    store = BeforeWindows(root)
    store.ensure_ready(dimension, model)
    store.close()


def rag_cmd(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run the real `rag` console script."""
    exe = Path(sys.executable).parent / "rag"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)


class OnePool:
    """The one collection "documents" over ``rag``: what an in-process MCP server (RagMCP) serves."""

    def __init__(self, rag) -> None:
        self.names, self._rag = ["documents"], rag

    def get(self, name: str):
        return self._rag


def _free_port() -> int:
    from rag.llm.local.process import free_port

    return free_port()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str, *,
              any_status: bool = False) -> None:
    """Until ``url`` answers 200 (any status with ``any_status``: a 401 without a key also means it listens);
    fails with the process's log if it exits first or ``timeout`` passes."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited:\n{log.read_text()}"
        try:
            if httpx.get(url, timeout=2).status_code == 200 or any_status:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, f"{what} did not come up within {timeout:.0f} s"
        time.sleep(0.3)


@contextmanager
def running(cmd: list[str], log_path: Path, ready_url: str, timeout: float, what: str,
            env: dict | None = None, *, any_status: bool = False):
    """A server process for the duration of a ``with``: started with its output in ``log_path``, ready once
    ``ready_url`` answers (200, or anything with ``any_status``), terminated afterwards."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, proc, log_path, timeout, what, any_status=any_status)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is missing: install Debian's postgresql package (scripts/test.sh does)")
    return str(found)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session, in a temporary cluster on a free loopback port (trust auth, no
    fsync: throwaway data). Yields a function that creates a fresh database and returns its SQLAlchemy URL.
    PostgreSQL refuses to run as root: as root, the cluster belongs to (and the server runs as) the postgres user
    that Debian's package creates."""
    import pwd

    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="rag-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port, data, log = _free_port(), root / "data", root / "server.log"
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                    "--no-sync"], **run)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    started = subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w",
                              "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, f"postgres did not start: {started.stderr}\n{log.read_text()}"
    base = f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    made = iter(range(1, 10_000))

    def new_database() -> str:
        import psycopg

        name = f"rag_test_{next(made)}"
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"{base}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


LLM_CTX = 2048


def _engine_server(name: str, log_name: str, **kw):
    """Start one engine's server for the session; a missing engine is installed (cached per machine), and one
    that cannot start fails the tests that need it: CI must never pass by skipping them."""
    from rag.llm.local import get_engine

    engine = get_engine(name)
    if not engine.installed():
        engine.install(lambda line: print(line, file=sys.stderr))
    port = _free_port()
    log = open(Path(tempfile.gettempdir()) / f"onprem-rag-{log_name}-{port}.log", "w")
    server = engine.server(port=port, n_ctx=LLM_CTX, log=log, **kw)
    try:
        server.start(timeout=engine.start_timeout)
    except Exception as exc:
        log.close()
        pytest.fail(f"{engine.title} did not start: {exc}")
    return server, log


@pytest.fixture(scope="session")
def llm_server():
    """A real OpenAI-compatible server: llama-cpp-python serving the packaged SmolLM2-135M GGUF."""
    from rag.llm.local import LocalLLMServer, get_engine

    engine = get_engine("llamacpp")
    if not engine.installed():
        engine.install(lambda line: print(line, file=sys.stderr))
    port = _free_port()
    log = open(Path(tempfile.gettempdir()) / f"onprem-rag-llm-{port}.log", "w")
    # Tests run one at a time: two threads for prompt processing nearly halve it (62 -> 115 tokens/s).
    server = LocalLLMServer(port=port, n_ctx=LLM_CTX, threads=1, batch_threads=2, log=log)
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"the llama.cpp server did not start: {exc}")
    yield server.base_url
    server.stop()
    log.close()


@pytest.fixture(scope="session")
def vllm_process():
    """vLLM's CPU build (its own venv, the GGUF converted once; rag/llm/local/vllm.py) serving the same model
    with a window of LLM_CTX. Started once per session (~35-50 s, ~3.5 GB). A test may SIGSTOP/SIGCONT it,
    never stop it."""
    server, log = _engine_server("vllm", "vllm")
    yield server
    server.stop()
    log.close()


@pytest.fixture(scope="session")
def vllm_server(vllm_process) -> str:
    return vllm_process.base_url


@pytest.fixture(scope="session")
def vllm_embedding_server():
    """vLLM's CPU build (the venv of rag/llm/local/vllm.py) serving the packaged all-MiniLM-L6-v2 folder as an
    embedding model, under the name the local backend records, in float32: the base URL (``…/v1``). Up in
    ~30 s, ~1.3 GB."""
    from rag.index.model_path import resolve_model_path
    from rag.llm.local import vllm
    from rag.settings import PACKAGED_EMBEDDING_MODEL

    if not vllm.installed():
        vllm.install(lambda line: print(line, file=sys.stderr))
    port = _free_port()
    cmd = vllm.embedding_server_command(resolve_model_path(PACKAGED_EMBEDDING_MODEL), PACKAGED_EMBEDDING_MODEL,
                                        port=port)
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, **vllm.server_env()}
    log = Path(tempfile.gettempdir()) / f"onprem-rag-vllm-embed-{port}.log"
    with running(cmd, log, f"http://127.0.0.1:{port}/v1/models", 300, "the vLLM embeddings server", env=env):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(params=["llamacpp", "vllm"])
def any_llm(request) -> str:
    """Each real server in turn (the test runs once per engine): llama-cpp-python, then vLLM."""
    return request.getfixturevalue("llm_server" if request.param == "llamacpp" else "vllm_server")


#: Who may read which sample document in ``group_index``, and the users of its users file.
SAMPLE_GROUPS = {"employee-handbook.pdf": ["hr"], "benefits.docx": ["hr"], "it-security.md": ["it"],
                 "office-faq.txt": ["everyone"], "onboarding.html": ["admins"]}
USERS = {"alice": (["hr"], "alice-secret-1"), "bob": (["it"], "bob-secret-22")}


def readable_by(name: str) -> set[str]:
    """The sample documents (file names) that a user of ``USERS`` may read in ``group_index``."""
    mine = {"everyone", f"user:{name}", *USERS[name][0]}
    return {f for f, groups in SAMPLE_GROUPS.items() if mine & set(groups)}


@pytest.fixture(scope="session")
def group_index(tmp_path_factory, embedder):
    """Settings of a data dir with sample_docs/ ingested with per-file groups (SAMPLE_GROUPS), and a users file
    with alice (hr) and bob (it); the store is closed again. Copy the data dir before changing it."""
    from argon2 import PasswordHasher

    from ingest import ingest
    from rag.settings import Settings
    from rag.index.store import open_store
    from rag.security.users import UserDirectory

    settings = Settings(data_dir=tmp_path_factory.mktemp("group-index"))
    store = open_store(settings)
    try:
        for name, groups in SAMPLE_GROUPS.items():
            report = ingest([SAMPLE_DOCS / name], settings, groups=groups, store=store, embedder=embedder)
            assert report.added == 1 and not report.failed, report
    finally:
        store.close()
    # Cheap hashes for the fixture; the app upgrades them to the production parameters at the first login.
    users = UserDirectory(settings.users_file, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    for name, (groups, password) in USERS.items():
        users.add(name, groups, password)
    return settings


# --- The attack list -------------------------------------------------------------------------------------------
# Every test that performs an attack on the product carries `@pytest.mark.attack(hole, "what the attacker does")`.
# `python -m pytest --attacks` runs those alone and prints each attack with its outcome (the README's security
# section is that table).

def pytest_addoption(parser):
    parser.addoption("--attacks", action="store_true",
                     help="run only the tests marked attack and print the attack list with each outcome")


def pytest_configure(config):
    config.addinivalue_line("markers", "attack(hole, what): a test that performs an attack and must be defended")
    config._attack_rows = []


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--attacks"):
        return
    keep = [i for i in items if i.get_closest_marker("attack")]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    mark = item.get_closest_marker("attack")
    if mark and (report.when == "call" or report.failed or report.skipped):
        hole, what = (list(mark.args) + ["", ""])[:2]
        rows = item.config._attack_rows
        rows[:] = [r for r in rows if r[2] != item.nodeid]
        verdict = "defended" if report.passed and report.when == "call" else report.outcome.upper()
        rows.append((str(hole), what or item.name, item.nodeid, verdict))


def pytest_terminal_summary(terminalreporter, config):
    rows = config._attack_rows
    if not rows:  # printed after every run that performed attacks, the whole suite's included
        return
    tr = terminalreporter
    tr.section("attacks and their outcome")
    for hole, what, nodeid, verdict in sorted(rows, key=lambda r: (r[0], r[2])):
        tr.write_line(f"[{verdict:^9}] hole {hole}: {what}")
        tr.write_line(f"{'':12}{nodeid}")
    bad = sum(r[3] != "defended" for r in rows)
    tr.write_line(f"{len(rows)} attacks, {len(rows) - bad} defended, {bad} not")
