"""Window vectors (rag/index/windows.py): where a chunk is cut, how a chunk's ranking cosine is blended."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rag.index.windows import cut, ranking_cosines, stride
from rag.settings import Settings


def _tokens(n: int) -> tuple[str, list[tuple[int, int]]]:
    """A text of ``n`` words "w0 w1 ...", and each word's character span, as an embedder's offsets give them."""
    words = [f"w{i}" for i in range(n)]
    text, offsets, at = " ".join(words), [], 0
    for w in words:
        offsets.append((at, at + len(w)))
        at += len(w) + 1
    return text, offsets


def test_a_text_that_fits_in_one_window_has_none():
    text, offsets = _tokens(96)
    assert cut(text, offsets, 96) == []
    assert cut(text, offsets, 0) == []  # off


def test_windows_overlap_by_a_quarter_and_the_last_ends_at_the_last_token():
    text, offsets = _tokens(250)
    windows = cut(text, offsets, 96)
    assert stride(96) == 72
    starts = [int(w.split()[0][1:]) for w in windows]
    ends = [int(w.split()[-1][1:]) for w in windows]
    assert starts == [0, 72, 144, 216] and ends == [95, 167, 239, 249]
    assert all(len(w.split()) == 96 for w in windows[:-1])
    assert windows[0] == text[:text.index(" w96")]  # cut at token boundaries, the text between kept as it was


def test_empty_spans_do_not_count_as_tokens():
    text, offsets = _tokens(20)
    padded = [o for pair in zip(offsets, [(0, 0)] * len(offsets), strict=True) for o in pair]  # special tokens
    assert cut(text, padded, 16) == cut(text, offsets, 16) != []


def test_ranking_cosine_is_the_mean_with_the_best_window_where_there_is_one():
    rank = ranking_cosines({"long": 0.40, "short": 0.55}, {"long": 0.70, "gone": 0.9})
    assert rank == {"long": pytest.approx(0.55), "short": 0.55}  # a window of a chunk not asked about is ignored


def test_a_window_too_small_to_mean_anything_is_refused():
    assert Settings(dense_windows=96).dense_windows == 96 and Settings().dense_windows == 0
    with pytest.raises(ValidationError, match="RAG_DENSE_WINDOWS"):
        Settings(dense_windows=8)


def test_a_prompt_with_other_variables_is_refused_at_once_with_the_names_it_needs():
    """LangChain's usual {context}/{input} failed at the first question with a bare KeyError: 'context'."""
    import pytest
    from langchain_core.prompts import ChatPromptTemplate

    from rag.errors import RagError
    from rag.generation.window import WindowPacker
    from rag.settings import Settings

    wrong = ChatPromptTemplate.from_messages([("system", "Use the context: {context}"), ("human", "{input}")])
    with pytest.raises(RagError, match=r"it uses \{context\}, \{input\}; it lacks \{question\}, \{sources\}"):
        WindowPacker(Settings(), wrong)
    right = ChatPromptTemplate.from_messages([("system", "Cite [n]."), ("placeholder", "{history}"),
                                              ("human", "{sources}\n\n{question}")])
    assert WindowPacker(Settings(), right).uses_history
    no_history = ChatPromptTemplate.from_messages([("human", "{sources}\n\n{question}")])
    assert not WindowPacker(Settings(), no_history).uses_history
