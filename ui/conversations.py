"""The signed-in user's saved conversations in the page: the list in the sidebar (open, rename, delete), saving
each answered turn, thumbs up/down under each answer, and the operator's list of the worst-rated answers.

The database is rag.conversations' (one ConversationStore per server process, ui/state.py). Every call passes
the identity's name as the owner, so a conversation id in this session (left over, or forged) never reaches
another user's conversation: the store answers "not found", and the page starts a new chat instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import streamlit as st

from rag.conversations import ConversationNotFound, ConversationStore, StoredTurn
from rag.errors import RagError
from rag.generation.chain import RAG
from rag.security.auth import Identity
from rag.types import Answer, Citation
from ui.state import Turn
from ui.text import plain

log = logging.getLogger("rag.ui")

#: session_state: the id of the conversation shown (absent: a new chat, saved at its first answer).
CURRENT = "conversation_id"
#: session_state: counts the conversations shown in this session. An answer's widgets and page position are keyed
#: by its place in the conversation; without this the next conversation's answer in that place would inherit them
#: (its source opened in place, on the page the previous reader had turned to, without the highlight).
ROUND = "conversation_round"


def answer_key(i: int) -> str:
    """The key of the widgets under the ``i``-th turn of the conversation shown."""
    return f"{st.session_state.get(ROUND, 0)}-{i}"


def _next_round() -> None:
    st.session_state[ROUND] = st.session_state.get(ROUND, 0) + 1


def new_chat() -> None:
    st.session_state.turns = []
    st.session_state.pop(CURRENT, None)
    _next_round()


# --- from the database to the page, and back ----------------------------------------------------------------

def answer_of(t: StoredTurn) -> Answer:
    d = t.details
    return Answer(question=t.question, standalone_question=d.get("standalone_question") or t.question,
                  text=t.answer, sources=[Citation(**c) for c in t.sources], refused=bool(d.get("refused")),
                  usage=d.get("usage") or {}, timings=t.timings, packing=None, model=t.model,
                  removed_citations=d.get("removed_citations") or [], retries=d.get("retries") or 0,
                  endpoint=d.get("endpoint"))


def turns_of(stored: list[StoredTurn]) -> list[Turn]:
    out: list[Turn] = []
    for t in stored:
        out.append(Turn("user", t.question))
        out.append(Turn("assistant", t.answer, answer=answer_of(t), threshold=t.details.get("threshold"),
                        turn_id=t.id, rating=t.rating, comment=t.comment))
    return out


def open_conversation(store: ConversationStore, owner: str, conversation_id: str) -> None:
    """Show one of ``owner``'s conversations; someone else's id (or a deleted one) gives a new chat."""
    try:
        turns = turns_of(store.turns(owner, conversation_id))
    except ConversationNotFound:
        new_chat()
        return
    st.session_state.turns = turns
    st.session_state[CURRENT] = conversation_id
    _next_round()


def save(store: ConversationStore | None, identity: Identity, turn: Turn) -> None:
    """Keep an answered turn in the user's current conversation (created at its first answer)."""
    answer = turn.answer
    if store is None or answer is None:
        return
    details: dict[str, Any] = {"standalone_question": answer.standalone_question, "refused": answer.refused,
                               "usage": answer.usage, "removed_citations": answer.removed_citations,
                               "retries": answer.retries, "endpoint": answer.endpoint, "threshold": turn.threshold}
    try:
        current = st.session_state.get(CURRENT)
        if current is None:
            current = st.session_state[CURRENT] = store.create(identity.name, answer.question).id
        try:
            kept = _append(store, identity.name, current, answer, details)
        except ConversationNotFound:  # deleted in another tab meanwhile (or not this user's): start a new one
            current = st.session_state[CURRENT] = store.create(identity.name, answer.question).id
            kept = _append(store, identity.name, current, answer, details)
        turn.turn_id = kept.id
    except RagError as exc:
        log.error("saving the conversation: %s", exc)
        st.warning(f"This answer was not saved: {exc}", icon=":material/cloud_off:")


def _append(store: ConversationStore, owner: str, conversation_id: str, answer: Answer, details: dict[str, Any]):
    return store.append_turn(owner, conversation_id, question=answer.question, answer=answer.text,
                             sources=[c.to_dict() for c in answer.sources], model=answer.model,
                             timings=dict(answer.timings), details=details)


# --- the sidebar --------------------------------------------------------------------------------------------

#: More conversations than this are listed in a scrolling box of LIST_HEIGHT pixels: sixty buttons pushed the
#: assistant's state, the documents and the upload box thousands of pixels down the sidebar.
LIST_ROWS = 8
LIST_HEIGHT = 360


def sidebar_list(store: ConversationStore | None, identity: Identity) -> None:
    """The user's conversations, newest first; the one shown can be renamed or deleted."""
    if store is None:
        st.caption("Conversations are not saved: the conversations database is unavailable.")
        return
    try:
        mine = store.conversations(identity.name)
    except RagError as exc:
        st.caption(f"Conversations unavailable: {exc}")
        return
    current = st.session_state.get(CURRENT)
    if not mine:
        st.caption("Your conversations appear here, kept on the server.")
    # Titles are the user's text (a question, a name they typed): shown as written, never as Markdown.
    with st.container(height=LIST_HEIGHT) if len(mine) > LIST_ROWS else contextlib.nullcontext():
        for c in mine:
            st.button(plain(c.title), key=f"conv-{c.id}", on_click=open_conversation,
                      args=(store, identity.name, c.id), type="primary" if c.id == current else "secondary",
                      width="stretch", help=time.strftime("Last used %Y-%m-%d %H:%M", time.localtime(c.updated_at)))
    shown = next((c for c in mine if c.id == current), None)
    if shown is not None:
        # A bordered box, not an expander: the page's expanders are the answers' sources.
        with st.container(border=True):
            # No max_chars: the browser drops a pasted text longer than that whole, without a word; the store
            # shortens a long title itself (with "…").
            st.text_input("Title of this conversation", value=shown.title, key=f"conv-title-{shown.id}")
            left, right = st.columns(2)
            left.button("Rename", key="conv-rename", on_click=_rename,
                        args=(store, identity.name, shown.id, shown.title))
            # Deleting takes a second click: one click next to "Rename" must not lose a conversation for good.
            with right.popover("Delete"):  # no icon: with one the narrow column cut the label to "Del…"
                st.caption("Delete this conversation and its answers? This cannot be undone.")
                st.button("Delete it", key="conv-delete", type="primary", on_click=_delete,
                          args=(store, identity.name, shown.id))


EMPTY_TITLE = "A conversation needs a title: it keeps its old one."


def _rename(store: ConversationStore, owner: str, conversation_id: str, old_title: str) -> None:
    key = f"conv-title-{conversation_id}"
    title = st.session_state.get(key, "")
    if not title.strip():  # the store would call it "New chat", the label of the button that starts one
        st.session_state[key] = old_title
        st.toast(EMPTY_TITLE, icon=":material/edit:")
        return
    try:
        store.rename(owner, conversation_id, title)
    except ConversationNotFound:
        new_chat()


def _delete(store: ConversationStore, owner: str, conversation_id: str) -> None:
    with contextlib.suppress(ConversationNotFound):  # already gone (another tab), or never this user's
        store.delete(owner, conversation_id)
    new_chat()


# --- feedback -----------------------------------------------------------------------------------------------

def feedback_box(store: ConversationStore | None, identity: Identity, turn: Turn) -> None:
    """Thumbs up/down under a saved answer; once rated, an optional comment."""
    if store is None or turn.turn_id is None:
        return
    key = f"fb-{turn.turn_id}"
    if failed := st.session_state.pop("fb-error", None):
        st.warning(f"Your rating was not saved: {failed}", icon=":material/error:")
    up, down, note = st.columns([1, 1, 10], vertical_alignment="center")
    up.button("", key=f"{key}-up", icon=":material/thumb_up:", help="A good answer",
              type="primary" if turn.rating == 1 else "secondary", on_click=_rate, args=(store, identity, turn, 1))
    down.button("", key=f"{key}-down", icon=":material/thumb_down:", help="A wrong or unhelpful answer",
                type="primary" if turn.rating == -1 else "secondary", on_click=_rate, args=(store, identity, turn, -1))
    if turn.rating is None:
        return
    note.caption("Thanks. Your rating, with the question, the answer and its sources, goes to the administrators.")
    st.text_input("A comment (optional): what was wrong or missing?", value=turn.comment, key=f"{key}-comment",
                  max_chars=2000)
    st.button("Send comment", key=f"{key}-send", on_click=_rate, args=(store, identity, turn, turn.rating))


def _rate(store: ConversationStore, identity: Identity, turn: Turn, rating: int) -> None:
    comment = st.session_state.get(f"fb-{turn.turn_id}-comment", turn.comment) or ""
    assert turn.turn_id is not None
    try:
        store.add_feedback(identity.name, turn.turn_id, rating, comment)
    except RagError as exc:
        st.session_state["fb-error"] = str(exc)
        return
    turn.rating, turn.comment = rating, comment.strip()


# --- the operator's view ------------------------------------------------------------------------------------

def worst_rated_page(store: ConversationStore | None, rag: RAG, identity: Identity) -> None:
    """The answers users rated down, newest first, with the sources they were given: what to fix in the
    documents. Source names are shown only for documents this administrator may read."""
    st.header("Worst-rated answers")
    if store is None:
        st.error("The conversations database is unavailable.")
        return
    records = store.worst_rated(50)
    if not records:
        st.info("No answer has been rated down yet.")
        return
    tally: dict[str, int] = {}
    for r in records:
        for s in r.sources:
            if rag.readable(s.get("path", ""), user=identity):
                tally[s["path"]] = tally.get(s["path"], 0) + 1
    if tally:
        st.subheader("Documents behind them")
        st.dataframe([{"document": p, "answers rated down": n}
                      for p, n in sorted(tally.items(), key=lambda kv: -kv[1])], hide_index=True)
    for r in records:
        # Questions, models and passages are untrusted text: shown as written (ui/text.py), never as Markdown.
        when = time.strftime('%Y-%m-%d', time.localtime(r.created_at))
        with st.expander(f"{when} · {plain(r.question[:100])}"):
            st.markdown("**Answer** (" + plain(r.model or "model unknown") + ")")
            st.text(r.answer)
            if r.comment:
                st.markdown("**Comment**")
                st.text(r.comment)
            readable = [s for s in r.sources if rag.readable(s.get("path", ""), user=identity)]
            for s in readable:
                page = f", p. {s['page']}" if s.get("page") else ""
                st.caption(plain(f"[{s.get('n', '?')}] {s['path']}{page}: {s.get('snippet', '')[:300]}"))
            if len(readable) < len(r.sources):
                st.caption(f"{len(r.sources) - len(readable)} more sources in documents not shared with you.")
