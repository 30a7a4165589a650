"""Hole 5, uploads: a user cannot fill the disk, a failed or interrupted upload leaves nothing behind and keeps the
earlier version, a file name cannot escape or clobber anything, and no upload takes the UI down.

Real files, the real embedded store, the real pipeline; the UI tests drive ui/app.py with Streamlit's AppTest and
the crash test kills a real process in the middle of an upload."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, USERS, _free_port
from ingest.uploads import ingest_uploads
from rag.errors import RagError
from rag.generation.chain import RAG
from rag.index.store import open_store
from ui import signin

APP = ROOT / "ui" / "app.py"
GOOD = b"# Parking policy\n\nThe code of the parking garage gate is 4711. Visitors park on level -1.\n"
NOT_A_PDF = b"%PDF-1.7\n this is no PDF at all \x00\xff" * 20
NO_TEXT = b"   \n\n \t \n"  # a Markdown file with nothing to index: the pipeline reports it failed
LONG = "é" * 190 + ".md"  # 383 bytes: over the 255 a file name may have


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _finds_gate_code(settings) -> list[str]:
    rag = RAG.from_settings(settings)
    try:
        hits = rag.retrieve("What is the code of the parking garage gate?").passages
        return [p.source for p in hits if "4711" in p.text]
    finally:
        rag.close()


@pytest.mark.attack(5, "uploads too many files, or too many bytes, in one go")
def test_one_upload_is_capped_in_files_and_bytes(settings, embedder):
    capped = settings.model_copy(update={"upload_max_files": 3, "upload_max_batch_mb": 0.01})
    with pytest.raises(RagError, match="RAG_UPLOAD_MAX_FILES"):
        ingest_uploads([(f"n{i}.md", GOOD) for i in range(4)], capped, embedder=embedder)
    with pytest.raises(RagError, match="RAG_UPLOAD_MAX_BATCH_MB"):
        ingest_uploads([("a.md", b"a" * 6000), ("b.md", b"b" * 6000)], capped, embedder=embedder)
    assert not settings.uploads_dir.exists() or not _files(settings.uploads_dir), "a refused batch writes nothing"


@pytest.mark.attack(5, "re-uploads a document as a file that fails to parse, and uploads one that cannot parse")
def test_failed_upload_leaves_nothing_and_keeps_the_earlier_version(settings, embedder):
    report = ingest_uploads([("parking.md", GOOD)], settings, embedder=embedder)
    assert report.added == 1 and not report.failed
    saved = settings.uploads_dir / "parking.md"

    # The same name twice in one upload, both broken: the second must not take the first one's backup away.
    report = ingest_uploads([("parking.md", NO_TEXT), ("broken.pdf", NOT_A_PDF), ("../parking.md", b" ")],
                            settings, embedder=embedder)
    reasons = {Path(f.path).name: f.reason for f in report.failed}
    assert set(reasons) == {"parking.md", "broken.pdf"}, reasons
    assert len(report.failed) == 3
    assert saved.read_bytes() == GOOD, "the failed re-upload replaced the good file"
    assert not (settings.uploads_dir / "broken.pdf").exists(), "a failed upload was left on disk"
    assert {p.name for p in settings.uploads_dir.iterdir() if not p.name.startswith(".")} == {"parking.md"}
    assert "earlier upload of this name is kept" in reasons["parking.md"]
    store = open_store(settings)
    try:
        docs = store.documents()
        assert set(docs) == {str(saved)} and docs[str(saved)].sha256 == _sha(GOOD)
    finally:
        store.close()
    assert _finds_gate_code(settings) == ["parking.md"], "the earlier version is no longer searchable"


@pytest.mark.attack(5, "Ctrl-C in the middle of an upload that replaces a document")
def test_interrupted_upload_keeps_the_earlier_version(settings, embedder):
    ingest_uploads([("parking.md", GOOD)], settings, embedder=embedder)

    def interrupt(progress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_uploads([("parking.md", NO_TEXT), ("new.md", b"# New\n\nSomething new.\n")], settings,
                       embedder=embedder, progress=interrupt)
    assert (settings.uploads_dir / "parking.md").read_bytes() == GOOD
    assert not (settings.uploads_dir / "new.md").exists()
    assert _finds_gate_code(settings) == ["parking.md"]


_CRASHING_UPLOAD = textwrap.dedent("""
    import os, sys
    from ingest.uploads import ingest_uploads
    from rag.settings import Settings

    def die(progress):
        print("accepted", progress.current, flush=True)
        os._exit(9)  # as kill -9 or a power cut: nothing below runs, no cleanup

    ingest_uploads([("parking.md", b"   \\n")], Settings(data_dir=sys.argv[1]), progress=die)
""")


@pytest.mark.attack(5, "the server dies in the middle of an upload that replaces a document")
def test_crash_during_upload_is_undone_by_the_next_one(settings, embedder, tmp_path):
    ingest_uploads([("parking.md", GOOD)], settings, embedder=embedder)
    script = tmp_path / "crash.py"
    script.write_text(_CRASHING_UPLOAD)
    run = subprocess.run([sys.executable, str(script), str(settings.data_dir)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 9 and "accepted" in run.stdout, run.stderr[-2000:]
    # The crash left the broken file in place and the document out of the index; the next upload repairs that.
    report = ingest_uploads([("other.md", b"# Other\n\nNothing to see.\n")], settings, embedder=embedder)
    assert report.added == 1 and not report.failed
    assert (settings.uploads_dir / "parking.md").read_bytes() == GOOD
    assert _finds_gate_code(settings) == ["parking.md"]


@pytest.mark.attack(5, "uploads files named ../, /abs, with control or invalid UTF-8 characters, hidden names")
def test_file_names_cannot_escape_or_clobber(settings, embedder):
    data_dir = settings.data_dir
    alice = signin.upload_settings(settings.model_copy(update={"auth": "password"}),
                                   signin.identity_of(_user("alice"), "password"))
    policy = b'[[rules]]\nmatch = "*"\ngroups = ["everyone"]\n'
    names = ["../../../escape.md", "/tmp/absolute.md", "..\\..\\win.md", "../bob/parking.md",
             "bad-utf8-\udcff\udcfe.md", "lone-\ud800.md", "ansi-\x1b[31m-\x07.md", "rtl-\u202edm.exe.md",
             "line\u2028break.md", ".rag-access.toml", ".rag-uploads", ".hidden.md", LONG]
    before = _files(data_dir) if data_dir.exists() else set()
    report = ingest_uploads([(n, policy if n.endswith(".toml") else GOOD) for n in names], alice,
                            groups=["user:alice"], embedder=embedder)
    folder = alice.uploads_dir
    assert folder == data_dir / "uploads" / "users" / "alice"
    outside = {p for p in _files(data_dir) - before if folder not in p.parents}
    assert {p for p in outside if "uploads" in p.parts} == set(), outside
    shown = sorted(p.name for p in folder.iterdir())
    for name in shown:
        name.encode("utf-8")  # valid UTF-8: no undecodable bytes on disk
        assert name == ".rag-uploads" or not name.startswith("."), name
        assert len(name.encode()) <= 255 and all(c.isprintable() for c in name), repr(name)
        assert "\u202e" not in name and "\u2028" not in name
    assert not any((folder / n).exists() for n in (".rag-access.toml", ".hidden.md")), shown
    assert not [p for p in (folder / ".rag-uploads").rglob("*") if p.is_file()], "bookkeeping left behind"
    assert report.added == len(shown) - 1, report  # every other name became its own file
    assert sorted(f.path for f in report.failed) == [".rag-access.toml", ".rag-uploads"]  # no type to index
    # Every upload is alice's alone.
    store = open_store(settings)
    try:
        assert {tuple(r.groups) for r in store.documents().values()} == {("user:alice",)}
    finally:
        store.close()


def _user(name: str):
    from rag.security.users import User

    return User(name=name, groups=tuple(USERS[name][0]), password_hash="x")


# --- the UI ------------------------------------------------------------------------------------------------------

@pytest.fixture
def app(monkeypatch):
    def start(data_dir: Path, **env: str) -> AppTest:
        monkeypatch.setenv("RAG_DATA_DIR", str(data_dir))
        monkeypatch.setenv("RAG_LLM_BASE_URL", f"http://127.0.0.1:{_free_port()}/v1")  # no LLM needed
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        at = AppTest.from_file(str(APP), default_timeout=300)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield start
    st.cache_resource.clear()  # closes the store


def _upload(at: AppTest, *files: tuple[str, bytes]) -> AppTest:
    at.sidebar.file_uploader[0].set_value([(n, d, "application/octet-stream") for n, d in files])
    at.run()
    return next(b for b in at.sidebar.button if b.label == "Add to the index").click().run()


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.sidebar.caption)


@pytest.mark.attack(5, "uploads files whose names or contents make the upload fail, to take the UI down")
def test_ui_stays_up_when_uploads_fail(app, tmp_path):
    at = app(tmp_path / "data")
    # (A lone surrogate cannot reach the app: Streamlit's protobuf refuses it; the library test covers it.)
    at = _upload(at, ("broken.pdf", NOT_A_PDF), (LONG, GOOD), ("ansi-\x1b[2J.md", GOOD))
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.warning and "failed" in _captions(at) and "broken.pdf" in _captions(at)
    assert not (tmp_path / "data" / "uploads" / "broken.pdf").exists()
    # The page still works: the next upload goes in.
    at = _upload(at, ("parking.md", GOOD))
    assert not at.exception and at.sidebar.success[0].value.startswith("1 added")


@pytest.mark.attack(5, "a user fills the disk with uploads")
def test_ui_quota_per_user_and_deleting_frees_it(app, group_index, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(group_index.data_dir, data)
    at = app(data, RAG_AUTH="password", RAG_UPLOAD_QUOTA_MB="0.01")  # 10 KiB each
    _sign_in(at, "alice")
    filler = b"# Filler\n\n" + b"Lorem ipsum dolor sit amet. " * 300  # ~8.4 KB
    at = _upload(at, ("filler.md", filler))
    assert at.sidebar.success[0].value.startswith("1 added")
    at = _upload(at, ("parking.md", GOOD * 30))
    assert not at.exception
    text = _captions(at)
    assert "RAG_UPLOAD_QUOTA_MB" in text and "delete some of your uploaded documents" in text, text
    alice_dir = data / "uploads" / "users" / "alice"
    assert not (alice_dir / "parking.md").exists()

    # bob's quota is his own.
    next(b for b in at.sidebar.button if b.label == "Sign out").click().run()
    _sign_in(at, "bob")
    at = _upload(at, ("parking.md", GOOD * 30))
    assert at.sidebar.success[0].value.startswith("1 added")

    # alice frees space by deleting her file (out of the index too), then her upload goes in.
    next(b for b in at.sidebar.button if b.label == "Sign out").click().run()
    _sign_in(at, "alice")
    at.sidebar.button(key="delete-upload-filler.md").click().run()
    assert not at.exception and not (alice_dir / "filler.md").exists()
    at = _upload(at, ("parking.md", GOOD * 30))
    assert at.sidebar.success[0].value.startswith("1 added")
    st.cache_resource.clear()
    store = open_store(group_index.model_copy(update={"data_dir": data}))
    try:
        assert str(alice_dir / "filler.md") not in store.documents()
    finally:
        store.close()


def _sign_in(at: AppTest, name: str) -> None:
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(USERS[name][1])
    next(b for b in at.button if b.label == "Sign in").click().run()
    assert not at.exception and at.chat_input, f"{name} could not sign in"

