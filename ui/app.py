"""The chat page (Streamlit). Start it with ``rag ui``; it is a shell over the library: answers come from
``rag.generation.chain.RAG``, uploads go through ``ingest.uploads``; no retrieval or prompt logic lives here.

Streamlit reruns this script on every interaction, once per browser session. What is expensive and shareable
(the open store, the embedding model, the endpoint's discovery, the users file) lives in process-wide resources
that hold nothing of any one user; the chat itself lives in ``st.session_state``, one per browser tab.

Every run first settles who is asking (ui/signin.py: RAG_AUTH=none|password|proxy); every question, source and
download then goes through ``rag.generation.chain.RAG`` with that identity, whose groups filter retrieval inside the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mimetypes
import secrets
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
from ingest.uploads import ingest_uploads, safe_name  # noqa: E402
from rag.security.audit import AuditLog, safe_endpoint  # noqa: E402
from rag.security.auth import Identity, authenticate_password  # noqa: E402
from rag.generation.chain import RAG, Answer, Citation  # noqa: E402
from rag.errors import RagError  # noqa: E402
from rag.llm.local import MODEL_ALIAS  # noqa: E402
from rag.llm.local.supervisor import notice_for  # noqa: E402
from rag.settings import Settings  # noqa: E402
from rag.ops.status import index_info  # noqa: E402
from rag.security.users import UserDirectory  # noqa: E402
from ui import signin  # noqa: E402

log = logging.getLogger("rag.ui")

#: How long the sidebar's document counts may be stale (reading them scrolls the registry).
INDEX_INFO_TTL = 30.0


@dataclass
class Shared:
    """One per server process: the RAG (open store, embedder, endpoint) and what guards writes to the store."""

    rag: RAG
    ingest_lock: threading.Lock = field(default_factory=threading.Lock)
    _index: dict[str, Any] | None = None
    _docs: dict[str, tuple[frozenset[str], int]] | None = None  # path -> (groups, chunks): no user's data
    _index_at: float = 0.0

    def index(self, *, fresh: bool = False) -> dict[str, Any]:
        if fresh or self._index is None or time.monotonic() - self._index_at > INDEX_INFO_TTL:
            self._index = index_info(self.rag.store, self.rag.settings)
            self._docs = {p: (frozenset(r.groups), r.chunks) for p, r in self.rag.store.documents().items()}
            self._index_at = time.monotonic()
        return self._index

    def readable_counts(self, identity: Identity, *, fresh: bool = False) -> tuple[int, int]:
        """(documents, chunks) that ``identity`` may read: the whole index only for the local user."""
        idx = self.index(fresh=fresh)
        if identity.groups_any is None:
            return idx["documents"], idx["chunks"]
        mine = set(identity.groups_any)
        readable = [chunks for groups, chunks in (self._docs or {}).values() if groups & mine]
        return len(readable), sum(readable)


@dataclass
class Auth:
    """One per server process: the users file, the audit log and the login throttle (no user's data)."""

    directory: UserDirectory
    audit: AuditLog | None
    throttle: signin.LoginThrottle

    def record(self, event: str, user: str | None, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(event, user=user, **fields)
        except RagError as exc:
            log.error("audit log: %s", exc)


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


@st.cache_resource(max_entries=4)
def _auth(key: str, _settings: Settings) -> Auth:
    return Auth(UserDirectory.from_settings(_settings), AuditLog.from_settings(_settings), signin.LoginThrottle())


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


def render_sources(rag: RAG, answer: Answer, key: str) -> None:
    """The answer's sources, each with its passage and a download. Retrieval already kept out what the user may
    not read; each source is checked again here (its groups may have changed since), and the download reads the
    file through ``RAG.read_source`` with this session's grant when the browser asks for it."""
    grant = signin.grant_of(st.session_state)
    shown = [c for c in (answer.cited or answer.sources) if rag.readable(c.path, user=grant.identity)]
    if len(shown) < len(answer.cited or answer.sources):
        log.warning("%s: %d source(s) of an earlier answer are no longer readable; not shown",
                    grant.identity.name, len(answer.cited or answer.sources) - len(shown))
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
                st.download_button(f"Download {path.name}", data=lambda p=c.path: grant.read(rag, p),
                                   file_name=path.name,
                                   mime=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                                   key=f"dl-{key}-{c.n}", icon=":material/download:",
                                   # No rerun: one would delete the generated file before a slow browser
                                   # fetched it (Streamlit prunes unreferenced media at the end of a run).
                                   on_click="ignore")
            else:
                st.caption("The original file is no longer at this path.")


def render_turn(rag: RAG, turn: Turn, i: int) -> None:
    with st.chat_message(turn.role):
        if turn.error:
            st.error(turn.error, icon=":material/error:")
            return
        st.markdown(_md(turn.content))
        if turn.answer is not None:
            _answer_footer(turn.answer, turn.threshold)
            render_sources(rag, turn.answer, key=str(i))


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


def sidebar(shared: Shared, settings: Settings, identity: Identity, auth: Auth) -> RAG:
    """Status and controls; returns the RAG to answer with (the shared one, or a variant with the chosen
    retrieval settings over the same open store)."""
    rag = shared.rag
    with st.sidebar:
        st.title("onprem-rag")
        who(identity, auth, settings)
        st.button("New chat", on_click=_new_chat, icon=":material/add_comment:", width="stretch")

        st.subheader("Language model")
        if rag.pool.multi:  # one line per endpoint: health, breaker state, load
            for e in rag.pool.describe():
                dot = ":green[●]" if e.get("healthy") and e["state"] == "closed" else (
                    ":orange[●]" if e["state"] == "half-open" else ":red[●]")
                window = f"{e['context_window']:,} tokens" if e.get("context_window") else "window unknown"
                st.caption(f"{dot} **{e.get('model') or 'unavailable'}** · {safe_endpoint(e['base_url'])} · {window} · "
                           f"{e['state']} · {e['in_flight']} busy · {e['requests']} requests, {e['failures']} "
                           f"failed" + (f" · {e['last_error']}" if e["state"] != "closed" and e["last_error"]
                                        else ""))
        else:
            info = rag.endpoint.info
            if info.healthy:
                st.markdown(f":green[●] **{info.model}** · healthy")
                window = f"{info.context_window:,} tokens" if info.context_window else "unknown"
                st.caption(f"{info.kind} at {safe_endpoint(info.base_url)} · context window {window} ({info.context_source})")
                if info.model == MODEL_ALIAS:
                    st.caption("Tiny demo model (SmolLM2-135M): expect weak answers. For real use set "
                               "RAG_LLM_BASE_URL to a vLLM or Ollama server.")
            else:
                notice = _llm_notice(rag)
                st.markdown(":orange[●] **restarting**" if notice and "restarting" in notice
                            else ":red[●] **unavailable**")
                st.caption(notice or f"{safe_endpoint(info.base_url)}: {info.error}")

        st.subheader("Documents")
        try:
            idx = shared.index()
            documents, chunks = shared.readable_counts(identity)
            st.markdown(f"**{documents}** documents · **{chunks:,}** chunks"
                        + ("" if identity.unrestricted else " you may read"))
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
        upload_box(shared, settings, identity, auth)

    if (top_k, min_score, mode) != (settings.top_k, settings.min_score, settings.retrieval_mode):
        rag = rag.with_settings(top_k=top_k, min_score=min_score, retrieval_mode=mode)
    return rag


def upload_box(shared: Shared, settings: Settings, identity: Identity, auth: Auth) -> None:
    round_ = st.session_state.setdefault("upload_round", 0)
    files = st.file_uploader("PDF, Word, HTML, Markdown or text", accept_multiple_files=True,
                             type=sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS), key=f"upload-{round_}")
    chosen: list[str] = []
    if not identity.unrestricted:
        # Only the uploader's own groups are offered, and upload_groups drops anything else the browser sends.
        chosen = st.multiselect("Also readable by", signin.shareable_groups(identity), default=[],
                                key=f"upload-groups-{round_}",
                                help=f"Your uploads are always readable by you (user:{identity.name}); add any "
                                     "of your groups to share them.")
    if files and st.button("Add to the index", type="primary", icon=":material/upload:"):
        groups = signin.upload_groups(identity, chosen)
        target = signin.upload_settings(settings, identity)
        bar = st.progress(0.0, text="Waiting for another upload to finish…")
        with shared.ingest_lock:
            def on_progress(p) -> None:
                name = Path(p.current).name if p.current else ""
                bar.progress(min(p.bytes_done / max(p.bytes_total, 1), 1.0),
                             text=f"{p.files_done}/{p.files_total} files · {p.chunks_done} chunks · {name}")

            bar.progress(0.0, text="Reading the files…")
            t0 = time.perf_counter()
            try:
                report = ingest_uploads([(f.name, f.getvalue()) for f in files], target, groups=groups,
                                        store=shared.rag.store, embedder=shared.rag.embedder, progress=on_progress)
            except RagError as exc:
                st.session_state.upload_result = {"error": str(exc)}
                report = None
            else:
                st.session_state.upload_result = {
                    "summary": f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged "
                               f"· {report.chunks} chunks in {report.seconds:.1f} s",
                    "failed": [(Path(f.path).name, f.reason) for f in report.failed],
                    "warnings": [(Path(f.path).name, f.reason) for f in report.warnings],
                }
            shared.index(fresh=True)
        failed = {f.path for f in report.failed} if report is not None else set()
        indexed = [] if report is None else [
            path for f in files if f.name not in failed and (n := safe_name(f.name))
            and (path := str(target.uploads_dir / n)) not in failed]
        auth.record("upload", identity.name, cited=indexed, latency_ms=(time.perf_counter() - t0) * 1000,
                    extra={"groups": groups if groups is not None else list(settings.default_groups),
                           "files": len(files), "indexed": len(indexed), "error": report is None})
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


def _llm_notice(rag: RAG) -> str | None:
    """Why the demo model is not answering, when its supervisor (``rag llm serve``) says so."""
    return notice_for(rag.settings.data_dir, [e.base_url for e in rag.settings.llm_endpoint_list()])


def ask(rag: RAG, question: str, turns: list[Turn], identity: Identity) -> Turn:
    """Stream one answer into the open assistant message; failures become a message, never a traceback."""
    history = _history(turns)
    waiting = st.empty()
    waiting.caption("Searching the documents, then waiting for the model's first words…")
    try:
        stream = rag.stream(question, history, user=identity)
        st.write_stream(_streamed(iter(stream), waiting))
        answer = stream.answer
        assert answer is not None
    except RagError as exc:
        waiting.empty()
        # A crashed demo model being restarted is a wait, not a failure: say that rather than "connection refused".
        msg = _llm_notice(rag) or str(exc)
        st.error(msg, icon=":material/error:")
        return Turn("assistant", "", error=msg)
    except Exception as exc:  # a bug, not a user error: full details go to the server log only
        log.exception("answering %r failed", question)
        waiting.empty()
        msg = f"Something went wrong ({type(exc).__name__}: {exc}). The details are in the UI's log."
        st.error(msg, icon=":material/error:")
        return Turn("assistant", "", error=msg)
    waiting.empty()
    turn = Turn("assistant", answer.text, answer=answer, threshold=rag.settings.min_score)
    _answer_footer(answer, turn.threshold)
    render_sources(rag, answer, key=str(len(turns) + 1))
    return turn


def login_page(settings: Settings, auth: Auth) -> None:
    """RAG_AUTH=password and nobody signed in: only the form, nothing about the index or the model."""
    st.header("Sign in")
    st.caption("Ask your administrator for an account (`rag users add`).")
    session = st.session_state.setdefault(signin.SESSION_ID, secrets.token_hex(16))
    with st.form("login", clear_on_submit=True):  # the password leaves the widget state after every attempt
        name = st.text_input("Name", key="login_name", autocomplete="username")
        password = st.text_input("Password", type="password", key="login_password",
                                 autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    # The browser clears the form (clear_on_submit); the server's copy of the password goes now, too.
    st.session_state.pop("login_password", None)
    name = name.strip()
    keys = auth.throttle.keys(name, session)
    wait = auth.throttle.wait(keys)
    if wait > 0:
        auth.record("login_failed", name, extra={"via": "password", "throttled": True})
        st.error(f"Too many failed sign-ins. Try again in {math.ceil(wait)} s.", icon=":material/timer:")
        return
    with auth.throttle.verifying:
        user = authenticate_password(auth.directory, name, password) if name and password else None
    if user is None:
        auth.throttle.failed(keys)
        auth.record("login_failed", name, extra={"via": "password"})
        st.error(signin.WRONG_CREDENTIALS, icon=":material/lock:")
        return
    auth.throttle.succeeded(keys)
    # Re-read: a successful login may have upgraded the stored hash (argon2 parameters), which changes it.
    signin.sign_in(st.session_state, auth.directory.get(user.name) or user)
    auth.record("login_ok", user.name, extra={"via": "password"})
    st.rerun()


def _settings_error(exc: Exception) -> str:
    """A settings error without the offending values: one of them may be an API key or the proxy secret."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in errors(include_input=False, include_url=False))
        except Exception:  # noqa: BLE001 - not a pydantic error after all
            pass
    return type(exc).__name__


def main() -> None:
    st.set_page_config(page_title="Ask the documents · onprem-rag", page_icon=":material/description:")
    try:
        settings = Settings()
    except Exception as exc:  # pydantic names the variable that is wrong
        st.error(f"Invalid settings (RAG_* environment or rag.toml): {_settings_error(exc)}")
        st.stop()
    if settings.ui_metrics_port:
        from rag.ops import metrics

        try:
            metrics.serve(settings.ui_metrics_port)
        except OSError as exc:  # a port clash must not take the chat down
            log.warning("cannot serve metrics on port %s: %s", settings.ui_metrics_port, exc)
    key = _settings_key(settings)
    auth = _auth(key, settings)
    try:
        headers = st.context.headers if settings.auth == "proxy" else None  # never read in other modes
        identity = signin.current_identity(settings, st.session_state, headers, auth.directory)
    except RagError as exc:  # an unreadable or broken users file
        st.error(f"Sign-in is unavailable: {exc}", icon=":material/lock:")
        st.stop()
    if signin.bind_session(st.session_state, identity) and identity is not None and identity.via == "proxy":
        auth.record("login_ok", identity.name, extra={"via": "proxy", "groups": list(identity.groups)})
    if identity is None:
        if settings.auth == "proxy":
            if not st.session_state.get("_proxy_refused"):  # once per session, not on every rerun
                st.session_state["_proxy_refused"] = True
                auth.record("login_failed", None, extra={"via": "proxy"})
            st.error(signin.PROXY_REQUIRED, icon=":material/lock:")
        else:
            login_page(settings, auth)
        st.stop()

    try:
        shared = _shared(key, settings)
    except RagError as exc:
        with st.chat_message("assistant"):
            st.error(f"The document index cannot be opened: {exc}", icon=":material/lock:")
        st.stop()

    turns: list[Turn] = st.session_state.setdefault("turns", [])
    rag = sidebar(shared, settings, identity, auth)

    st.header("Ask the documents")
    if not turns:
        documents, _ = shared.readable_counts(identity)
        if documents:
            st.caption(f"{documents} documents are searchable. Answers cite their sources as [1], [2]…; "
                       "open a source to read the passage and download the file.")
        elif identity.unrestricted or not shared.index()["documents"]:
            st.info("The index is empty: add documents in the sidebar, or run `rag ingest PATH`.")
        else:
            st.info("No document is shared with your groups yet: add your own in the sidebar, or ask an "
                    "administrator to give you access.")
    for i, turn in enumerate(turns):
        render_turn(rag, turn, i)

    if question := st.chat_input("Ask a question about the documents"):
        question = question.strip()
        turns.append(Turn("user", question))
        with st.chat_message("user"):
            st.markdown(_md(question))
        with st.chat_message("assistant"):
            turns.append(ask(rag, question, turns[:-1], identity))


main()
