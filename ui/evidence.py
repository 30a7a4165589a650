"""Under each answer, what it rests on: a line on how it was made (speed, sources packed, a repack), and its
sources, each with the passage and a download of the file."""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Collection
from pathlib import Path

import streamlit as st

from rag.generation.chain import RAG, Answer, Citation
from rag.security.markdown import inert_markdown
from ui import signin

log = logging.getLogger("rag.ui")


def _quote(text: str, link_hosts: Collection[str] = ()) -> str:
    """A passage as a quote. Whoever can add a document wrote it: its brackets are escaped, and it is made
    inert like an answer too (its bare URLs, which a GFM renderer would make links, become code)."""
    escaped = text
    for ch in "\\`*_[]#<>|$~":
        escaped = escaped.replace(ch, "\\" + ch)
    return "\n".join("> " + line if line.strip() else ">"
                     for line in inert_markdown(escaped, link_hosts).splitlines())


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
            st.markdown(_quote(c.text or c.snippet, rag.settings.ui_link_hosts))
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


def answer_footer(answer: Answer, threshold: float | None) -> None:
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
