"""Citations in answers: [1], [2] ... must name sources that were actually in the prompt.

Models invent numbers ([7] when there were three sources) or cite nothing. ``CitationFilter`` removes
invented numbers *while streaming*: it holds back only a possible citation in progress ("[", "[1", "[1,")
until it can tell, so the user still sees tokens as they arrive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# [1], [2, 3], [1][2], [1-3] are all common model outputs.
_CITE = re.compile(r"\[(\d{1,3}(?:\s*[,–-]\s*\d{1,3})*)\]")
_PARTIAL = re.compile(r"\[[\d,\s–-]{0,12}$")


def _numbers(inner: str) -> list[int]:
    out: list[int] = []
    for part in re.split(r"\s*,\s*", inner.strip()):
        m = re.fullmatch(r"(\d+)\s*[–-]\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            out.extend(range(a, b + 1) if 0 <= b - a <= 20 else [a, b])
        elif part.isdigit():
            out.append(int(part))
    return out


def clean(text: str, valid: set[int]) -> tuple[str, list[int], list[int]]:
    """(text with invented numbers removed, cited valid numbers in order of first use, removed numbers)."""
    cited: list[int] = []
    removed: list[int] = []

    def repl(m: re.Match) -> str:
        nums = _numbers(m.group(1))
        keep = [n for n in nums if n in valid]
        removed.extend(n for n in nums if n not in valid)
        for n in keep:
            if n not in cited:
                cited.append(n)
        return "".join(f"[{n}]" for n in dict.fromkeys(keep))

    out = _CITE.sub(repl, text)
    out = re.sub(r"[ \t]+([.,;:!?])", r"\1", out) if removed else out  # no space left before punctuation
    return out, cited, removed


def snippet(text: str, width: int) -> str:
    """``text`` on one line, cut at a word boundary to at most ``width`` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rsplit(" ", 1)[0] + "…"


class CitationFilter:
    """Stream-safe version of :func:`clean`: feed chunks, get cleaned chunks back."""

    def __init__(self, valid: Iterable[int]) -> None:
        self.valid = set(valid)
        self.cited: list[int] = []
        self.removed: list[int] = []
        self._pending = ""

    def feed(self, chunk: str) -> str:
        buf = self._pending + chunk
        m = _PARTIAL.search(buf)
        if m:
            self._pending, buf = buf[m.start():], buf[: m.start()]
        else:
            self._pending = ""
        return self._emit(buf)

    def flush(self) -> str:
        buf, self._pending = self._pending, ""
        return self._emit(buf)

    def _emit(self, text: str) -> str:
        if not text:
            return ""
        out, cited, removed = clean(text, self.valid)
        self.removed += removed
        for n in cited:
            if n not in self.cited:
                self.cited.append(n)
        return out

    def run(self, chunks: Iterable[str]) -> Iterator[str]:
        for c in chunks:
            out = self.feed(c)
            if out:
                yield out
        tail = self.flush()
        if tail:
            yield tail
