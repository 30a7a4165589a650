"""The chat page (Streamlit). Start it with ``rag ui``; it is a shell over the library: answers come from
``rag.chain.RAG``, uploads go through ``ingest.uploads``; no retrieval or prompt logic lives here.

Streamlit reruns this script on every interaction, once per browser session. What is expensive and shareable
(the open store, the embedding model, the endpoint's discovery) lives in one process-wide resource; the chat
itself lives in ``st.session_state``, one per browser tab.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from rag import offline

offline.apply()

from ingest.parsers import SUPPORTED_EXTENSIONS  # noqa: E402
from ingest.uploads import ingest_uploads  # noqa: E402
from rag.chain import RAG, Answer, Citation  # noqa: E402
from rag.errors import RagError  # noqa: E402
from rag.local_llm import MODEL_ALIAS  # noqa: E402
from rag.settings import Settings  # noqa: E402
from rag.status import index_info  # noqa: E402

log = logging.getLogger("rag.ui")

#: How long the sidebar's document counts may be stale (reading them scrolls the registry).
INDEX_INFO_TTL = 30.0


@dataclass
class Shared:
    """One per server process: the RAG (open store, embedder, endpoint) and what guards writes to the store."""

    rag: RAG
    ingest_lock: threading.Lock = field(default_factory=threading.Lock)
    _index: dict[str, Any] | None = None
    _index_at: float = 0.0

    def index(self, *, fresh: bool = False) -> dict[str, Any]:
        if fresh or self._index is None or time.monotonic() - self._index_at > INDEX_INFO_TTL:
            self._index = index_info(self.rag.store, self.rag.settings)
            self._index_at = time.monotonic()
        return self._index


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    content: str
    answer: Answer | None = None
    error: str | None = None
    threshold: float | None = None  # the relevance threshold the answer was retrieved with


def _settings_key(settings: Settings) -> str:
    values = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
              for k, v in settings.model_dump().items()}
    return hashlib.sha256(json.dumps(values, default=str, sort_keys=True).encode()).hexdigest()


def _release(shared: Shared) -> None:
    shared.rag.close()


# One entry: the embedded store admits one opener per process, so new settings must release the old store first.
@st.cache_resource(show_spinner="Opening the index and loading the embedding model…", max_entries=1,
                   on_release=_release)
def _shared(key: str, _settings: Settings) -> Shared:
    return Shared(RAG.from_settings(_settings))


def _md(text: str) -> str:
    """Model output is rendered as Markdown, but a "$" would start LaTeX ("$200 ... $300" as a formula)."""
    return text.replace("$", r"\$")


def _quote(text: str) -> str:
    escaped = text
    for ch in "\\`*_[]#<>|$~":
        escaped = escaped.replace(ch, "\\" + ch)
    return "\n".join("> " + line if line.strip() else ">" for line in escaped.splitlines())


def _where(c: Citation) -> str:
    name = Path(c.path).name
    if c.page is None:
        return name
    if c.page_end and c.page_end != c.page:
        return f"{name}, pp. {c.page}–{c.page_end}"
    return f"{name}, p. {c.page}"


def render_sources(answer: Answer, key: str) -> None:
    shown = answer.cited or answer.sources
    if not shown:
        return
    st.caption("Sources" if answer.cited else "Sources given to the model (the answer cites none)")
    for c in shown:
        with st.expander(f"[{c.n}] {_where(c)}" + (f" — {c.section}" if c.section else "")):
            st.markdown(_quote(c.text or c.snippet))
            path = Path(c.path)
            st.caption(f"{c.path} · relevance {c.score:.2f}" + (" · shortened to fit the context" if c.trimmed
                                                                 else ""))
            if path.is_file():
                st.download_button(f"Download {path.name}", data=lambda p=path: p.read_bytes(), file_name=path.name,
                                   mime=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                                   key=f"dl-{key}-{c.n}", icon=":material/download:")
            else:
                st.caption("The original file is no longer at this path.")


def render_turn(turn: Turn, i: int) -> None:
    with st.chat_message(turn.role):
        if turn.error:
            st.error(turn.error, icon=":material/error:")
            return
        st.markdown(_md(turn.content))
        if turn.answer is not None:
            _answer_footer(turn.answer, turn.threshold)
            render_sources(turn.answer, key=str(i))


def _answer_footer(answer: Answer, threshold: float | None) -> None:
    if answer.refused:
        st.caption(f"No passage scored above the relevance threshold ({threshold:.2f}). "
                   "Rephrase the question, lower the threshold in the sidebar, or add documents.")
        return
    t = answer.timings
    parts = []
    if t.get("ttft") is not None:
        parts.append(f"first token {t['ttft']:.1f} s")
    if t.get("tokens_per_s"):
        parts.append(f"{t['tokens_per_s']:.0f} tokens/s")
    if answer.packing is not None:
        parts.append(f"{len(answer.packing.sources)} sources in {answer.packing.used}/{answer.packing.budget} "
                     "tokens")
    if answer.retries:
        parts.append("repacked after the server reported an overflow")
    if parts:
        st.caption(" · ".join(parts))


def _history(turns: list[Turn]) -> list[tuple[str, str]]:
    """Completed question/answer pairs; failed turns are not part of the conversation."""
    out: list[tuple[str, str]] = []
    for q, a in zip(turns, turns[1:]):
        if q.role == "user" and a.role == "assistant" and a.answer is not None:
            out += [("user", q.content), ("assistant", a.answer.text)]
    return out


def _new_chat() -> None:
    st.session_state.turns = []


def sidebar(shared: Shared, settings: Settings) -> RAG:
    """Status and controls; returns the RAG to answer with (the shared one, or a variant with the chosen
    retrieval settings over the same open store)."""
    rag = shared.rag
    with st.sidebar:
        st.title("onprem-rag")
        st.button("New chat", on_click=_new_chat, icon=":material/add_comment:", width="stretch")

        st.subheader("Language model")
        if rag.pool.multi:  # one line per endpoint: health, breaker state, load
            for e in rag.pool.describe():
                dot = ":green[●]" if e.get("healthy") and e["state"] == "closed" else (
                    ":orange[●]" if e["state"] == "half-open" else ":red[●]")
                window = f"{e['context_window']:,} tokens" if e.get("context_window") else "window unknown"
                st.caption(f"{dot} **{e.get('model') or 'unavailable'}** · {e['base_url']} · {window} · "
                           f"{e['state']} · {e['in_flight']} busy · {e['requests']} requests, {e['failures']} "
                           f"failed" + (f" · {e['last_error']}" if e["state"] != "closed" and e["last_error"]
                                        else ""))
        else:
            info = rag.endpoint.info
            if info.healthy:
                st.markdown(f":green[●] **{info.model}** · healthy")
                window = f"{info.context_window:,} tokens" if info.context_window else "unknown"
                st.caption(f"{info.kind} at {info.base_url} · context window {window} ({info.context_source})")
                if info.model == MODEL_ALIAS:
                    st.caption("Tiny demo model (SmolLM2-135M): expect weak answers. For real use set "
                               "RAG_LLM_BASE_URL to a vLLM or Ollama server.")
            else:
                st.markdown(":red[●] **unavailable**")
                st.caption(f"{info.base_url}: {info.error}")

        st.subheader("Documents")
        try:
            idx = shared.index()
            st.markdown(f"**{idx['documents']}** documents · **{idx['chunks']:,}** chunks")
            st.caption(f"{idx['embedding_model']} ({idx['embedding_backend']}) · {idx['backend']} at "
                       f"{idx['location']}")
        except RagError as exc:
            st.caption(f"unavailable: {exc}")

        st.subheader("Retrieval")
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

        st.subheader("Add documents")
        upload_box(shared, settings)

    if (top_k, min_score, mode) != (settings.top_k, settings.min_score, settings.retrieval_mode):
        rag = rag.with_settings(top_k=top_k, min_score=min_score, retrieval_mode=mode)
    return rag


def upload_box(shared: Shared, settings: Settings) -> None:
    round_ = st.session_state.setdefault("upload_round", 0)
    files = st.file_uploader("PDF, Word, HTML, Markdown or text", accept_multiple_files=True,
                             type=sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS), key=f"upload-{round_}")
    if files and st.button("Add to the index", type="primary", icon=":material/upload:"):
        bar = st.progress(0.0, text="Waiting for another upload to finish…")
        with shared.ingest_lock:
            def on_progress(p) -> None:
                name = Path(p.current).name if p.current else ""
                bar.progress(min(p.bytes_done / max(p.bytes_total, 1), 1.0),
                             text=f"{p.files_done}/{p.files_total} files · {p.chunks_done} chunks · {name}")

            bar.progress(0.0, text="Reading the files…")
            try:
                report = ingest_uploads([(f.name, f.getvalue()) for f in files], settings,
                                        store=shared.rag.store, embedder=shared.rag.embedder, progress=on_progress)
            except RagError as exc:
                st.session_state.upload_result = {"error": str(exc)}
            else:
                st.session_state.upload_result = {
                    "summary": f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged "
                               f"· {report.chunks} chunks in {report.seconds:.1f} s",
                    "failed": [(Path(f.path).name, f.reason) for f in report.failed],
                    "warnings": [(Path(f.path).name, f.reason) for f in report.warnings],
                }
            shared.index(fresh=True)
        st.session_state.upload_round = round_ + 1  # a fresh, empty uploader
        st.rerun()
    result = st.session_state.get("upload_result")
    if result:
        if "error" in result:
            st.error(result["error"])
        else:
            (st.warning if result["failed"] else st.success)(result["summary"])
            for name, reason in result["failed"]:
                st.caption(f":red[failed] **{name}**: {reason}")
            for name, reason in result["warnings"]:
                st.caption(f":orange[warning] **{name}**: {reason}")


def _streamed(pieces: Iterator[str], waiting: Any) -> Iterator[str]:
    first = True
    for piece in pieces:
        if first:
            waiting.empty()
            first = False
        yield _md(piece)


def ask(rag: RAG, question: str, turns: list[Turn]) -> Turn:
    """Stream one answer into the open assistant message; failures become a message, never a traceback."""
    history = _history(turns)
    waiting = st.empty()
    waiting.caption("Searching the documents, then waiting for the model's first words…")
    try:
        stream = rag.stream(question, history)
        st.write_stream(_streamed(iter(stream), waiting))
        answer = stream.answer
        assert answer is not None
    except RagError as exc:
        waiting.empty()
        st.error(str(exc), icon=":material/error:")
        return Turn("assistant", "", error=str(exc))
    except Exception as exc:  # a bug, not a user error: full details go to the server log only
        log.exception("answering %r failed", question)
        waiting.empty()
        msg = f"Something went wrong ({type(exc).__name__}: {exc}). The details are in the UI's log."
        st.error(msg, icon=":material/error:")
        return Turn("assistant", "", error=msg)
    waiting.empty()
    turn = Turn("assistant", answer.text, answer=answer, threshold=rag.settings.min_score)
    _answer_footer(answer, turn.threshold)
    render_sources(answer, key=str(len(turns) + 1))
    return turn


def main() -> None:
    st.set_page_config(page_title="Ask the documents · onprem-rag", page_icon=":material/description:")
    try:
        settings = Settings()
    except Exception as exc:  # pydantic names the variable that is wrong
        st.error(f"Invalid settings (RAG_* environment or rag.toml): {exc}")
        st.stop()
    try:
        shared = _shared(_settings_key(settings), settings)
    except RagError as exc:
        with st.chat_message("assistant"):
            st.error(f"The document index cannot be opened: {exc}", icon=":material/lock:")
        st.stop()

    turns: list[Turn] = st.session_state.setdefault("turns", [])
    rag = sidebar(shared, settings)

    st.header("Ask the documents")
    if not turns:
        idx = shared.index()
        if idx["documents"]:
            st.caption(f"{idx['documents']} documents are searchable. Answers cite their sources as [1], [2]…; "
                       "open a source to read the passage and download the file.")
        else:
            st.info("The index is empty: add documents in the sidebar, or run `rag ingest PATH`.")
    for i, turn in enumerate(turns):
        render_turn(turn, i)

    if question := st.chat_input("Ask a question about the documents"):
        question = question.strip()
        turns.append(Turn("user", question))
        with st.chat_message("user"):
            st.markdown(_md(question))
        with st.chat_message("assistant"):
            turns.append(ask(rag, question, turns[:-1]))


main()
