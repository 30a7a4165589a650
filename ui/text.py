"""Text that someone else chose (a document's heading or file name, a conversation's title, a question), shown in
a place where Streamlit renders Markdown: button, expander and download labels, captions.

Such a label is Markdown with block syntax too: a title "```js" drew an empty code box as the button, "---" a
rule, ":red[x]" a red span that swallowed "red", ":material/delete:" an icon, "![x](https://…)" an image the
browser would fetch. ``plain`` escapes all of it, so the label shows the text as it was written.
"""

from __future__ import annotations

import re

# What would be markup inside a line: links and images, HTML and entities, LaTeX, colour spans and icons,
# emphasis, code, autolinks (the colon of "https://", "@" of an address).
_ACTIVE = re.compile(r"([\\`*_\[\]()<>!$~|{}:&#@^])")
# What would be markup at the start of a label: a list item ("- x", "+ x", "1. x"), a rule ("---", "==="),
# a heading or a quote (#, > are escaped above anyway).
_LEADING = re.compile(r"^(\d*)([-+=.])")


# Streamlit's own shortcodes, found in the text whatever its escapes: ":material/name:" draws an icon unless its
# "/" is escaped; ":streamlit:" draws the logo unless something (an invisible word joiner) follows the colon.
_ICON = re.compile(r"(?<=\\:)material/")
_LOGO = re.compile(r"(?<=\\:)(?=streamlit\\:)", re.IGNORECASE)
WORD_JOINER = "\u2060"


def plain(text: str) -> str:
    """``text`` as one line of Markdown that shows exactly that text (whitespace runs become one space)."""
    escaped = _ACTIVE.sub(r"\\\1", " ".join(text.split()))
    escaped = _LEADING.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped)
    escaped = _LOGO.sub(WORD_JOINER, _ICON.sub(r"material\\/", escaped))
    return re.sub(r"(?i)\bwww\.", lambda m: m.group()[:-1] + "\\.", escaped)  # "www.x.com" autolinks too
