"""The citation check: sentences and their citations, and support scores on fixed true and wrong pairs (the real
local embedding model)."""

from __future__ import annotations

import pytest

from rag.generation.packing import Source
from rag.generation.support import (SUPPORTED, UNSUPPORTED, SourceText, SupportScorer, check_answer, claims,
                                    split_sentences)
from rag.ops import metrics
from rag.types import Answer, Citation, Passage

VACATION = ("3.1 Vacation. Full-time employees receive 30 working days of paid vacation per calendar year. Part-time "
            "employees receive a pro-rated share. Unused days may be carried over until 31 March of the next year.")
HOTEL = ("4.3 Per-Diem Rates. For each full day of business travel you receive a daily meal allowance and may book a "
         "hotel up to the hotel cap per night. Lisbon: per-diem 45 EUR, hotel cap 140 EUR. Hamburg: per-diem 28 EUR, "
         "hotel cap 150 EUR.")
PASSWORDS = ("Passwords must be at least 14 characters long. Use the company password manager; never reuse a "
             "password across services. Multi-factor authentication is mandatory for e-mail and VPN access.")
FRIDGE = "Q: When is the office fridge cleared out? A: Every Friday at 15:00. Unlabelled food is thrown away."


def test_sentences_respect_abbreviations_decimals_and_initials():
    text = ("Meal vouchers are worth 7.50 EUR per day, e.g. in Hamburg [2]. Approval is by J. Erdmann, i.e. the CFO "
            "[1]. See p. 4 for details! Is that all? Yes.")
    assert split_sentences(text) == [
        "Meal vouchers are worth 7.50 EUR per day, e.g. in Hamburg [2].",
        "Approval is by J. Erdmann, i.e. the CFO [1].",
        "See p. 4 for details!", "Is that all?", "Yes."]


def test_markers_after_the_period_and_list_items():
    text = "You get 30 days. [1] Hotels are capped at 140 EUR.[2][3]\n- Passwords: 14 characters [4]\n- MFA [4]"
    assert split_sentences(text) == ["You get 30 days. [1]", "Hotels are capped at 140 EUR.[2][3]",
                                     "- Passwords: 14 characters [4]", "- MFA [4]"]


def test_claims_strip_markers_and_lend_a_short_one_the_sentence_before():
    cl = claims("Employees get 30 days of vacation. See [1]. Lisbon caps hotels at 140 EUR [2, 3]. No cite here.")
    assert [c.cites for c in cl] == [(1,), (2, 3)]
    assert cl[0].text.startswith("Employees get 30 days of vacation.") and "[" not in cl[0].text
    assert cl[1].text == "Lisbon caps hotels at 140 EUR."


@pytest.fixture(scope="module")
def scorer(embedder):
    return SupportScorer(embedder)


TRUE_PAIRS = [
    ("Full-time employees get 30 working days of paid vacation each year.", VACATION),
    ("In Lisbon the hotel cap is 140 EUR per night.", HOTEL),
    ("Passwords need at least 14 characters.", PASSWORDS),
    ("The fridge is emptied every Friday at 15:00.", FRIDGE),
]
WRONG_PAIRS = [
    ("Full-time employees get 30 working days of paid vacation each year.", HOTEL),
    ("In Lisbon the hotel cap is 140 EUR per night.", VACATION),
    ("Passwords need at least 14 characters.", FRIDGE),
    ("The fridge is emptied every Friday at 15:00.", PASSWORDS),
    ("In Lisbon the hotel cap is 140 EUR per night.", PASSWORDS),
]


def test_true_pairs_are_supported_and_wrong_pairs_are_not(scorer):
    pairs = [(s, SourceText(0, p)) for s, p in TRUE_PAIRS + WRONG_PAIRS]
    support = [scorer.combine(c, lx) for c, lx in scorer.score_pairs(pairs)]
    true, wrong = support[:len(TRUE_PAIRS)], support[len(TRUE_PAIRS):]
    assert all(0 <= s <= 1 for s in support)
    assert min(true) >= scorer.threshold > max(wrong), (true, wrong)


def test_stored_vectors_give_the_same_cosine_as_embedding_the_text(scorer, embedder):
    sentence = TRUE_PAIRS[1][0]
    by_text = scorer.score_pairs([(sentence, SourceText(0, HOTEL))])[0]
    stored = embedder.embed_documents([VACATION, HOTEL]).tolist()  # two chunks: the best one counts
    by_vectors = scorer.score_pairs([(sentence, SourceText(0, HOTEL, stored))])[0]
    # int8 ONNX quantizes activations per batch, so the same text embeds a little differently in another batch.
    assert by_vectors == pytest.approx(by_text, abs=0.03)


def test_check_per_source_weakest_sentence_and_best_of_a_multi_citation(scorer):
    sources = {1: SourceText(1, VACATION), 2: SourceText(2, HOTEL), 3: SourceText(3, PASSWORDS)}
    r = scorer.check("Employees get 30 working days of vacation per year [1]. Lisbon caps hotels at 140 EUR per "
                     "night [2][3].", sources)
    assert r.verdict == {1: SUPPORTED, 2: SUPPORTED, 3: SUPPORTED}  # [3] rides on [2]: the sentence is backed
    r = scorer.check("Employees get 30 working days of vacation per year [1]. Passwords need 14 characters [1].",
                     sources)
    assert r.verdict == {1: UNSUPPORTED}  # one sentence its source does not back is enough
    assert len(r.sentences) == 2 and r.sentences[1]["support"][1] < scorer.threshold


def _source(n: int, text: str, pid: str) -> Source:
    p = Passage(id=pid, text=text, score=0.5, path=f"/docs/{n}.md", source=f"{n}.md")
    return Source(n, p.path, p.source, [p], text, 60, 0.5)


def _citation(s: Source, cited: bool) -> Citation:
    return Citation(s.n, s.path, s.source, None, None, None, s.text[:40], 0.5, cited, text=s.text)


def test_check_answer_sets_support_verdict_timing_and_counts(scorer, embedder):
    sources = [_source(1, HOTEL, "a"), _source(2, VACATION, "b"), _source(3, FRIDGE, "c")]
    answer = Answer("q", "q", "Hotels in Lisbon are capped at 140 EUR per night [1]. The fridge is cleared on "
                    "Mondays at noon by the IT team [2].", [_citation(s, s.n != 3) for s in sources], False, {}, {},
                    None, "m")
    asked: list[list[str]] = []

    def vectors_of(ids):
        asked.append(list(ids))
        return {"a": embedder.embed_documents([HOTEL])[0].tolist()}  # "b" is not in the store: embedded

    before = {v: metrics.CITATIONS.labels(v)._value.get() for v in (SUPPORTED, UNSUPPORTED)}
    check_answer(answer, sources, scorer, vectors_of)
    assert asked == [["a", "b"]]  # only the cited sources' chunks
    by_n = {c.n: c for c in answer.sources}
    assert by_n[1].verdict == SUPPORTED and by_n[1].support >= scorer.threshold
    assert by_n[2].verdict == UNSUPPORTED and by_n[2].support < scorer.threshold
    assert by_n[3].verdict is None and by_n[3].support is None  # not cited
    assert answer.timings["citation_check"] > 0
    d = answer.sources[1].to_dict()
    assert d["verdict"] == UNSUPPORTED and 0 <= d["support"] < 1
    metrics.observe_answer(answer, "http://x")
    after = {v: metrics.CITATIONS.labels(v)._value.get() for v in (SUPPORTED, UNSUPPORTED)}
    assert after == {SUPPORTED: before[SUPPORTED] + 1, UNSUPPORTED: before[UNSUPPORTED] + 1}
    assert b'rag_citations_total{verdict="unsupported"}' in metrics.exposition()


def test_a_failing_vector_read_falls_back_to_the_texts(scorer):
    sources = [_source(1, HOTEL, "a")]
    answer = Answer("q", "q", "Hotels in Lisbon are capped at 140 EUR per night [1].", [_citation(sources[0], True)],
                    False, {}, {}, None, "m")

    def broken(ids):
        raise ConnectionError("store went away")

    check_answer(answer, sources, scorer, broken)
    assert answer.sources[0].verdict == SUPPORTED
