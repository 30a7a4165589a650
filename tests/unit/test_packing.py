"""The packer, with exact token counts (a whitespace counter: one token per word) and a real tokenizer."""

from __future__ import annotations

import random

from hypothesis import given, settings as hsettings, strategies as st

from rag.generation.packing import _turns, format_source, pack
from rag.types import Message, Passage


class Words:
    """Exact, easy to reason about: one token per whitespace-separated word."""

    def count(self, text: str) -> int:
        return len(text.split())


def P(i, words, *, score=None, path="/d/a.pdf", idx=None, start=None, page=1, section="S"):
    text = " ".join(f"w{i}_{k}" for k in range(words))
    start = i * 1000 if start is None else start
    return Passage(id=f"p{i}", text=text, score=score if score is not None else 1 - i / 100, path=path,
                   source=path.rsplit("/", 1)[-1], page_start=page, page_end=page, section=section,
                   chunk_index=i * 10 if idx is None else idx, char_start=start, char_end=start + len(text))


def header_cost(n_words_section="S"):
    # '<source id="99" file="a.pdf" pages="p. 1" section="S">' + '</source>' in whitespace words
    return len(format_source(99, _src()).split()) - 1


def _src():
    from rag.generation.packing import _as_source
    return _as_source(99, [P(0, 1)])


BASE = dict(question="q " * 10, system_prompt="s " * 20, context_window=1000, max_output_tokens=200, counter=Words())


def test_budget_formula():
    pk = pack([], **BASE, template_overhead=7, margin=13)
    assert pk.fixed_tokens == 10 + 20 + 7
    assert pk.budget == 1000 - 200 - 37 - 13
    assert pk.used == 0 and pk.sources == []


def test_greedy_skips_what_does_not_fit_and_keeps_going():
    h = header_cost()
    budget = 1000 - 200 - 30
    big = P(1, budget - h - 5, score=0.9)  # fits alone
    huge = P(2, budget, score=0.8)  # never fits
    small = P(3, 3, score=0.7)  # fits in what `big` leaves
    pk = pack([big, huge, small], **BASE)
    kept = [p.id for s in pk.sources for p in s.passages]
    assert kept == ["p1", "p3"]
    assert [d.id for d in pk.dropped] == ["p2"] and "does not fit" in pk.dropped[0].reason
    assert pk.used <= pk.budget
    # The count is exact: what the packer says it used is what the formatted sources take.
    text = "\n\n".join(format_source(s.n, s) for s in pk.sources)
    assert Words().count(text) == pk.used


def test_adjacent_chunks_merge_under_one_header_and_overlap_is_written_once():
    a = Passage("a", "alpha beta gamma delta", 0.9, "/d/x.md", "x.md", chunk_index=4, char_start=0, char_end=22)
    b = Passage("b", "gamma delta epsilon zeta", 0.8, "/d/x.md", "x.md", chunk_index=5, char_start=11, char_end=35)
    pk = pack([a, b], **BASE)
    assert len(pk.sources) == 1
    assert pk.sources[0].text == "alpha beta gamma delta epsilon zeta"
    assert [p.id for p in pk.sources[0].passages] == ["a", "b"]


def test_near_duplicates_dropped():
    a = P(1, 40, path="/d/a.pdf")
    dup = Passage("dup", a.text + " extra", 0.5, "/d/b.pdf", "b.pdf", chunk_index=0, char_start=0, char_end=5)
    pk = pack([a, dup], **BASE)
    assert [d.id for d in pk.dropped] == ["dup"] and "near-duplicate" in pk.dropped[0].reason


def test_document_order_and_numbering():
    p_late = P(1, 5, path="/d/a.pdf", start=5000, idx=50, score=0.9)
    other = P(2, 5, path="/d/b.pdf", start=0, idx=0, score=0.8)
    p_early = P(3, 5, path="/d/a.pdf", start=100, idx=1, score=0.7)
    pk = pack([p_late, other, p_early], **BASE)
    assert [(s.n, s.passages[0].id) for s in pk.sources] == [(1, "p3"), (2, "p1"), (3, "p2")]


def test_history_newest_first_oldest_dropped_in_whole_turns():
    hist = [Message("user", "old " * 250), Message("assistant", "old answer " * 10),
            Message("user", "mid " * 20), Message("assistant", "mid answer " * 10)]
    pk = pack([P(i, 100) for i in range(10)], **BASE, history=hist)
    # The old question alone is too long: its whole turn goes, answer included (no orphan assistant message).
    assert pk.history == hist[2:] and pk.dropped_history == 2
    assert pk.used <= pk.budget


def test_history_gets_what_sources_leave():
    hist = [Message("user", "old " * 300), Message("assistant", "new " * 10)]
    pk = pack([P(1, 5)], **BASE, history=hist)
    assert pk.history == hist  # few sources: even the old long turn fits


def test_question_too_long_for_window():
    pk = pack([P(1, 5)], **{**BASE, "question": "q " * 2000})
    assert pk.sources == [] and pk.budget == 0 and pk.dropped


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30),
       st.integers(min_value=300, max_value=4000), st.integers(min_value=0, max_value=5))
def test_never_over_budget_and_full_when_oversubscribed(sizes, window, n_hist):
    passages = [P(i, n, path=f"/d/{i % 5}.pdf") for i, n in enumerate(sizes)]
    hist = [Message("user" if i % 2 == 0 else "assistant", "h " * (20 + 7 * i)) for i in range(n_hist)]
    pk = pack(passages, **{**BASE, "context_window": window}, history=hist)
    text = "\n\n".join(format_source(s.n, s) for s in pk.sources)
    hist_cost = sum(len(m.content.split()) for m in pk.history) + 10 * sum(
        (len(t) + 1) // 2 for t in _turns(pk.history))
    assert Words().count(text) + hist_cost == pk.used <= pk.budget
    kept = {p.id for s in pk.sources for p in s.passages}
    assert kept | {d.id for d in pk.dropped} == {p.id for p in passages}
    if any("does not fit" in d.reason for d in pk.dropped) or pk.trimmed:
        # Oversubscribed: what stays empty is less than the smallest piece worth trimming.
        assert pk.budget - pk.used < 32


def test_trims_the_best_leftover_to_fill_the_window():
    budget = 1000 - 200 - 30
    first = P(1, budget - 200, score=0.9)
    too_big = P(2, 400, score=0.8, path="/d/b.pdf")  # does not fit the ~190 left: trimmed into it
    pk = pack([first, too_big], **BASE)
    assert [d.id for d in pk.trimmed] == ["p2"] and not pk.dropped
    part = next(p for s in pk.sources for p in s.passages if p.id == "p2")
    assert part.trimmed and part.text.endswith(" [...]") and too_big.text.startswith(part.text[:-6])
    assert pk.budget - pk.used <= 1  # word granularity
    text = "\n\n".join(format_source(s.n, s) for s in pk.sources)
    assert Words().count(text) == pk.used
    # Too little room left: nothing is trimmed in (a few words of a chunk help nobody).
    pk = pack([P(1, budget - 20, score=0.9), too_big], **BASE)
    assert not pk.trimmed and [d.id for d in pk.dropped] == ["p2"]


def test_fill_with_real_tokenizer(embedder):
    """Many candidates of varied sizes: the packed sources fill >= 95% of the budget."""

    class Tok:
        def count(self, text):
            return embedder.count_tokens(text)

    rng = random.Random(3)
    words = "policy travel expense badge laptop vacation approval receipt hotel meal".split()
    passages = []
    for i in range(60):
        text = " ".join(rng.choice(words) + str(rng.randint(0, 99)) for _ in range(rng.randint(20, 180)))
        passages.append(Passage(f"p{i}", text, 1 - i / 100, f"/d/{i}.md", f"{i}.md", chunk_index=0,
                                char_start=0, char_end=len(text)))
    pk = pack(passages, question="What is the hotel cap?", system_prompt="Answer from the sources.",
              context_window=2048, max_output_tokens=256, counter=Tok(), margin=8)
    assert pk.used <= pk.budget and pk.fill >= 0.95


def test_used_is_exact_with_a_real_tokenizer(embedder):
    """The blank lines between sources cost tokens in BPE vocabularies: used must equal the joined count."""

    class Tok:
        def count(self, text):
            return embedder.count_tokens(text)

    class CountsNewlines:
        def count(self, text):
            return embedder.count_tokens(text) + text.count("\n")

    passages = [P(i, 30, path=f"/d/{i}.md") for i in range(6)]
    for counter in (Tok(), CountsNewlines()):
        pk = pack(passages, question="q?", system_prompt="s", context_window=4096, max_output_tokens=100,
                  counter=counter)
        joined = "\n\n".join(format_source(99, s) for s in pk.sources)
        assert pk.used == counter.count(joined)


def test_another_retrievers_documents_are_all_packed():
    """A LangChain retriever's documents usually have no id, no chunk index and no offsets: two of one file
    must stay two sources (each its own text), not one repeated while the other is lost."""
    from langchain_core.documents import Document

    from rag.retrieval.retriever import passages_of

    short = Document("Hotel cap is 150 EUR per night in Lisbon.", metadata={"source": "/kb/travel.md"})
    long_ = Document(" ".join(f"word{i}" for i in range(900)), metadata={"source": "/kb/travel.md"})
    numbered = [Document(f"part {i} " + "text " * 20, metadata={"source": "/kb/b.md", "chunk_index": i})
                for i in (3, 4)]
    passages = passages_of([short, long_, short, *numbered])
    assert len({p.id for p in passages}) == len(passages) == 4  # the repeat of `short` is dropped
    pk = pack(passages, **{**BASE, "context_window": 420})
    assert pk.used <= pk.budget
    sent = "\n".join(format_source(s.n, s) for s in pk.sources)  # what the model is sent
    assert sent.count("Hotel cap is 150 EUR") == 1
    assert "word0 word1" in sent  # the long one, trimmed to the room left: not `short` again
    assert "part 3" in sent and "part 4" in sent  # chunk numbers without offsets: not merged into one
