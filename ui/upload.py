"""The sidebar's "Add documents": files from the browser into the index, shared with the groups the uploader
chooses among their own, one upload at a time per process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from ingest.parsers import SUPPORTED_EXTENSIONS
from ingest.uploads import ingest_uploads, safe_name
from rag.errors import RagError
from rag.security.auth import Identity
from rag.settings import Settings
from ui import signin
from ui.state import Auth, Shared


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
        _add(files, chosen, shared, settings, identity, auth)
        st.session_state.upload_round = round_ + 1  # a fresh, empty uploader
        st.rerun()
    _show_result(st.session_state.get("upload_result"))


def _add(files: list[Any], chosen: list[str], shared: Shared, settings: Settings, identity: Identity,
         auth: Auth) -> None:
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


def _show_result(result: dict[str, Any] | None) -> None:
    if not result:
        return
    if "error" in result:
        st.error(result["error"])
        return
    (st.warning if result["failed"] else st.success)(result["summary"])
    for name, reason in result["failed"]:
        st.caption(f":red[failed] **{name}**: {reason}")
    for name, reason in result["warnings"]:
        st.caption(f":orange[warning] **{name}**: {reason}")
