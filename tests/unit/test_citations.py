"""Invented citation numbers are removed, in whole text and while streaming."""

from __future__ import annotations

import random

import pytest

from rag.generation.citations import CitationFilter, clean


@pytest.mark.parametrize(
    "text, expected, cited, removed",
    [
        ("Thirty days [1].", "Thirty days [1].", [1], []),
        ("Thirty days [7].", "Thirty days.", [], [7]),
        ("See [2, 9] and [1][3].", "See [2] and [1][3].", [2, 1, 3], [9]),
        ("Ranges [1-3] work.", "Ranges [1][2][3] work.", [1, 2, 3], []),
        ("Lists [a] and [2024 budget] stay.", "Lists [a] and [2024 budget] stay.", [], []),
    ],
)
def test_clean(text, expected, cited, removed):
    out, c, r = clean(text, {1, 2, 3})
    assert (out, c, r) == (expected, cited, removed)


def test_streaming_equals_whole_text_for_any_split():
    text = "Employees get 30 days [1]. Lisbon pays 140 EUR [2][9], see also [3, 12] and [4-5]. Done [1]"
    whole = clean(text, {1, 2, 3, 4})
    rng = random.Random(0)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 20)))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)]
        f = CitationFilter({1, 2, 3, 4})
        assert "".join(f.run(pieces)) == whole[0]
        assert f.cited == whole[1] and sorted(f.removed) == sorted(whole[2])


def test_stream_holds_back_only_a_citation_in_progress():
    f = CitationFilter({1})
    assert f.feed("Thirty days ") == "Thirty days "
    assert f.feed("[") == ""
    assert f.feed("1") == ""
    assert f.feed("] more") == "[1] more"
    assert f.feed(" [note]") == " [note]"
