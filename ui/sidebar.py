"""The sidebar: who is signed in, the language model's and the index's state, the retrieval controls, uploads."""

from __future__ import annotations

import streamlit as st

from rag.errors import RagError
from rag.generation.chain import RAG
from rag.llm.local import MODEL_ALIAS
from rag.security.audit import safe_endpoint
from rag.security.auth import Identity
from rag.settings import Settings
from ui import signin
from ui.chat import llm_notice
from ui.state import Auth, Shared
from ui.upload import upload_box


def sidebar(shared: Shared, settings: Settings, identity: Identity, auth: Auth) -> RAG:
    """Status and controls; returns the RAG to answer with (the shared one, or a variant with the chosen
    retrieval settings over the same open store)."""
    rag = shared.rag
    with st.sidebar:
        st.title("onprem-rag")
        who(identity, auth, settings)
        st.button("New chat", on_click=_new_chat, icon=":material/add_comment:", width="stretch")

        st.subheader("Language model")
        _llm_status(rag)

        st.subheader("Documents")
        _index_status(shared, identity)

        st.subheader("Retrieval")
        top_k, mode, min_score = _retrieval_controls(settings)

        st.subheader("Add documents")
        upload_box(shared, settings, identity, auth)

    if (top_k, min_score, mode) != (settings.top_k, settings.min_score, settings.retrieval_mode):
        rag = rag.with_settings(top_k=top_k, min_score=min_score, retrieval_mode=mode)
    return rag


def _new_chat() -> None:
    st.session_state.turns = []


def _sign_out(auth: Auth, name: str) -> None:
    signin.sign_out(st.session_state)
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


def _index_status(shared: Shared, identity: Identity) -> None:
    try:
        idx = shared.index()
        documents, chunks = shared.readable_counts(identity)
        st.markdown(f"**{documents}** documents · **{chunks:,}** chunks"
                    + ("" if identity.unrestricted else " you may read"))
        st.caption(f"{idx['embedding_model']} ({idx['embedding_backend']}) · {idx['backend']} at "
                   f"{idx['location']}")
    except RagError as exc:
        st.caption(f"unavailable: {exc}")


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
