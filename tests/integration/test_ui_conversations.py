"""Saved conversations and feedback in the chat page (AppTest over the real app script, real store, real LLM
server, and the conversations database in the data dir): resumed after a restart of the UI, rated, exported;
another user never reaches them; the operator's view only for administrators."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import streamlit as st

from conftest import USERS
from rag.conversations import ConversationStore
from rag.settings import Settings
from test_ui import _assistant, app_env  # noqa: F401 - app_env is a fixture
from test_ui_auth import QUESTION, _button, _sign_in, _text, data  # noqa: F401 - data is a fixture


def _store(data_dir: Path) -> ConversationStore:
    return ConversationStore.open(Settings(data_dir=data_dir))


def _conversation_buttons(at) -> list:
    return [b for b in at.sidebar.button if (b.key or "").startswith("conv-") and b.key not in
            ("conv-rename", "conv-delete")]


def test_a_conversation_is_rated_then_resumed_after_a_restart(app_env, sample_index, llm_server,  # noqa: F811
                                                              tmp_path):
    data_dir = tmp_path / "data"
    # A private copy: the conversations database is written into the data dir, and other UI tests' chats over
    # the shared sample index are left out.
    shutil.copytree(sample_index.data_dir, data_dir, ignore=shutil.ignore_patterns("conversations.sqlite3*"))
    at = app_env(data_dir, llm_server)
    question = "How many vacation days do employees get per year?"
    at.chat_input[0].set_value(question).run()
    assert not at.exception and not at.error
    turn = at.session_state.turns[1]
    conv = at.session_state.conversation_id
    assert turn.turn_id is not None and turn.answer.sources
    assert at.sidebar.button(key=f"conv-{conv}").label == question

    # Thumbs down, then a comment: both land in the database with what was rated.
    at.button(key=f"fb-{turn.turn_id}-down").click().run()
    assert not at.exception and any("goes to the administrators" in c.value for c in at.caption)
    at.text_input(key=f"fb-{turn.turn_id}-comment").input("It does not say how many carry over.")
    at.button(key=f"fb-{turn.turn_id}-send").click().run()
    assert not at.exception
    store = _store(data_dir)
    (record,) = store.export()
    assert (record.user, record.rating, record.comment) == ("local", -1, "It does not say how many carry over.")
    assert record.question == question and record.answer == turn.answer.text and record.model == turn.answer.model
    assert [s["path"] for s in record.sources] == [c.path for c in turn.answer.sources]
    store.close()

    # A restart: a new process (the cached resources dropped) and a new browser session.
    st.cache_resource.clear()
    at = app_env(data_dir, llm_server)
    assert not at.session_state.turns and [b.label for b in _conversation_buttons(at)] == [question]
    at.sidebar.button(key=f"conv-{conv}").click().run()
    assert not at.exception and not at.error
    resumed = at.session_state.turns
    assert [t.role for t in resumed] == ["user", "assistant"] and resumed[0].content == question
    assert resumed[1].answer.text == turn.answer.text and resumed[1].rating == -1
    assert [c.path for c in resumed[1].answer.sources] == [c.path for c in turn.answer.sources]
    (msg,) = _assistant(at)
    assert msg.markdown[0].value.strip() and any("employee-handbook.pdf" in e.label for e in at.expander)

    # The follow-up continues the same conversation, with the resumed turn as its history.
    at.chat_input[0].set_value("And how many of them can be carried over?").run()
    assert not at.exception and not at.error and at.session_state.conversation_id == conv
    assert "vacation" in at.session_state.turns[3].answer.standalone_question.lower()
    store = _store(data_dir)
    assert [t.question for t in store.turns("local", conv)][1] == "And how many of them can be carried over?"

    # Renamed, then deleted.
    at.sidebar.text_input(key=f"conv-title-{conv}").input("Vacation")
    at.sidebar.button(key="conv-rename").click().run()
    assert at.sidebar.button(key=f"conv-{conv}").label == "Vacation"
    assert [c.title for c in store.conversations("local")] == ["Vacation"]
    at.sidebar.button(key="conv-delete").click().run()
    assert not at.exception and not at.session_state.turns and not _conversation_buttons(at)
    assert store.conversations("local") == []

    # The local user is the operator: the worst-rated answers, with their sources, in the admin view.
    at.sidebar.radio(key="admin_view").set_value("feedback").run()
    assert not at.exception
    assert any(h.value == "Worst-rated answers" for h in at.header)
    (worst,) = [e for e in at.expander if question[:40] in e.label]
    shown = " ".join(c.value for c in worst.caption).replace("\\", "")  # the page shows it inert (escaped)
    assert "employee-handbook.pdf, p. 3" in shown
    store.close()


@pytest.mark.attack("evidence", "user B, in the chat UI, opens, continues, rates, renames and deletes user A's "
                                "conversation by planting its ids in the session, and opens the admin view")
def test_another_user_never_reaches_a_conversation_in_the_ui(app_env, data, llm_server):  # noqa: F811
    at = app_env(data, llm_server, RAG_AUTH="password")
    _sign_in(at, "alice", USERS["alice"][1])
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception and not at.error
    alice_conv, alice_turn = at.session_state.conversation_id, at.session_state.turns[1].turn_id
    _button(at, "Sign out").click().run()
    assert "conversation_id" not in at.session_state

    _sign_in(at, "bob", USERS["bob"][1])
    assert at.chat_input and not _conversation_buttons(at)
    # An employee's sidebar: no model details, no retrieval controls, no admin view.
    side = _text(at)
    assert "ready to answer" in side and "context window" not in side and "Administration" not in side
    assert not at.sidebar.slider and not at.sidebar.selectbox and not at.sidebar.radio

    # The ids planted in bob's session: the conversation is not shown, and nothing offers to rename or delete it.
    at.session_state["conversation_id"] = alice_conv
    at.session_state["admin_view"] = "feedback"
    at.run()
    assert not at.exception and not _conversation_buttons(at) and not _assistant(at)
    assert not any(b.key in ("conv-rename", "conv-delete") for b in at.sidebar.button)
    assert not any(h.value == "Worst-rated answers" for h in at.header)

    # Bob's question, asked "in" alice's conversation, starts his own.
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception and not at.error
    bob_conv = at.session_state.conversation_id
    assert bob_conv != alice_conv
    # His thumbs-down button, pointed at alice's answer: refused, and said.
    bobs_turn = at.session_state.turns[1]
    bobs_turn.turn_id = alice_turn
    at.run()
    at.button(key=f"fb-{alice_turn}-down").click().run()
    assert not at.exception
    assert any("not saved" in w.value for w in at.warning)

    store = _store(data)
    (kept,) = store.conversations("alice")
    assert kept.id == alice_conv and kept.turns == 1
    assert [c.id for c in store.conversations("bob")] == [bob_conv]
    assert [t.question for t in store.turns("alice", alice_conv)] == [QUESTION]
    assert store.export() == []  # bob's rating of alice's answer was not stored
    store.close()


def test_a_tab_showing_a_conversation_deleted_in_another_tab_answers_on(app_env, sample_index, tmp_path):  # noqa: F811
    """SQLite gave a deleted answer's id to the next answer: a tab still showing a conversation deleted in another
    tab then held two answers with one id, and the next question failed the whole page (two thumbs buttons with
    one key: "This app has encountered an error"); a thumbs click on the old answer would have rated the new one."""
    data_dir = tmp_path / "data"
    shutil.copytree(sample_index.data_dir, data_dir, ignore=shutil.ignore_patterns("conversations.sqlite3*"))
    store = _store(data_dir)
    conv = store.create("local", "Vacation days")
    store.append_turn("local", conv.id, question="How many vacation days do employees get?", answer="25.")
    # Nothing scores this high: the answer is refused without an LLM (the follow-up is not rewritten by one
    # either), and saved like any answer.
    at = app_env(data_dir, None, RAG_MIN_SCORE="0.99", RAG_CONDENSE_QUESTIONS="false")
    at.sidebar.button(key=f"conv-{conv.id}").click().run()
    store.delete("local", conv.id)  # in the other tab
    at.chat_input[0].set_value("And how many can be carried over?").run()
    assert not at.exception, [e.value for e in at.exception]
    ids = [t.turn_id for t in at.session_state.turns if t.role == "assistant"]
    assert len(ids) == 2 and len(set(ids)) == 2, ids
    # The answer went into a new conversation of its own.
    (kept,) = store.conversations("local")
    assert kept.id != conv.id and [t.question for t in store.turns("local", kept.id)] == [
        "And how many can be carried over?"]
    store.close()


def test_a_database_from_before_keeps_its_feedback_and_stops_reusing_ids(tmp_path):
    """The migration that stops SQLite reusing answer ids rebuilds the table: the ratings stay linked."""
    from rag.conversations.store import make_engine, migrate

    url = f"sqlite:///{tmp_path / 'conversations.sqlite3'}"
    engine = make_engine(url)
    migrate(engine, "0002")  # the schema before
    old = ConversationStore(engine)
    conv = old.create("alice", "Vacation")
    first = old.append_turn("alice", conv.id, question="How many days?", answer="25.")
    last = old.append_turn("alice", conv.id, question="And carried over?", answer="5.")
    old.add_feedback("alice", first.id, -1, "wrong")
    engine.dispose()

    store = ConversationStore.open(Settings(data_dir=tmp_path), url=url)
    assert [(r.turn_id, r.comment) for r in store.export()] == [(first.id, "wrong")]
    assert [t.rating for t in store.turns("alice", conv.id)] == [-1, None]
    store.delete("alice", conv.id)
    again = store.create("alice", "Again")
    assert store.append_turn("alice", again.id, question="q", answer="a").id > last.id
    store.close()
