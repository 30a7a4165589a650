"""Defects found by auditing the chat page as an employee would use it, checked with AppTest over the real app
script and a real store (no LLM server is needed: these are the page's own decisions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import streamlit as st

from conftest import SAMPLE_DOCS, USERS
from rag.conversations import ConversationStore
from rag.security.auth import local_identity
from rag.settings import Settings
from rag.types import Citation
from test_ui import app_env  # noqa: F401 - app_env is a fixture
from test_ui_auth import _sign_in, _text, data  # noqa: F401 - data is a fixture
from ui import chat, conversations
from ui.state import Turn


def test_a_blank_question_is_not_asked(app_env, tmp_path):  # noqa: F811
    at = app_env(tmp_path / "data", None)
    at.chat_input[0].set_value("   \n  ").run()
    assert not at.exception
    # Nothing to answer: no empty question in the conversation and no error about it.
    assert not at.session_state.turns and not at.chat_message and not at.error
    assert [t.value for t in at.toast] == ["Type a question first, then press Enter."]


def test_an_employee_is_told_what_to_do_when_the_llm_is_down_not_its_address(app_env, data):  # noqa: F811
    at = app_env(data, None, RAG_AUTH="password")
    _sign_in(at, "alice", USERS["alice"][1])
    at.chat_input[0].set_value("How many vacation days do employees get?").run()
    assert not at.exception
    (err,) = at.error
    # The sidebar keeps the model's address from employees; the failed answer must not print it either.
    assert "http://" not in _text(at) and "RAG_LLM_BASE_URL" not in _text(at)
    assert err.value == chat.LLM_DOWN


def test_a_question_whose_answer_was_cut_off_says_so(app_env, tmp_path):  # noqa: F811
    """What a run stopped mid-answer leaves (a click or the next question while it streamed: Streamlit starts a new
    run and stops the old one before it keeps a turn): the question, then nothing. The browser test
    (tests/e2e/test_ui_audit.py) makes it happen for real; here the state it leaves is drawn."""
    at = app_env(tmp_path / "data", None)
    at.session_state.turns = [Turn("user", "What does the handbook say about vacation days?"),
                              Turn("user", "How many can be carried over?"),
                              Turn("assistant", "", error="the LLM is down")]
    at.run()
    assert not at.exception
    (note,) = at.warning
    assert note.value == chat.INTERRUPTED
    assert [m.name for m in at.chat_message] == ["user", "assistant", "user", "assistant"]


def _handbook_turn(store: ConversationStore, title: str) -> str:
    """A saved conversation whose answer cites page 2 of the sample handbook (as the chain would have stored it)."""
    path = str(SAMPLE_DOCS / "employee-handbook.pdf")
    cite = Citation(n=1, path=path, source=path, page=2, page_end=2, section="1. Welcome", snippet="Welcome",
                    score=0.6, cited=True, text="Welcome")
    conv = store.create(local_identity().name, title)
    store.append_turn(local_identity().name, conv.id, question=title, answer="See [1].",
                      sources=[cite.to_dict()], model="test", timings={}, details={"threshold": 0.25})
    return conv.id


def test_a_source_opened_in_one_conversation_does_not_open_in_the_next(app_env, sample_index, tmp_path):  # noqa: F811
    """The widgets under an answer were keyed by its place in the conversation only, so the answer in the same
    place of the next conversation shown came up opened in place, on the page the reader had turned to before."""
    data_dir = tmp_path / "data"
    shutil.copytree(sample_index.data_dir, data_dir, ignore=shutil.ignore_patterns("conversations.sqlite3*"))
    store = ConversationStore.open(Settings(data_dir=data_dir))
    first = _handbook_turn(store, "Where is the welcome?")
    second = _handbook_turn(store, "Where is the welcome, again?")
    store.close()
    at = app_env(data_dir, None)

    at.sidebar.button(key=f"conv-{first}").click().run()
    next(t for t in at.main.toggle if t.label == "Show in the document").set_value(True).run()
    assert any(c.value.startswith("Page 2 of 7") for c in at.caption)
    next(b for b in at.button if b.label == "Next page").click().run()
    assert any(c.value.startswith("Page 3 of 7") for c in at.caption)

    at.sidebar.button(key=f"conv-{second}").click().run()
    assert not at.exception
    (shown,) = [t for t in at.main.toggle if t.label == "Show in the document"]
    assert not shown.value and not at.get("image"), "the other conversation's source came up opened in place"
    shown.set_value(True).run()
    assert any(c.value.startswith("Page 2 of 7") for c in at.caption), [c.value for c in at.caption]
    assert Path(at.session_state.turns[1].answer.sources[0].path).name == "employee-handbook.pdf"


def test_nothing_found_tells_an_employee_what_they_can_do(app_env, data):  # noqa: F811
    # Nothing scores this high: the answer is refused without calling the LLM (there is none here).
    at = app_env(data, None, RAG_AUTH="password", RAG_MIN_SCORE="0.99")
    _sign_in(at, "alice", USERS["alice"][1])
    at.chat_input[0].set_value("How many vacation days do employees get?").run()
    assert not at.exception and not at.error
    assert at.session_state.turns[1].answer.refused
    (advice,) = [c.value for c in at.caption if c.value.startswith("No passage scored")]
    # The threshold is in the operator's sidebar only: an employee is told what is within their reach.
    assert "lower the threshold" not in advice and "administrator" in advice, advice
    assert not at.sidebar.slider


def test_a_blank_title_does_not_rename_a_conversation(app_env, tmp_path):  # noqa: F811
    """Renaming to blanks called the conversation "New chat", the label of the button that starts one, and left
    the blanks in the title box."""
    store = ConversationStore.open(Settings(data_dir=tmp_path / "data"))
    conv = store.create(local_identity().name, "Vacation days")
    at = app_env(tmp_path / "data", None)
    at.sidebar.button(key=f"conv-{conv.id}").click().run()
    at.sidebar.text_input(key=f"conv-title-{conv.id}").input("   ")
    at.sidebar.button(key="conv-rename").click().run()
    assert not at.exception
    assert [c.title for c in store.conversations(local_identity().name)] == ["Vacation days"]
    assert at.sidebar.text_input(key=f"conv-title-{conv.id}").value == "Vacation days"
    assert conversations.EMPTY_TITLE in [t.value for t in at.toast]
    store.close()


def test_an_employee_is_not_shown_where_the_index_is_kept(app_env, data):  # noqa: F811
    """The sidebar showed every employee the store's path on the server (or the Qdrant server's address) and the
    embedding model: the operator's details, like the model's address the sidebar already kept from them."""
    at = app_env(data, None, RAG_AUTH="password")
    _sign_in(at, "alice", USERS["alice"][1])
    side = " ".join(c.value for c in at.sidebar.caption)
    assert str(data) not in side and "qdrant-edge" not in side and "all-MiniLM" not in side, side
    assert any("3** documents" in m.value for m in at.sidebar.markdown)  # what they may read, still
    # The operator (here the local user of RAG_AUTH=none) sees it.
    st.cache_resource.clear()  # a new process, as after a restart: the store admits one opener
    at = app_env(data, None, RAG_AUTH="none")
    assert any("qdrant-edge at" in c.value for c in at.sidebar.caption), [c.value for c in at.sidebar.caption]
