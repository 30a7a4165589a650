"""The chat page's logic with Streamlit's AppTest: the real app script, real store, real LLM server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, _free_port
from ui import signin

APP = ROOT / "ui" / "app.py"


@pytest.fixture
def app_env(monkeypatch):
    """Point the app at a data dir and an LLM through the environment, as `rag ui` would."""

    def configure(data_dir: Path, llm: str | None, **extra: str) -> AppTest:
        monkeypatch.setenv("RAG_DATA_DIR", str(data_dir))
        monkeypatch.setenv("RAG_LLM_BASE_URL", llm or f"http://127.0.0.1:{_free_port()}/v1")
        # Small window and answers: the test model on two cores takes ~60 prompt tokens/s.
        monkeypatch.setenv("RAG_LLM_CONTEXT_WINDOW", "1024")
        monkeypatch.setenv("RAG_LLM_MAX_TOKENS", "40")
        for k, v in extra.items():
            monkeypatch.setenv(k, v)
        at = AppTest.from_file(str(APP), default_timeout=300)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        # The only errors a first run may show: a locked index, and proxy mode reached without the proxy.
        assert not at.main.error or any(s in at.main.error[0].value for s in ("cannot be opened", "sign-in proxy")), \
            at.main.error[0].value
        return at

    yield configure
    st.cache_resource.clear()  # releases the shared RAG: closes the store, frees its lock for other tests


def _assistant(at: AppTest):
    return [m for m in at.chat_message if m.name == "assistant"]


def test_answer_streams_with_sources_then_follow_up_and_new_chat(app_env, sample_index, llm_server):
    at = app_env(sample_index.data_dir, llm_server)
    side = " ".join(m.value for m in at.sidebar.markdown)
    assert "healthy" in side and "**5** documents" in side
    assert any("context window 1,024 tokens" in c.value for c in at.sidebar.caption)
    # The operator sees the index kind and why, and the fusion, as `rag status` shows them.
    assert any(c.value.startswith("search index: exact (auto:") and "hybrid fusion: score (cosine + 0.5" in c.value
               for c in at.sidebar.caption)

    at.chat_input[0].set_value("How many vacation days do employees get per year?").run()
    assert not at.exception and not at.error
    (msg,) = _assistant(at)
    assert msg.markdown[0].value.strip()  # the streamed answer
    labels = [e.label for e in at.expander]
    assert labels and all(lb.startswith("[") for lb in labels)
    assert any("employee-handbook.pdf, p." in lb for lb in labels), labels
    assert at.download_button, "each existing source file offers a download"
    first = at.session_state.turns[1].answer
    assert not first.refused and first.sources

    # A follow-up: the history reaches the chain and retrieval still finds the handbook.
    at.chat_input[0].set_value("And how many of them can be carried over?").run()
    assert not at.exception and not at.error
    assert len(_assistant(at)) == 2
    follow = at.session_state.turns[3].answer
    assert "vacation" in follow.standalone_question.lower(), follow.standalone_question
    assert any(c.path.endswith("employee-handbook.pdf") for c in follow.sources)

    next(b for b in at.sidebar.button if b.label == "New chat").click().run()
    assert not at.session_state.turns and not _assistant(at)


def test_nothing_found_is_said_without_calling_the_llm(app_env, sample_index, llm_server, monkeypatch):
    from rag.generation.chain import RAG

    opened = []
    real = RAG.from_settings.__func__
    monkeypatch.setattr(RAG, "from_settings", classmethod(lambda cls, s: opened.append(s) or real(cls, s)))
    at = app_env(sample_index.data_dir, llm_server)
    assert at.sidebar.selectbox(key="mode").value == "hybrid"
    at.sidebar.selectbox(key="mode").set_value("sparse").run()
    at.sidebar.slider(key="min_score").set_value(0.99).run()
    at.chat_input[0].set_value("What is the airspeed velocity of an unladen swallow?").run()
    assert not at.exception and not at.error
    answer = at.session_state.turns[1].answer
    assert answer.refused and answer.usage["source"] == "no LLM call"
    assert at.session_state.turns[1].threshold == 0.99
    (msg,) = _assistant(at)
    assert "do not contain an answer" in msg.markdown[0].value
    assert any("relevance threshold (0.99)" in c.value for c in msg.caption)
    assert len(opened) == 1, "store and embedder are opened once per process, not per rerun"


def test_endpoint_down_is_a_message_not_a_traceback(app_env, sample_index):
    at = app_env(sample_index.data_dir, llm=None)
    assert "unavailable" in " ".join(m.value for m in at.sidebar.markdown)
    at.chat_input[0].set_value("How many vacation days do employees get?").run()
    assert not at.exception
    (err,) = at.error
    assert "cannot reach the LLM" in err.value and "RAG_LLM_BASE_URL" in err.value
    # The failed turn stays visible but is not sent as history next time.
    assert at.session_state.turns[1].error and at.session_state.turns[1].answer is None


def test_store_locked_is_a_message(app_env, tmp_path):
    from rag.settings import Settings
    from rag.index.store import open_store

    open_store(Settings(data_dir=tmp_path / "data")).close()
    # Another process holds it, as a running `rag ingest` would (this one would be told to close its own).
    code = ("import sys\nfrom rag.index.store import open_store\nfrom rag.settings import Settings\n"
            f"s = open_store(Settings(data_dir={str(tmp_path / 'data')!r}))\nprint('open', flush=True)\n"
            "sys.stdin.read()\ns.close()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        at = app_env(tmp_path / "data", llm=None)
        assert not at.exception
        (err,) = at.error
        assert "cannot be opened" in err.value and "open in another process" in err.value
    finally:
        holder.communicate("", timeout=60)
    st.cache_resource.clear()
    at.run()  # once the other process is gone, the next interaction opens the index
    assert not at.error and not at.exception


def test_upload_goes_through_the_pipeline(app_env, tmp_path):
    at = app_env(tmp_path / "data", llm=None)
    assert any("index is empty" in i.value for i in at.info)
    # RAG_AUTH=none: said plainly, and no sign-in anywhere.
    assert [i.value for i in at.sidebar.info] == [signin.NONE_MODE_NOTE] and not at.text_input
    text = b"# Parking\n\nThe code of the parking garage gate is 4711. Visitors park on level -1.\n"
    at.sidebar.file_uploader[0].set_value([("../parking rules.md", text, "text/markdown"),
                                           ("tool.exe", b"MZ\x90\x00", "application/octet-stream")])
    at.run()
    next(b for b in at.sidebar.button if b.label == "Add to the index").click().run()
    assert not at.exception
    (ok,) = at.sidebar.warning  # one file failed, so the summary is a warning
    assert ok.value.startswith("1 added, 0 updated")
    assert any("tool.exe" in c.value and "unsupported file type" in c.value for c in at.sidebar.caption)
    saved = tmp_path / "data" / "uploads" / "parking rules.md"
    assert saved.read_bytes() == text  # the directory part of the name is dropped
    assert "**1** documents" in " ".join(m.value for m in at.sidebar.markdown)
    assert not at.sidebar.file_uploader[0].value  # a fresh uploader for the next files

    # The same name again with new content replaces the document.
    at.sidebar.file_uploader[0].set_value(("parking rules.md", text + b"\nBikes go to level 0.\n", "text/markdown"))
    at.run()
    next(b for b in at.sidebar.button if b.label == "Add to the index").click().run()
    assert at.sidebar.success[0].value.startswith("0 added, 1 updated")


def _in_place(at: AppTest):
    return [t for t in at.main.toggle if t.label == "Show in the document"]


def test_a_source_is_shown_in_its_document(app_env, sample_index, llm_server):
    at = app_env(sample_index.data_dir, llm_server)
    at.chat_input[0].set_value("How many vacation days do employees get per year?").run()
    assert not at.exception and not at.error
    answer = at.session_state.turns[1].answer
    shown = answer.cited or answer.sources
    pdf = next(i for i, c in enumerate(shown) if c.path.endswith(".pdf"))
    _in_place(at)[pdf].set_value(True).run()
    assert not at.exception and not at.error
    images = at.get("image")
    assert len(images) == 1
    cap = next(c.value for c in at.caption if c.value.startswith("Page "))
    assert f"Page {shown[pdf].page} of 7" in cap and "highlighted" in cap
    nxt = next(b for b in at.button if b.label == "Next page")
    nxt.click().run()
    assert not at.exception
    assert any(c.value.startswith(f"Page {shown[pdf].page + 1} of 7") for c in at.caption)
    # Any other kind of document: the indexed text around the passage, the passage marked.
    others = [i for i, c in enumerate(shown) if not c.path.endswith(".pdf")]
    if others:
        _in_place(at)[others[0]].set_value(True).run()
        assert not at.exception
        body = " ".join(h.proto.body for h in at.get("html"))
        assert "<mark>" in body and 'data-testid="rag-text-window"' in body
