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
from dataclasses import dataclass, field, replace
from typing import Protocol

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


# --- near-duplicates ----------------------------------------------------------------------------
def _shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < k:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def _similarity(a: set, b: set) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


# --- merging adjacent passages ------------------------------------------------------------------
def _adjacent(a: Passage, b: Passage) -> bool:
    if a.path != b.path:
        return False
    if abs(a.chunk_index - b.chunk_index) == 1:
        return True
    return a.char_start < b.char_end and b.char_start < a.char_end  # overlapping spans


def _merge_text(passages: list[Passage]) -> str:
    """Text of a run of passages of one document in position order, overlaps written once."""
    ps = sorted(passages, key=lambda p: (p.char_start, p.char_end))
    text, end = ps[0].text, ps[0].char_end
    for p in ps[1:]:
        if p.char_end <= end:
            continue  # contained in what we have
        if p.char_start < end:
            text += p.text[end - p.char_start:]
        else:
            text += "\n" + p.text
        end = p.char_end
    return text


# --- the packer ---------------------------------------------------------------------------------
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
    notes: list[str] = []
    if budget <= 0:
        return Packing([], [], [Dropped(p.id, p.path, "no room: the question and system prompt fill the window")
                                for p in passages], len(history), context_window, max_output_tokens, fixed, margin,
                       max(budget, 0), 0, candidates=len(passages),
                       notes=["the question alone does not fit the context window"])

    # History first, up to its share, newest turn first (each turn is counted with its own overhead).
    turns = _turns(history)
    turn_costs = [sum(counter.count(history[i].content) for i in t) + turn_overhead * ((len(t) + 1) // 2)
                  for t in turns]
    reserved = int(budget * history_share)
    kept_turns: list[int] = []
    hist_used = 0
    for i in range(len(turns) - 1, -1, -1):
        if hist_used + turn_costs[i] > reserved:
            break
        kept_turns.append(i)
        hist_used += turn_costs[i]

    # Sources: greedy by relevance into what history left.
    room = budget - hist_used
    groups: list[list[Passage]] = []  # each a run of one document's adjacent passages
    group_tokens: list[int] = []
    shingles: list[tuple[int, set]] = []  # (group index, shingles of one kept passage)
    dropped: list[Dropped] = []
    used_src = 0
    sep_cost = counter.count(SOURCES_SEP)  # BPE tokenizers spend tokens on the blank line between sources
    for p in passages:
        sh = _shingles(p.text)
        # Adjacent or overlapping passages of a kept one extend it instead of standing alone.
        target = next((gi for gi, g in enumerate(groups) if any(_adjacent(q, p) for q in g)), None)
        if target is None:
            dup = next((gi for gi, s in shingles if _similarity(sh, s) >= dedup_threshold), None)
            if dup is not None:
                dropped.append(Dropped(p.id, p.path, f"near-duplicate of a kept passage of {groups[dup][0].source}"))
                continue
            cost = counter.count(formatter(_N, _as_source(_N, [p]))) + (sep_cost if groups else 0)
            if used_src + cost > room:
                dropped.append(Dropped(p.id, p.path, f"does not fit: needs {cost} tokens, {room - used_src} left"))
                continue
            groups.append([p])
            group_tokens.append(cost)
            shingles.append((len(groups) - 1, sh))
            used_src += cost
        else:
            if any(q.id == p.id for q in groups[target]):
                continue
            merged = groups[target] + [p]
            new_cost = counter.count(formatter(_N, _as_source(_N, merged))) + (
                sep_cost if target > 0 else 0)
            delta = new_cost - group_tokens[target]
            if used_src + delta > room:
                dropped.append(Dropped(p.id, p.path, f"does not fit: extending its neighbour needs {delta} tokens, "
                                                     f"{room - used_src} left"))
                continue
            groups[target] = merged
            group_tokens[target] = new_cost
            shingles.append((target, sh))
            used_src += delta

    # History gets whatever the sources left, oldest turns last.
    left = budget - used_src - hist_used
    for i in range(min(kept_turns, default=len(turns)) - 1, -1, -1):
        if turn_costs[i] > left:
            break
        kept_turns.append(i)
        hist_used += turn_costs[i]
        left -= turn_costs[i]
    kept_history = [history[i] for t in sorted(kept_turns) for i in turns[t]]
    if len(kept_history) < len(history):
        notes.append(f"{len(turns) - len(kept_turns)} oldest history turn(s) dropped for room")

    # The last room: the best passage that did not fit, cut to size. Continuing a kept source needs no
    # header, so even a small room takes a few more sentences of a document already in the prompt.
    trimmed: list[Dropped] = []
    left = budget - used_src - hist_used
    for d in list(dropped):
        if left < 8:
            break
        if d.reason.startswith("near-duplicate"):
            continue
        p = next(q for q in passages if q.id == d.id)
        target = next((gi for gi, g in enumerate(groups) if any(_adjacent(q, p) for q in g)), None)
        if target is None:
            if left < trim_min_tokens:
                continue
            sep = sep_cost if groups else 0

            def cost_of(part: Passage, sep: int = sep) -> int:
                return counter.count(formatter(_N, _as_source(_N, [part]))) + sep
        else:
            def cost_of(part: Passage, gi: int = target) -> int:
                merged = formatter(_N, _as_source(_N, groups[gi] + [part]))
                return counter.count(merged) + (sep_cost if gi > 0 else 0) - group_tokens[gi]
        cut = _trim_to_fit(p, left, cost_of)
        if cut is None:
            continue
        part, cost = cut
        if target is None:
            groups.append([part])
            group_tokens.append(cost)
        else:
            groups[target] = groups[target] + [part]
            group_tokens[target] += cost
        used_src += cost
        left -= cost
        dropped.remove(d)
        full = len(p.text)
        kept = len(part.text) - len(TRIM_MARK)
        how = "as a new source" if target is None else "continuing its neighbour"
        trimmed.append(Dropped(p.id, p.path, f"trimmed to fit the last room {how}: {kept} of {full} characters, "
                                             f"{cost} tokens"))
        notes.append(f"passage {p.id} of {p.source} trimmed to {kept} of {full} characters to fill the window")
        break

    # Document order: documents by their best passage, positions within a document ascending.
    order = sorted(range(len(groups)), key=lambda gi: (_doc_rank(groups, gi), min(p.char_start for p in groups[gi])))
    sources = []
    for n, gi in enumerate(order, start=1):
        sources.append(_as_source(n, groups[gi], tokens=group_tokens[gi]))
    return Packing(
        sources=sources, history=kept_history, dropped=dropped, dropped_history=len(history) - len(kept_history),
        context_window=context_window, max_output_tokens=max_output_tokens, fixed_tokens=fixed, margin=margin,
        budget=budget, used=used_src + hist_used, candidates=len(passages), notes=notes, trimmed=trimmed,
    )


TRIM_MARK = " [...]"


def _turns(history: Sequence[Message]) -> list[list[int]]:
    """Indices of history grouped into turns: a user message and the answers that follow it."""
    turns: list[list[int]] = []
    for i, m in enumerate(history):
        if m.role == "user" or not turns:
            turns.append([i])
        else:
            turns[-1].append(i)
    return turns


def _trim_to_fit(p: Passage, room: int, cost_of: Callable[[Passage], int]) -> tuple[Passage, int] | None:
    """The longest word-boundary prefix of ``p`` that costs at most ``room`` tokens, and its cost.
    Binary search: about log2(words) counts."""
    cuts = [m.start() for m in re.finditer(r"\s+", p.text)]
    if not cuts:
        return None

    def part(k: int) -> Passage:
        end = cuts[k]
        return replace(p, text=p.text[:end] + TRIM_MARK, char_end=p.char_start + end, trimmed=True)

    def cost(k: int) -> int:
        return cost_of(part(k))

    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        c = cost(mid)
        if c <= room:
            best, lo = (mid, c), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return None
    return part(best[0]), best[1]


#: Sources are costed with a two-digit citation number, so the final one- or two-digit numbers never cost more.
_N = 99

def _doc_rank(groups: list[list[Passage]], gi: int) -> tuple[int, str]:
    """Rank of a group's document: the first group (by relevance) of each document sets the order."""
    path = groups[gi][0].path
    first = next(i for i, g in enumerate(groups) if g[0].path == path)
    return (first, path)


def _as_source(n: int, passages: list[Passage], *, tokens: int = 0) -> Source:
    ps = sorted(passages, key=lambda p: p.char_start)
    return Source(n=n, path=ps[0].path, source=ps[0].source, passages=ps, text=_merge_text(ps), tokens=tokens,
                  score=max(p.score for p in ps))
