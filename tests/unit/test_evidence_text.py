from rag.evidence.text import document_text, text_window
from rag.types import ChunkPayload

DOC = "Title\n\nFirst paragraph about leave.\n\nSecond paragraph about travel costs and hotels.\n\nThird one."


def _chunk(a: int, b: int) -> ChunkPayload:
    return ChunkPayload(text=DOC[a:b], path="d.md", char_start=a, char_end=b)


def _spans():
    first, second, third = DOC.index("First"), DOC.index("Second"), DOC.index("Third")
    return [(0, second - 2), (first, third - 2), (third, len(DOC))]  # overlapping, and meeting at a blank line


def test_overlapping_and_adjacent_chunks_give_back_the_document():
    assert document_text([_chunk(a, b) for a, b in reversed(_spans())]) == {0: DOC}


def test_a_missing_chunk_is_a_gap_not_a_guess():
    a, b = _spans()[0]
    c, d = _spans()[2]
    assert document_text([_chunk(a, b), _chunk(c, d)]) == {0: DOC[a:b], c: DOC[c:d]}


def test_the_window_cuts_at_spaces_and_knows_the_ends():
    chunks = [_chunk(a, b) for a, b in _spans()]
    s = DOC.index("travel")
    w = text_window(chunks, s, s + len("travel costs"), context=12)
    assert w.passage == "travel costs"
    assert w.before == "about " and w.after == " and" and not w.at_start and not w.at_end
    whole = text_window(chunks, s, s + 6, context=1000)
    assert whole.before + whole.passage + whole.after == DOC and whole.at_start and whole.at_end
