"""The chat page (Streamlit). Start it with ``rag ui``; it is a shell over the library: answers come from
``rag.generation.chain.RAG``, uploads go through ``ingest.uploads``; no retrieval or prompt logic lives here.

Streamlit reruns this script on every interaction, once per browser session. What is expensive and shareable
(the open store, the embedding model, the endpoint's discovery, the users file) lives in process-wide resources
that hold nothing of any one user (ui/state.py); the chat itself lives in ``st.session_state``, one per browser tab.

Every run first settles who is asking (ui/login.py over ui/signin.py: RAG_AUTH=none|password|proxy); every
question, source and download then goes through ``rag.generation.chain.RAG`` with that identity, whose groups
filter retrieval inside the store. The page's parts: ui/sidebar.py (status, controls, ui/upload.py), ui/chat.py
(the conversation), ui/evidence.py (each answer's sources), ui/conversations.py (the saved conversations,
feedback, and the administrators' worst-rated answers).
"""

from __future__ import annotations

import logging

import streamlit as st

from rag import offline

offline.apply()

from rag.errors import RagError  # noqa: E402
from rag.settings import Settings, settings_error  # noqa: E402
from rag.conversations import ConversationStore  # noqa: E402
from ui import chat, conversations  # noqa: E402
from ui.login import refuse_foreign_host, settle_identity  # noqa: E402
from ui.sidebar import fill_list, sidebar  # noqa: E402
from ui.state import Shared, Turn, auth_for, conversations_for, settings_key, shared_for  # noqa: E402

log = logging.getLogger("rag.ui")


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic names the variable that is wrong
        st.error(f"Invalid settings (RAG_* environment or rag.toml): {settings_error(exc)}")
        st.stop()


def _serve_metrics(settings: Settings) -> None:
    if settings.ui_metrics_port:
        from rag.ops import metrics

        try:
            metrics.serve(settings.ui_metrics_port)
        except OSError as exc:  # a port clash must not take the chat down
            log.warning("cannot serve metrics on port %s: %s", settings.ui_metrics_port, exc)


def _shared(key: str, settings: Settings) -> Shared:
    try:
        return shared_for(key, settings)
    except RagError as exc:
        with st.chat_message("assistant"):
            st.error(f"The document index cannot be opened: {exc}", icon=":material/lock:")
        st.stop()


def _conversations(key: str, settings: Settings) -> ConversationStore | None:
    """The conversations database, or None (the chat still answers, unsaved) when it cannot be opened."""
    try:
        return conversations_for(key, settings)
    except RagError as exc:
        log.error("%s", exc)
        st.sidebar.warning(str(exc), icon=":material/cloud_off:")
        return None


def main() -> None:
    # An emoji, not a ":material/…:" icon: Streamlit makes the browser fetch a material favicon from
    # fonts.gstatic.com, a request off this network on every page load (emojis are drawn inline).
    st.set_page_config(page_title="Ask the documents · onprem-rag", page_icon="📄")
    settings = _settings()
    refuse_foreign_host(settings)
    _serve_metrics(settings)
    key = settings_key(settings)
    auth = auth_for(key, settings)
    identity = settle_identity(settings, auth)
    shared = _shared(key, settings)
    store = _conversations(key, settings)
    turns: list[Turn] = st.session_state.setdefault("turns", [])
    side = sidebar(shared, settings, identity, auth)
    if side.view == "feedback":
        conversations.worst_rated_page(store, side.rag, identity)
    else:
        chat.page(side.rag, shared, identity, turns, store)
    fill_list(side, store, identity)


# Streamlit runs this script as __main__. The parse worker of uploads (ingest/sandbox.py, multiprocessing's
# forkserver) imports the parent's main script again, as __mp_main__: it must not draw the page there.
if __name__ == "__main__":
    main()
