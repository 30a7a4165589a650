"""The sidebar: who is signed in, their conversations, the language model's and the index's state, uploads, and
for administrators the retrieval controls and the worst-rated answers."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import streamlit as st

from rag.errors import RagError
from rag.generation.chain import RAG
from rag.llm.local import MODEL_ALIAS
from rag.index.store.base import describe_index
from rag.security.audit import safe_endpoint
from rag.conversations import ConversationStore
from rag.security.auth import Identity, is_admin
from rag.settings import Settings
from ui import signin
from ui.chat import llm_notice
from ui.conversations import new_chat, sidebar_list
from ui.state import Auth, Shared
from ui.upload import upload_box

log = logging.getLogger("rag.ui")


class Side(NamedTuple):
    rag: RAG  # the shared one, or a variant with an admin's retrieval settings over the same open store
    view: str  # the page to show: "chat", or an admin's "feedback"
    conversations: Any  # the sidebar's place for the conversation list, filled after the chat (fill_list)


def sidebar(shared: Shared, settings: Settings, identity: Identity, auth: Auth) -> Side:
    """Status and controls, and a place for the user's conversations: filled after the chat has run, so that a
    conversation saved by this run's answer is already listed.

    An employee sees their conversations, the documents they may read and the upload box; the model, its
    window and the retrieval controls are the operator's view (RAG_ADMIN_GROUP, or the local user)."""
    rag = shared.rag
    admin = is_admin(identity, settings.admin_group)
    top_k, mode, min_score = settings.top_k, settings.retrieval_mode, settings.min_score
    view = "chat"
    with st.sidebar:
        st.title("onprem-rag")
        who(identity, auth, settings)
        st.button("New chat", on_click=new_chat, icon=":material/add_comment:", width="stretch")
        st.subheader("Conversations")
        slot = st.container()

        st.subheader("Language model")
        if admin:
            _llm_status(rag)
        else:
            _assistant_status(rag)

        st.subheader("Documents")
        _index_status(shared, identity, details=admin)

        if admin:
            st.subheader("Retrieval")
            top_k, mode, min_score = _retrieval_controls(settings)

        st.subheader("Add documents")
        upload_box(shared, settings, identity, auth)

        if admin:
            st.subheader("Administration")
            view = st.radio("Show", ["chat", "feedback"], key="admin_view", horizontal=True,
                            format_func={"chat": "the chat", "feedback": "worst-rated answers"}.get) or "chat"

    if (top_k, min_score, mode) != (settings.top_k, settings.min_score, settings.retrieval_mode):
        rag = rag.with_settings(top_k=top_k, min_score=min_score, retrieval_mode=mode)
    return Side(rag, view, slot)


def fill_list(side: Side, store: ConversationStore | None, identity: Identity) -> None:
    with side.conversations:
        sidebar_list(store, identity)


def _sign_out(auth: Auth, name: str) -> None:
    signin.sign_out(st.session_state, auth.sign_ins)  # the browser's other tabs, and its reloads, too
    auth.record("logout", name)


def who(identity: Identity, auth: Auth, settings: Settings) -> None:
    """Who is signed in (or that nobody needs to be), in the sidebar."""
    if identity.unrestricted:
        st.info(signin.NONE_MODE_NOTE, icon=":material/person:")
        return
    how = {"password": "", "proxy": " (through the sign-in proxy)"}.get(identity.via, "")
    st.markdown(f"Signed in as **{identity.name}**{how}")
    st.caption("Groups: " + ", ".join(identity.groups) + ". You see only documents shared with one of them.")
    if settings.auth == "password":
        st.button("Sign out", on_click=_sign_out, args=(auth, identity.name), icon=":material/logout:",
                  width="stretch")


def _llm_status(rag: RAG) -> None:
    if rag.pool.multi:  # one line per endpoint: health, breaker state, load
        for e in rag.pool.describe():
            dot = ":green[●]" if e.get("healthy") and e["state"] == "closed" else (
                ":orange[●]" if e["state"] == "half-open" else ":red[●]")
            window = f"{e['context_window']:,} tokens" if e.get("context_window") else "window unknown"
            st.caption(f"{dot} **{e.get('model') or 'unavailable'}** · {safe_endpoint(e['base_url'])} · {window} · "
                       f"{e['state']} · {e['in_flight']} busy · {e['requests']} requests, {e['failures']} "
                       f"failed" + (f" · {e['last_error']}" if e["state"] != "closed" and e["last_error"]
                                    else ""))
        return
    info = rag.endpoint.info
    if info.healthy:
        st.markdown(f":green[●] **{info.model}** · healthy")
        window = f"{info.context_window:,} tokens" if info.context_window else "unknown"
        st.caption(f"{info.kind} at {safe_endpoint(info.base_url)} · context window {window} ({info.context_source})")
        if info.model == MODEL_ALIAS:
            st.caption("Tiny demo model (SmolLM2-135M): expect weak answers. For real use set "
                       "RAG_LLM_BASE_URL to a vLLM or Ollama server.")
    else:
        notice = llm_notice(rag)
        st.markdown(":orange[●] **restarting**" if notice and "restarting" in notice
                    else ":red[●] **unavailable**")
        st.caption(notice or f"{safe_endpoint(info.base_url)}: {info.error}")


def _assistant_status(rag: RAG) -> None:
    """Whether questions can be answered now, without the operator's details (model, address, window)."""
    healthy = (any(e.get("healthy") and e["state"] != "open" for e in rag.pool.describe()) if rag.pool.multi
               else rag.endpoint.info.healthy)
    if healthy:
        st.markdown(":green[●] ready to answer")
        return
    notice = llm_notice(rag)
    st.markdown(":orange[●] **restarting**" if notice and "restarting" in notice else ":red[●] **unavailable**")
    st.caption(notice or "The language model does not answer right now: try again in a minute, or tell your "
                         "administrator.")


def _index_status(shared: Shared, identity: Identity, *, details: bool) -> None:
    try:
        idx = shared.index()
        documents, chunks = shared.readable_counts(identity)
        st.markdown(f"**{documents}** documents · **{chunks:,}** chunks"
                    + ("" if identity.unrestricted else " you may read"))
        if details:  # what an operator sizes and tunes by (`rag status` says the same); the store's path or
            # server address is no employee's business, as the model's address is not
            st.caption(f"{idx['embedding_model']} ({idx['embedding_backend']}) · {idx['backend']} at "
                       f"{idx['location']}")
            st.caption(f"search index: {describe_index(idx['index'])}"
                       + (f" · hybrid fusion: {idx['fusion']}" if idx["fusion"] else ""))
    except RagError as exc:
        if not details:
            log.error("index status: %s", exc)
        st.caption(f"unavailable: {exc}" if details else "unavailable right now: try again in a minute, or tell your "
                   "administrator.")


def _retrieval_controls(settings: Settings) -> tuple[int, str, float]:
    top_k = st.slider("Candidates per question (top-k)", 1, 100, settings.top_k, key="top_k",
                      help="Chunks retrieved before the best are packed into the model's context.")
    modes = ["hybrid", "dense", "sparse"]
    mode = st.selectbox("Search", modes, index=modes.index(settings.retrieval_mode), key="mode",
                        format_func={"hybrid": "hybrid (meaning + keywords)", "dense": "meaning (embeddings)",
                                     "sparse": "keywords (BM25)"}.get,
                        help="Hybrid fuses both rankings; keywords find exact names and codes.")
    min_score = st.slider("Relevance threshold", 0.0, 1.0, float(settings.min_score), 0.01, key="min_score",
                          help="Cosine similarity below which a chunk is ignored; nothing above it means "
                               "'the documents do not contain an answer'.")
    return top_k, mode, min_score
