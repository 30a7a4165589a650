"""Under each answer, what it rests on: a line on how it was made (speed, sources packed, a repack), and its
sources, each with the passage, the passage shown in its document (a PDF page with the passage highlighted, or
the text around it), and a download of the file."""

from __future__ import annotations

import html
import logging
import mimetypes
from collections.abc import Collection
from pathlib import Path

import streamlit as st

from cachetools import LRUCache

from rag.errors import RagError
from rag.evidence.pages import RenderedPage
from rag.generation.chain import RAG, Answer, Citation
from rag.generation.support import UNSUPPORTED
from rag.security.markdown import inert_markdown
from ui import signin
from ui.text import plain

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


def _verdict_label(c: Citation) -> str:
    return " — not found in the source" if c.verdict == UNSUPPORTED else ""


def _support_caption(c: Citation) -> str:
    if c.support is None:
        return ""
    return f" · support {c.support:.2f}" + (" (not found in the source)" if c.verdict == UNSUPPORTED else "")


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
        # Open while shown in place: the rerun the toggle causes draws the answer anew, and a fresh expander
        # would start closed over what the reader just asked to see.
        with st.expander(f"[{c.n}] {plain(_where(c))}" + (f" — {plain(c.section)}" if c.section else "")
                         + _verdict_label(c),
                         expanded=bool(st.session_state.get(f"inplace-{key}-{c.n}"))):
            if c.verdict == UNSUPPORTED:
                st.warning(f"Not found in the source: the sentences citing [{c.n}] are not backed by this passage "
                           f"(support {c.support:.2f}). Check the answer against it.", icon=":material/help:")
            st.markdown(_quote(c.text or c.snippet, rag.settings.ui_link_hosts))
            path = Path(c.path)
            st.caption(f"{plain(c.path)} · relevance {c.score:.2f}" + _support_caption(c)
                       + (" · shortened to fit the context" if c.trimmed else ""))
            if st.toggle("Show in the document", key=f"inplace-{key}-{c.n}"):
                show_in_place(rag, c, grant, f"{key}-{c.n}")
            if path.is_file():
                st.download_button(f"Download {plain(path.name)}", data=lambda p=c.path: grant.read(rag, p),
                                   file_name=path.name,
                                   mime=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                                   key=f"dl-{key}-{c.n}", icon=":material/download:",
                                   # No rerun: one would delete the generated file before a slow browser
                                   # fetched it (Streamlit prunes unreferenced media at the end of a run).
                                   on_click="ignore")
            else:
                st.caption("The original file is no longer at this path.")


def answer_footer(answer: Answer, threshold: float | None, *, tunable: bool = True) -> None:
    """``tunable``: the reader has the sidebar's retrieval controls (the operator's view); advice about the
    threshold is only theirs to follow."""
    if answer.refused:
        at = f" ({threshold:.2f})" if threshold is not None else ""
        st.caption(f"No passage scored above the relevance threshold{at}. " + (
            "Rephrase the question, lower the threshold in the sidebar, or add documents." if tunable else
            "Rephrase the question, add your own documents in the sidebar, or ask an administrator whether the "
            "documents you need are shared with you."))
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


#: Pages rendered for this session, so that reruns (every click) do not render them again.
_PAGES = "rendered_pages"


def show_in_place(rag: RAG, c: Citation, grant: signin.Grant, key: str) -> None:
    """The passage where it is: its PDF page with the passage highlighted and page navigation, or the indexed text
    around it. Read with the session's grant, so sign-out and the download's checks apply."""
    try:
        if c.page is not None and c.path.lower().endswith(".pdf"):
            _page_view(rag, c, grant, key)
        else:
            _text_view(rag, c, grant)
    except RagError as exc:
        st.caption(str(exc))


def _page_view(rag: RAG, c: Citation, grant: signin.Grant, key: str) -> None:
    assert c.page is not None
    nav = f"page-{key}"
    page = st.session_state.setdefault(nav, c.page)
    # The highlight where the citation is: its own page(s); other pages are shown plain.
    on_cited = c.page <= page <= (c.page_end or c.page)
    cache = st.session_state.setdefault(_PAGES, LRUCache(maxsize=24))
    ck = (c.path, page, c.text if on_cited else None)
    rendered: RenderedPage | None = cache.get(ck)
    # render_sources showed this source only after checking, in this run, that the user may read it; a page
    # rendered earlier in the session is shown again while the session is active.
    if rendered is None or not grant.active():
        rendered = cache[ck] = grant.page(rag, c.path, page, c.text if on_cited else None)
    st.image(rendered.png, width="stretch", output_format="PNG")  # PNG: a JPEG would blur text and highlight
    st.caption(f"Page {rendered.page} of {rendered.pages}" + (" · the passage is highlighted" if rendered.boxes
                                                               else ""))
    prev, _, nxt = st.columns([1, 3, 1])
    if prev.button("Previous page", key=f"prev-{key}", disabled=page <= 1, icon=":material/chevron_left:"):
        st.session_state[nav] = page - 1
        st.rerun()
    if nxt.button("Next page", key=f"next-{key}", disabled=page >= rendered.pages, icon=":material/chevron_right:"):
        st.session_state[nav] = page + 1
        st.rerun()


def _text_view(rag: RAG, c: Citation, grant: signin.Grant) -> None:
    w = grant.text(rag, c.path, c.char_start, c.char_end)
    # Escaped, so document text is shown as text (no markup of its own, nothing to load); only <mark> is ours.
    body = "".join(html.escape(t).replace("\n", "<br>") if i != 1 else f"<mark>{html.escape(t)}</mark>".replace(
        "\n", "<br>") for i, t in enumerate((w.before, w.passage, w.after)))
    st.html(f'<div data-testid="rag-text-window" style="max-height: 24rem; overflow-y: auto; font-size: 0.9rem">'
            f'{"" if w.at_start else "… "}{body}{"" if w.at_end else " …"}</div>')
