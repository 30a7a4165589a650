"""The sidebar's "Add documents": files from the browser into the index, shared with the groups the uploader
chooses among their own, one upload at a time per process; and the uploader's own files, with what they take of
their quota and a button to delete each (a quota without a way to free space would be a trap)."""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import streamlit as st
from cachetools import TTLCache
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from ingest.parsers import SUPPORTED_EXTENSIONS
from ingest.uploads import MB, delete_upload, ingest_uploads, list_uploads, safe_name, size_text, uploads_folder
from rag.errors import RagError
from rag.security.auth import Identity
from rag.security.markdown import code
from rag.settings import Settings
from ui import signin
from ui.state import Auth, Shared

log = logging.getLogger("rag.ui")

UNEXPECTED = ("The upload failed unexpectedly ({kind}); nothing of it was kept. Try again; if it keeps failing, "
              "tell an administrator (the server's log has the details).")


#: Results of uploads whose run was stopped before it could show them (a click or a reload while the files were
#: indexed), by the session's UPLOAD_TOKEN: that session's next run shows them.
_FINISHED: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=1024, ttl=3600)
_FINISHED_LOCK = threading.Lock()
#: The sessions (UPLOAD_TOKEN) whose upload is being indexed, in a run that may have been stopped meanwhile.
_RUNNING: set[str] = set()
UPLOAD_TOKEN = "upload_token"
STILL_INDEXING = "Your upload is still being indexed; its result appears here when it is done."


@st.fragment(run_every=2)
def _still_indexing(token: str) -> None:
    """While this session's upload goes on in a run that was stopped (the user clicked elsewhere meanwhile): say
    so, and show the whole page again, with the result and the new counts, once it is done."""
    with _FINISHED_LOCK:
        done = token in _FINISHED or token not in _RUNNING
    if done:
        st.rerun()
    st.caption(STILL_INDEXING)


def upload_box(shared: Shared, settings: Settings, identity: Identity, auth: Auth) -> None:
    round_ = st.session_state.setdefault("upload_round", 0)
    token = st.session_state.setdefault(UPLOAD_TOKEN, secrets.token_hex(16))
    with _FINISHED_LOCK:
        finished, running = _FINISHED.pop(token, None), token in _RUNNING
    if finished is not None:
        st.session_state.upload_result = finished
        st.session_state.upload_round = round_ = round_ + 1  # the files it took are no longer offered
    elif running:
        _still_indexing(token)
    target = signin.upload_settings(settings, identity)
    # The browser refuses larger files itself, before they are sent and held in this process's memory.
    files = st.file_uploader("PDF, Word, HTML, Markdown or text", accept_multiple_files=True,
                             type=sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS), key=f"upload-{round_}",
                             max_upload_size=max(1, math.ceil(settings.max_file_mb)))
    chosen: list[str] = []
    if not identity.unrestricted:
        # Only the uploader's own groups are offered, and upload_groups drops anything else the browser sends.
        chosen = st.multiselect("Also readable by", signin.shareable_groups(identity), default=[],
                                key=f"upload-groups-{round_}",
                                help=f"Your uploads are always readable by you (user:{identity.name}); add any "
                                     "of your groups to share them.")
    if files and st.button("Add to the index", type="primary", icon=":material/upload:"):
        with _FINISHED_LOCK:
            _RUNNING.add(token)
        try:
            result, interrupted = _add(files, chosen, shared, target, identity, auth)
            try:
                st.session_state.upload_result = result
                st.session_state.upload_round = round_ + 1  # a fresh, empty uploader
            except ScriptControlException:  # this run was stopped meanwhile: the session's next run shows it
                with _FINISHED_LOCK:
                    _FINISHED[token] = result
                raise
        finally:
            with _FINISHED_LOCK:
                _RUNNING.discard(token)
        if interrupted is not None:  # the click that came meanwhile gets its run now
            raise interrupted
        st.rerun()
    _show_result(st.session_state.get("upload_result"))
    _own_uploads(shared, target, identity, auth)


def _add(files: list[Any], chosen: list[str], shared: Shared, target: Settings, identity: Identity,
         auth: Auth) -> tuple[dict[str, Any], ScriptControlException | None]:
    """Save and index the files and record the upload in the audit log; the result to show, and what stopped
    this run meanwhile, if anything.

    A click anywhere in the page, or a reload, while the files are indexed makes Streamlit stop this run at its
    next call into Streamlit: the progress bar's (or the session state's). Stopped there, the upload used to end
    half-way without a word: the files indexed so far stayed in the index unaudited, the others were rolled
    back, and neither the result nor the new counts were shown. So nothing here touches Streamlit once it has
    said stop: the upload finishes and is recorded, and the caller raises the stop afterwards."""
    groups = signin.upload_groups(identity, chosen)
    interrupted: list[ScriptControlException] = []

    def draw(fraction: float, text: str) -> None:
        if interrupted:
            return
        try:
            bar.progress(fraction, text=text)
        except ScriptControlException as exc:
            interrupted.append(exc)

    bar = st.progress(0.0, text="Waiting for another upload to finish…")
    with shared.ingest_lock:
        def on_progress(p) -> None:
            name = Path(p.current).name if p.current else ""
            draw(min(p.bytes_done / max(p.bytes_total, 1), 1.0),
                 f"{p.files_done}/{p.files_total} files · {p.chunks_done} chunks · {name}")

        draw(0.0, "Reading the files…")
        t0 = time.perf_counter()
        report = None
        try:
            # The uploaded files themselves, not copies of their bytes: they are streamed to disk.
            report = ingest_uploads([(f.name, f) for f in files], target, groups=groups,
                                    store=shared.rag.store, embedder=shared.rag.embedder, progress=on_progress)
        except RagError as exc:
            result: dict[str, Any] = {"error": str(exc)}
        except Exception as exc:  # whatever one upload does, the page stays up for everyone
            log.exception("upload by %s failed", identity.name)
            result = {"error": UNEXPECTED.format(kind=exc.__class__.__name__)}
        else:
            result = {
                "summary": f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged "
                           f"· {report.chunks} chunks in {report.seconds:.1f} s",
                "failed": [(Path(f.path).name, f.reason) for f in report.failed],
                "warnings": [(Path(f.path).name, f.reason) for f in report.warnings],
            }
        shared.index(fresh=True)
    failed = {f.path for f in report.failed} if report is not None else set()
    folder = uploads_folder(target)
    indexed = [] if report is None else [
        path for f in files if f.name not in failed and (n := safe_name(f.name))
        and (path := str(folder / n)) not in failed]
    auth.record("upload", identity.name, cited=indexed, latency_ms=(time.perf_counter() - t0) * 1000,
                extra={"groups": groups if groups is not None else list(target.default_groups),
                       "files": len(files), "indexed": len(indexed), "error": report is None})
    return result, (interrupted[0] if interrupted else None)


def _show_result(result: dict[str, Any] | None) -> None:
    if not result:
        return
    if "error" in result:
        st.error(result["error"])
        return
    (st.warning if result["failed"] else st.success)(result["summary"])
    # File names are the uploader's to choose: shown as code, never as Markdown.
    for name, reason in result["failed"]:
        st.caption(f":red[failed] {code(name)}: {reason}")
    for name, reason in result["warnings"]:
        st.caption(f":orange[warning] {code(name)}: {reason}")


def _own_uploads(shared: Shared, target: Settings, identity: Identity, auth: Auth) -> None:
    mine = list_uploads(target)
    used = sum(size for _, size in mine)
    quota = target.upload_quota_mb
    st.caption(f"Your uploads: {len(mine)} files, {size_text(used)}"
               + (f" of {size_text(quota * MB)}" if quota else ""))
    if not mine:
        return
    with st.expander("Your uploaded files"):
        for name, size in mine:
            left, right = st.columns([3, 2], vertical_alignment="center")
            left.caption(f"{code(name)} · {size_text(size)}")
            right.button("Delete", key=f"delete-upload-{name}", icon=":material/delete:",
                         help="Take it out of the index and delete the file",
                         on_click=_delete, args=(name, shared, target, identity, auth))
    if st.session_state.get("upload_deleted"):
        st.caption(st.session_state.upload_deleted)


def _delete(name: str, shared: Shared, target: Settings, identity: Identity, auth: Auth) -> None:
    with shared.ingest_lock:
        try:
            gone = delete_upload(name, target, store=shared.rag.store, embedder=shared.rag.embedder)
        except RagError as exc:
            st.session_state.upload_deleted = f"{code(name)} was not deleted: {exc}"
            return
        shared.index(fresh=True)
    st.session_state.upload_deleted = f"{code(name)} deleted." if gone else f"{code(name)} was already gone."
    auth.record("upload_delete", identity.name, cited=[str(uploads_folder(target) / name)] if gone else [],
                extra={"deleted": gone})
