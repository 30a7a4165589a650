"""Pack retrieved chunks (and chat history) into the model's context window, exactly.

Pure logic: no I/O beyond the token counter it is given, so it is unit-tested with exact counts.

Budget = context window - reserved output - system prompt - question - chat template overhead - margin.
Sources are added greedily by relevance; a source that does not fit is skipped, not a stop (a smaller one
further down may still fit). Adjacent or overlapping chunks of one document merge into one source (one
header, no repeated overlap); near-duplicates are dropped. The kept sources are then put in document
order and numbered [1], [2], ... History gets what the sources leave, newest turns first, with a share
reserved for it up front so a long document list cannot crowd out the conversation entirely.
Every decision is reported: what was kept, what was dropped, and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rag.generation.passages import TRIM_MARK, adjacent, merge_text, shingles, similarity, trim_to_fit
from rag.types import Message, Passage


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...


@dataclass
class Source:
    """A packed, citable source: one or more adjacent passages of one document."""

    n: int
    path: str
    source: str
    passages: list[Passage]
    text: str
    tokens: int
    score: float

    @property
    def page_start(self) -> int | None:
        pages = [p.page_start for p in self.passages if p.page_start is not None]
        return min(pages) if pages else None

    @property
    def page_end(self) -> int | None:
        pages = [p.page_end for p in self.passages if p.page_end is not None]
        return max(pages) if pages else None

    @property
    def section(self) -> str | None:
        return next((p.section for p in self.passages if p.section), None)

    @property
    def char_start(self) -> int:
        return min(p.char_start for p in self.passages)


@dataclass(frozen=True)
class Dropped:
    id: str
    path: str
    reason: str


@dataclass
class Packing:
    sources: list[Source]
    history: list[Message]
    dropped: list[Dropped]
    dropped_history: int
    context_window: int
    max_output_tokens: int
    fixed_tokens: int  # system prompt + question + template overhead
    margin: int
    budget: int  # tokens available for sources + history
    used: int  # tokens the sources and history take
    candidates: int = 0
    notes: list[str] = field(default_factory=list)
    trimmed: list[Dropped] = field(default_factory=list)  # passages kept only in part, and how much
    prompt_tokens: int | None = None  # the whole prompt as counted before sending (set by the chain)

    @property
    def fill(self) -> float:
        return self.used / self.budget if self.budget > 0 else 0.0

    def summary(self) -> dict:
        return {
            "kept": sum(len(s.passages) for s in self.sources),
            "sources": len(self.sources),
            "dropped": len(self.dropped),
            "dropped_history_turns": self.dropped_history,
            "candidates": self.candidates,
            "budget": self.budget,
            "used": self.used,
            "fill": round(self.fill, 4),
            "prompt_tokens": self.prompt_tokens,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "fixed_tokens": self.fixed_tokens,
            "margin": self.margin,
            "trimmed": [{"id": d.id, "path": d.path, "reason": d.reason} for d in self.trimmed],
            "drop_reasons": [{"id": d.id, "path": d.path, "reason": d.reason} for d in self.dropped],
            "notes": list(self.notes),
        }


SourceFormatter = Callable[[int, "Source"], str]


def _pages(a: int | None, b: int | None) -> str:
    if a is None:
        return ""
    return f"p. {a}" if b in (None, a) else f"pp. {a}-{b}"


def format_source(n: int, src: Source) -> str:
    """How one source appears in the prompt: quoted data with its header, never mistaken for instructions."""
    attrs = [f'id="{n}"', f'file="{_attr(src.source)}"']
    pages = _pages(src.page_start, src.page_end)
    if pages:
        attrs.append(f'pages="{pages}"')
    if src.section:
        attrs.append(f'section="{_attr(src.section)}"')
    return f"<source {' '.join(attrs)}>\n{_quote(src.text)}\n</source>"


def _attr(s: str) -> str:
    return s.replace('"', "'").replace("\n", " ")[:200]


def _quote(text: str) -> str:
    # A document cannot close its own source block (or open a fake one) and smuggle instructions after it.
    return re.sub(r"</?\s*source\b", lambda m: m.group(0).replace("<", "‹"), text, flags=re.IGNORECASE)


SOURCES_SEP = "\n\n"


def join_sources(blocks: Sequence[str]) -> str:
    return SOURCES_SEP.join(blocks)


def pack(
    passages: Sequence[Passage],
    *,
    question: str,
    system_prompt: str,
    history: Sequence[Message] = (),
    context_window: int,
    max_output_tokens: int,
    counter: TokenCounter,
    template_overhead: int = 0,
    turn_overhead: int = 10,
    margin: int = 0,
    history_share: float = 0.25,
    trim_min_tokens: int = 24,
    dedup_threshold: float = 0.9,
    formatter: SourceFormatter = format_source,
) -> Packing:
    """Choose what goes into the prompt. ``passages`` are in relevance order, best first.

    ``template_overhead`` is what the chat template adds around the system and user messages (measured per
    endpoint), ``turn_overhead`` what it adds per history turn (a user message and its answer: history is
    kept or dropped in whole turns, so the prompt keeps alternating roles as chat templates require);
    ``margin`` absorbs counting error.
    When room is left at the end (at least ``trim_min_tokens`` for a new source; any for continuing a kept
    one, which needs no header), the best passage that did not fit
    is cut at a word boundary to fill it (reported in ``trimmed``, its text marked with ``TRIM_MARK``):
    a 300-token chunk does not fit 250 tokens of room, and leaving them empty wastes a fifth of a small window.
    """
    fixed = counter.count(system_prompt) + counter.count(question) + template_overhead
    budget = context_window - max_output_tokens - fixed - margin
    if budget <= 0:
        return Packing([], [], [Dropped(p.id, p.path, "no room: the question and system prompt fill the window")
                                for p in passages], len(history), context_window, max_output_tokens, fixed, margin,
                       max(budget, 0), 0, candidates=len(passages),
                       notes=["the question alone does not fit the context window"])
    hist = _History(history, counter, turn_overhead)
    hist.keep_newest(int(budget * history_share))  # its share first, so sources cannot crowd it out
    src = _Sources(counter, formatter, dedup_threshold)
    for p in passages:
        src.add(p, budget - hist.used)
    hist.keep_older(budget - src.used - hist.used)  # then whatever the sources left, oldest turns last
    trimmed = src.fill_last_room(passages, budget - src.used - hist.used, trim_min_tokens)
    notes = [*hist.notes(), *(f"passage {p.id} of {p.source} trimmed to {len(p.text) - len(TRIM_MARK)} of "
                              f"{len(next(q for q in passages if q.id == p.id).text)} characters to fill the window"
                              for p in src.trimmed_parts)]
    return Packing(
        sources=src.in_document_order(), history=hist.kept(), dropped=src.dropped,
        dropped_history=len(history) - len(hist.kept()), context_window=context_window,
        max_output_tokens=max_output_tokens, fixed_tokens=fixed, margin=margin, budget=budget,
        used=src.used + hist.used, candidates=len(passages), notes=notes, trimmed=trimmed,
    )


class _History:
    """Chat history kept in whole turns (a user message and its answers), newest first."""

    def __init__(self, history: Sequence[Message], counter: TokenCounter, turn_overhead: int) -> None:
        self.history = history
        self.turns = _turns(history)
        self.costs = [sum(counter.count(history[i].content) for i in t) + turn_overhead * ((len(t) + 1) // 2)
                      for t in self.turns]
        self.kept_turns: list[int] = []
        self.used = 0

    def keep_newest(self, reserved: int) -> None:
        for i in range(len(self.turns) - 1, -1, -1):
            if self.used + self.costs[i] > reserved:
                break
            self.kept_turns.append(i)
            self.used += self.costs[i]

    def keep_older(self, left: int) -> None:
        for i in range(min(self.kept_turns, default=len(self.turns)) - 1, -1, -1):
            if self.costs[i] > left:
                break
            self.kept_turns.append(i)
            self.used += self.costs[i]
            left -= self.costs[i]

    def kept(self) -> list[Message]:
        return [self.history[i] for t in sorted(self.kept_turns) for i in self.turns[t]]

    def notes(self) -> list[str]:
        if len(self.kept()) < len(self.history):
            return [f"{len(self.turns) - len(self.kept_turns)} oldest history turn(s) dropped for room"]
        return []


class _Sources:
    """Sources chosen greedily by relevance: each a run of one document's adjacent passages (a group)."""

    def __init__(self, counter: TokenCounter, formatter: SourceFormatter, dedup_threshold: float) -> None:
        self.counter = counter
        self.formatter = formatter
        self.dedup_threshold = dedup_threshold
        self.groups: list[list[Passage]] = []
        self.group_tokens: list[int] = []
        self.shingles: list[tuple[int, set]] = []  # (group index, shingles of one kept passage)
        self.dropped: list[Dropped] = []
        self.trimmed_parts: list[Passage] = []
        self.used = 0
        self.sep_cost = counter.count(SOURCES_SEP)  # BPE tokenizers spend tokens on the blank line between sources

    def _cost(self, passages: list[Passage], first: bool) -> int:
        return self.counter.count(self.formatter(_N, _as_source(_N, passages))) + (0 if first else self.sep_cost)

    def _neighbour(self, p: Passage) -> int | None:
        return next((gi for gi, g in enumerate(self.groups) if any(adjacent(q, p) for q in g)), None)

    def add(self, p: Passage, room: int) -> None:
        """Adjacent or overlapping passages of a kept one extend it instead of standing alone."""
        sh = shingles(p.text)
        target = self._neighbour(p)
        if target is None:
            dup = next((gi for gi, s in self.shingles if similarity(sh, s) >= self.dedup_threshold), None)
            if dup is not None:
                self.dropped.append(Dropped(p.id, p.path,
                                            f"near-duplicate of a kept passage of {self.groups[dup][0].source}"))
                return
            cost = self._cost([p], first=not self.groups)
            if self.used + cost > room:
                self.dropped.append(Dropped(p.id, p.path, f"does not fit: needs {cost} tokens, "
                                                          f"{room - self.used} left"))
                return
            self.groups.append([p])
            self.group_tokens.append(cost)
            self.shingles.append((len(self.groups) - 1, sh))
            self.used += cost
            return
        if any(q.id == p.id for q in self.groups[target]):
            return
        merged = self.groups[target] + [p]
        new_cost = self._cost(merged, first=target == 0)
        delta = new_cost - self.group_tokens[target]
        if self.used + delta > room:
            self.dropped.append(Dropped(p.id, p.path, f"does not fit: extending its neighbour needs {delta} tokens, "
                                                      f"{room - self.used} left"))
            return
        self.groups[target] = merged
        self.group_tokens[target] = new_cost
        self.shingles.append((target, sh))
        self.used += delta

    def fill_last_room(self, passages: Sequence[Passage], left: int, trim_min_tokens: int) -> list[Dropped]:
        """The best passage that did not fit, cut to the room left. Continuing a kept source needs no header,
        so even a small room takes a few more sentences of a document already in the prompt."""
        for d in list(self.dropped):
            if left < 8:
                break
            if d.reason.startswith("near-duplicate"):
                continue
            p = next(q for q in passages if q.id == d.id)
            target = self._neighbour(p)
            if target is None and left < trim_min_tokens:
                continue
            cut = trim_to_fit(p, left, self._cost_of(target))
            if cut is None:
                continue
            part, cost = cut
            if target is None:
                self.groups.append([part])
                self.group_tokens.append(cost)
            else:
                self.groups[target] = self.groups[target] + [part]
                self.group_tokens[target] += cost
            self.used += cost
            self.dropped.remove(d)
            self.trimmed_parts.append(part)
            how = "as a new source" if target is None else "continuing its neighbour"
            return [Dropped(p.id, p.path, f"trimmed to fit the last room {how}: {len(part.text) - len(TRIM_MARK)} "
                                          f"of {len(p.text)} characters, {cost} tokens")]
        return []

    def _cost_of(self, target: int | None) -> Callable[[Passage], int]:
        if target is None:
            first = not self.groups
            return lambda part: self._cost([part], first=first)
        return lambda part: self._cost(self.groups[target] + [part], first=target == 0) - self.group_tokens[target]

    def in_document_order(self) -> list[Source]:
        """Documents by their best passage, positions within a document ascending; numbered from 1."""
        groups = self.groups
        order = sorted(range(len(groups)), key=lambda gi: (_doc_rank(groups, gi), min(p.char_start for p in groups[gi])))
        return [_as_source(n, groups[gi], tokens=self.group_tokens[gi]) for n, gi in enumerate(order, start=1)]




def _turns(history: Sequence[Message]) -> list[list[int]]:
    """Indices of history grouped into turns: a user message and the answers that follow it."""
    turns: list[list[int]] = []
    for i, m in enumerate(history):
        if m.role == "user" or not turns:
            turns.append([i])
        else:
            turns[-1].append(i)
    return turns


#: Sources are costed with a two-digit citation number, so the final one- or two-digit numbers never cost more.
_N = 99

def _doc_rank(groups: list[list[Passage]], gi: int) -> tuple[int, str]:
    """Rank of a group's document: the first group (by relevance) of each document sets the order."""
    path = groups[gi][0].path
    first = next(i for i, g in enumerate(groups) if g[0].path == path)
    return (first, path)


def _as_source(n: int, passages: list[Passage], *, tokens: int = 0) -> Source:
    ps = sorted(passages, key=lambda p: p.char_start)
    return Source(n=n, path=ps[0].path, source=ps[0].source, passages=ps, text=merge_text(ps), tokens=tokens,
                  score=max(p.score for p in ps))
